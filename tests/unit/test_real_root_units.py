"""The real root's two zkv units around the pool import: zkv-load-keys.service runs once the
zvol links exist (it opens LUKS devices on zvols), and both put their one-line messages on the
console as well as in the journal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.shell.test_boot_scripts import REPO, _unit

UNITS = [REPO / "systemd" / name for name in ("zkv-open-devices.service", "zkv-load-keys.service")]


def test_load_keys_runs_after_the_import_and_before_the_mounts() -> None:
    """Not after zfs-volume-wait: a TCG boot lost a zvol link, zfs-volume-wait waited its 10
    minutes and zfs-mount behind zkv-load-keys with it (handover-load finds zvols itself)."""
    unit = _unit(REPO / "systemd" / "zkv-load-keys.service")
    assert "zfs-import.target" in unit["After"]
    assert "zfs-volume-wait.service" not in unit["After"]
    assert "zfs-mount.service" in unit["Before"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_messages_reach_the_console(path: Path) -> None:
    unit = _unit(path)
    assert unit["StandardOutput"] == ["journal+console"]
    assert "StandardError" not in unit, "stderr (the client's Console) inherits StandardOutput"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, UNITS)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    noise = [line for line in result.stderr.splitlines() if "zfs-" not in line]
    assert result.returncode == 0 and not noise, result.stderr
