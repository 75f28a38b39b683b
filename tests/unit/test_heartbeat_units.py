"""systemd/zkv-heartbeat.{service,timer} as `make install-files` installs them: enabled,
pointing at the installed `zkv`, gated on the host key, and accepted by systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zkv import paths

ROOT = Path(__file__).resolve().parents[2]
UNITS = "usr/lib/systemd/system"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("stage")
    pyz = stage.parent / "fake.pyz"
    pyz.write_bytes(b"")
    subprocess.run(
        ["make", "-s", "install-files", f"DESTDIR={stage}", f"ZKV_PYZ={pyz}",
         f"PYTHON={sys.executable}", "PREFIX=/opt/zkv"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return stage


def test_installed_enabled_and_pointing_at_the_installed_cli(staged: Path) -> None:
    service = (staged / UNITS / "zkv-heartbeat.service").read_text()
    assert "ExecStart=/opt/zkv/sbin/zkv heartbeat\n" in service
    assert f"ConditionPathExists={paths.HOST_KEY}\n" in service
    assert "ReadWritePaths=/boot " in service and "ProtectSystem=strict" in service
    timer = (staged / UNITS / "zkv-heartbeat.timer").read_text()
    assert "OnUnitActiveSec=15min" in timer and "RandomizedDelaySec=" in timer
    link = staged / "etc/systemd/system/timers.target.wants/zkv-heartbeat.timer"
    assert link.readlink() == Path("/", UNITS, "zkv-heartbeat.timer")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(staged: Path, tmp_path: Path) -> None:
    for name in ("zkv-heartbeat.service", "zkv-heartbeat.timer"):
        text = (staged / UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/zkv/sbin/zkv", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_uninstall_removes_them(staged: Path) -> None:
    subprocess.run(
        ["make", "-s", "uninstall", f"DESTDIR={staged}", "PREFIX=/opt/zkv"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    assert not list(staged.rglob("zkv-heartbeat*"))
