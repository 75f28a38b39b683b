"""The zkv-gateway .deb in a clean Debian 12 chroot (the test bed's cached rootfs, in an overlay).

apt installs it offline; then: the files, the user and the modes docs/install.md names,
`systemd-analyze verify` on its unit, the unit's own ExecStart (as its user, with the packaged
settings plus a file secret and the console approver) serving /healthz, and a purge that
removes the user, the settings and the state.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.gateway import free_port
from tests.vm import chroot_run, packages, rootfs, testbed, zkv_image
from tests.vm.packages import Debs

pytestmark = pytest.mark.e2e

UNIT = "lib/systemd/system/zkv-gateway.service"
CONFIG = "etc/zkv-gateway/gateway.py"
STATE = "var/lib/zkv-gateway"
_DEMO = """
# the test's demo settings: a file secret and the console approver
SECRET_SOURCE = "file"
SECRET_FILE = "/etc/zkv-gateway/demo-secret"
APPROVER = "console"
"""


@pytest.fixture(scope="module")
def installed(debs: Debs) -> Iterator[Path]:
    base = rootfs.build(testbed.default_channel()) / "root"
    with tempfile.TemporaryDirectory(prefix="zkv-deb-gateway-", dir="/var/tmp") as tmp:
        with zkv_image.overlay_view(base, Path(tmp)) as root:
            packages.apt(root, "install", packages.copy_in(root, debs.gateway))
            yield root


def _ids(root: Path, database: str, name: str) -> list[str]:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"no {name} in /etc/{database}")


def _owner(root: Path, relative: str) -> tuple[int, int, int]:
    st = (root / relative).stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def test_files_user_and_modes(installed: Path) -> None:
    user = _ids(installed, "passwd", "zkv-gateway")
    group = _ids(installed, "group", "zkv-gateway")
    uid, gid = int(user[2]), int(group[2])
    assert uid < 1000 and user[5] == "/var/lib/zkv-gateway", user
    assert user[6].endswith("nologin"), user
    assert _owner(installed, "etc/zkv-gateway") == (0, gid, 0o750)
    assert _owner(installed, CONFIG) == (0, gid, 0o640)
    assert _owner(installed, STATE) == (uid, gid, 0o700)
    assert _owner(installed, "etc/zkv-gateway/credentials") == (0, gid, 0o750)
    for name in ("twilio-token", "aad-client-secret"):
        credential = f"etc/zkv-gateway/credentials/{name}"
        assert _owner(installed, credential) == (0, gid, 0o640)
        assert (installed / credential).read_bytes() == b"", "empty: unset until written"
    for path in (
        UNIT,
        "usr/sbin/zkv-gateway",
        "usr/lib/zkv-gateway/venv/bin/zkv-gateway",
        "usr/share/man/man8/zkv-gateway.8.gz",
    ):
        assert (installed / path).is_file(), path
    venv = installed / "usr/lib/zkv-gateway/venv"
    assert os.readlink(venv / "bin/python3").endswith("bin/python3")
    assert (venv / "bin/python3").resolve().relative_to(installed) == Path("usr/bin/python3.11")
    assert not list(venv.rglob("__pycache__")), "the package ships no byte code"
    assert not (installed / "usr/lib/zkv-gateway/venv/bin/pip").exists()


def test_unit_verifies(installed: Path) -> None:
    # --man=no: a gateway host needs no man-db, and the chroot has none to look zkv-gateway(8) up.
    done = packages.run(installed, "systemd-analyze", "verify", "--man=no", "/" + UNIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == "", done.stdout + done.stderr


def _unit_command(root: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and Environment of the packaged unit (the only ones it has)."""
    lines = (root / UNIT).read_text().splitlines()
    [exec_start] = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    env = dict(
        line.split("=", 1)[1].split("=", 1) for line in lines if line.startswith("Environment=")
    )
    return shlex.split(exec_start), env


def test_unit_command_serves_healthz(installed: Path) -> None:
    argv, env = _unit_command(installed)
    assert argv[0] == "/usr/lib/zkv-gateway/venv/bin/zkv-gateway"
    # 8080 may be taken on the test machine (the chroot shares its network): another port only.
    port = free_port()
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    config = installed / CONFIG
    config.write_text(config.read_text() + _DEMO)  # the packaged file, its mode kept
    secret = installed / "etc/zkv-gateway/demo-secret"
    secret.write_text("11" * 32)
    os.chown(secret, 0, config.stat().st_gid)
    secret.chmod(0o640)
    env["STATE_DIRECTORY"] = "/var/lib/zkv-gateway"  # what StateDirectory= sets
    as_user = ["setpriv", "--reuid=zkv-gateway", "--regid=zkv-gateway", "--init-groups"]
    env_args = [f"{key}={value}" for key, value in env.items()]
    with chroot_run.prepared(installed):
        process = subprocess.Popen(
            ["chroot", str(installed), *as_user, "env", "-i", *env_args, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            body = _healthz(f"http://127.0.0.1:{port}/healthz", process)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert body.startswith(b"{"), output
    database = installed / STATE / "zkv-gateway.sqlite"
    assert database.is_file(), output
    # The admin's commands, run by root through /usr/sbin/zkv-gateway: same settings and
    # database, and never a root-owned file in the state directory.
    for command in (["check-config"], ["hosts", "list"]):
        done = packages.run(installed, "zkv-gateway", *command)
        assert done.returncode == 0, done.stdout + done.stderr
    uid = _owner(installed, STATE)[0]
    assert {path.stat().st_uid for path in (installed / STATE).iterdir()} == {uid}


def _healthz(url: str, process: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 120  # no byte code in the package: the first start compiles
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
                return bytes(response.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url}")


def test_purge_removes_user_settings_and_state(installed: Path) -> None:
    packages.apt(installed, "purge", "zkv-gateway")
    for path in ("etc/zkv-gateway", STATE, "usr/lib/zkv-gateway", UNIT):
        assert not (installed / path).exists(), path
    for database in ("passwd", "group"):
        names = [line.split(":")[0] for line in (installed / "etc" / database).read_text().split()]
        assert "zkv-gateway" not in names, database
    overrides = packages.run(installed, "dpkg-statoverride", "--list").stdout
    assert "zkv-gateway" not in overrides
