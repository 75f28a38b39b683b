"""The LUKS boot pieces as `make install-files` installs them: the real root's
zkv-open-devices.service (enabled through zfs-import.target), the drop-in making the stock
systemd-cryptsetup units wait for zkv, the dracut module's wait unit; and gone on uninstall."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_heartbeat_units import ROOT, UNITS, staged
from zkv import paths

__all__ = ["staged"]  # the fixture, shared


def test_installed_and_enabled(staged: Path) -> None:
    unit = staged / UNITS / "zkv-open-devices.service"
    assert "handover-open --handover /run/zkv/handover" in unit.read_text()
    link = staged / "etc/systemd/system/zfs-import.target.wants/zkv-open-devices.service"
    assert link.readlink() == Path("/", UNITS, "zkv-open-devices.service")
    dropin = staged / paths.CRYPTSETUP_DROPIN.lstrip("/")
    assert "After=zkv-wait-devices.service zkv-open-devices.service" in dropin.read_text()
    dracut = staged / "usr/lib/dracut/modules.d/50zkv"
    assert (dracut / "zkv-wait-devices.service").is_file()
    assert (dracut / "zkv-wait-devices.sh").stat().st_mode & 0o111


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(staged: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(staged / UNITS / "zkv-open-devices.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    noise = [line for line in result.stderr.splitlines() if "zfs-" not in line]
    assert result.returncode == 0 and not noise, result.stderr


def test_uninstall_removes_them(staged: Path, tmp_path: Path) -> None:
    copy = tmp_path / "stage"
    shutil.copytree(staged, copy, symlinks=True)
    subprocess.run(
        ["make", "-s", "uninstall", f"DESTDIR={copy}", "PREFIX=/opt/zkv"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    assert not list(copy.rglob("zkv-open-devices*")) and not list(copy.rglob("*cryptsetup@*"))
