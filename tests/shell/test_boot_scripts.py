"""The boot hooks without a VM: lint, the dracut module with stubbed dracut functions, and the
build-time file lister both generators use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SH_FILES = [
    "dracut/50zkv/zkv-load-key.sh",
    "dracut/50zkv/zkv-cleanup.sh",
    "initramfs-tools/hooks/zkv",
    "initramfs-tools/scripts/zkv-functions",
    "initramfs-tools/scripts/local-top/zkv",
    "initramfs-tools/scripts/local-bottom/zkv",
    "initramfs-tools/zfs-load-key.d/zkv",
    "initramfs-tools/conf-hooks.d/zkv",
]
FILES_TOOL = REPO / "boot" / "initramfs-files"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    subprocess.run(["shellcheck", "-x", "-s", "sh", *SH_FILES], cwd=REPO, check=True)
    subprocess.run(["shellcheck", "-x", "dracut/50zkv/module-setup.sh"], cwd=REPO, check=True)


@pytest.mark.skipif(shutil.which("checkbashisms") is None, reason="devscripts not installed")
def test_checkbashisms() -> None:
    subprocess.run(["checkbashisms", "-f", *SH_FILES], cwd=REPO, check=True)


def _dracut(tmp: Path, body: str, *, configured: bool = True) -> subprocess.CompletedProcess[str]:
    """Source module-setup.sh in bash with recording stubs for dracut's install functions."""
    lib, boot, etc = tmp / "lib", tmp / "boot", tmp / "etc"
    for d in (lib, boot, etc, tmp / "initdir"):
        d.mkdir(exist_ok=True)
    (lib / "zkv-early.pyz").write_bytes(b"PK")
    (lib / "initramfs-files").write_text(
        "#!/bin/sh\ncase $1 in python) printf '%s\\n' '/usr/bin/python3.11 /usr/bin/python3.11'"
        " '/x/__pycache__/os.cpython-311.pyc /x/os.pyc' ;;"
        " ca) echo /etc/ssl/ca.pem ;; esac\n"
    )
    (lib / "initramfs-files").chmod(0o755)
    if configured:
        (etc / "early.conf").write_text("[gateway]\nurl = https://gw/\n")
        (boot / "keystore").write_text("{}")
        (boot / "host.key").write_text("k")
    script = f"""
set -u
log=$1
dfatal() {{ echo "dfatal $*" >>"$log"; }}
require_binaries() {{ return 0; }}
inst_multiple() {{ echo "inst_multiple $*" >>"$log"; }}
inst() {{ echo "inst $*" >>"$log"; }}
inst_simple() {{
    echo "inst_simple $*" >>"$log"; t="$initdir${{2:-$1}}"; mkdir -p "${{t%/*}}"; touch "$t"
}}
inst_hook() {{ echo "inst_hook $*" >>"$log"; }}
initdir={tmp}/initdir
moddir={REPO}/dracut/50zkv
. {REPO}/dracut/50zkv/module-setup.sh
zkv_lib={lib}; zkv_conf={etc}/early.conf; zkv_keystore={boot}/keystore; zkv_hostkey={boot}/host.key
{body}
"""
    return subprocess.run(
        ["bash", "-c", script, "bash", str(tmp / "calls.log")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_dracut_check_needs_keystore_hostkey_and_config(tmp_path: Path) -> None:
    assert _dracut(tmp_path, "check", configured=False).returncode == 1
    assert _dracut(tmp_path, "check").returncode == 0
    assert _dracut(tmp_path, "depends").stdout.split() == ["zfs", "network", "systemd"]


def test_dracut_install(tmp_path: Path) -> None:
    done = _dracut(tmp_path, "install; echo rc=$?")
    assert "rc=0" in done.stdout, done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "inst /usr/bin/python3.11 /usr/bin/python3.11" in calls
    assert "inst /x/__pycache__/os.cpython-311.pyc /x/os.pyc" in calls
    assert f"inst_simple {tmp_path}/boot/keystore /etc/zkv/keystore" in calls
    assert "inst_hook pre-mount 50 " in calls and "inst_hook cleanup 50 " in calls
    assert (tmp_path / "initdir/etc/cmdline.d/50zkv.conf").read_text() == "rd.neednet=1\n"
    assert oct((tmp_path / "initdir/etc/zkv/keystore").stat().st_mode & 0o777) == "0o600"


def test_dracut_install_fails_the_build_when_a_piece_is_missing(tmp_path: Path) -> None:
    done = _dracut(tmp_path, "inst_simple() { return 1; }; install; echo not-reached")
    assert done.returncode == 1
    assert "not-reached" not in done.stdout
    assert "dfatal zkv:" in (tmp_path / "calls.log").read_text()


def _pyz(tmp: Path) -> Path:
    target = tmp / "zkv-early.pyz"
    subprocess.run(
        [sys.executable, "-m", "zkv_early.build_pyz", "--output", str(target)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return target


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3")
def test_python_files_cover_what_the_client_imports(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(FILES_TOOL), "python", str(_pyz(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    if "python3-cryptography is not importable" in done.stderr:
        pytest.skip("the system python3 has no cryptography")
    assert done.returncode == 0, done.stderr
    pairs = [line.split() for line in done.stdout.splitlines()]
    files = [dst for _, dst in pairs]
    names = {Path(f).name for f in files}
    assert any(n.startswith("python3.") for n in names)
    assert any(n.startswith("_ssl.") for n in names) or "ssl.py" in names
    assert any("cryptography" in f for f in files)
    assert "os.pyc" in names and "encodings" in " ".join(files)
    assert not any(f.endswith(".py") and "__pycache__" not in f for f in files), "bytecode only"
    assert not any("zkv_early" in f for f in files), "the zipapp's own modules stay in the zipapp"
    assert not any(f.startswith(str(tmp_path)) for f in files)


def test_ca_file_from_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = tmp_path / "early.conf"
    conf.write_text(f"[gateway]\nurl = https://gw/\nca_file = {ca}  # the test CA\n")
    done = subprocess.run([str(FILES_TOOL), "ca", str(conf)], capture_output=True, text=True)
    assert done.stdout.strip() == str(ca)
    conf.write_text("[gateway]\nurl = https://gw/\nca_file = /nonexistent.pem\n")
    done = subprocess.run([str(FILES_TOOL), "ca", str(conf)], capture_output=True, text=True)
    assert done.returncode == 1 and "missing" in done.stderr
