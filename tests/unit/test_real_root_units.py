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


def test_load_keys_runs_after_the_zvol_links_and_before_the_mounts() -> None:
    unit = _unit(REPO / "systemd" / "zkv-load-keys.service")
    assert {"zfs-import.target", "zfs-volume-wait.service"} <= set(unit["After"])
    assert "zfs-mount.service" in unit["Before"]
    assert "zfs-volume-wait.service" not in unit.get("Wants", []) + unit.get("Requires", [])


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
