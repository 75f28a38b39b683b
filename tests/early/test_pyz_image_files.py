"""The initramfs carries every Python file a boot imports: the built pyz runs under -I -S (as the
hooks start it) with its imports recorded, and each one must be in initramfs-files' list
(zkv_early/initramfs_files.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.early.conftest import BOOT_FLAGS, TARGET_PYTHON, Machine
from tests.harness.gateway import running_gateway

REPO = Path(__file__).resolve().parents[2]

# Runs the pyz as `python3 -I -S zkv-early.pyz ...` does (the interpreter puts the zip first on
# sys.path and runs its __main__ through runpy), then lists the module files loaded.
RECORD = """
import runpy, sys
out, pyz = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
sys.path.insert(0, pyz)
status = 0
try:
    runpy._run_module_as_main("__main__", alter_argv=False)
except SystemExit as exc:
    status = exc.code
import json
import sys
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
json.dump({"status": status, "files": [f for f in files if not f.startswith(pyz)]}, open(out, "w"))
"""


def image_files(pyz: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "zkv_early.initramfs_files", "python", str(pyz)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split()[1] for line in done.stdout.splitlines()}


def imported(machine: Machine, tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "imported.json"
    argv = machine.argv(*args)
    assert argv[:3] == [TARGET_PYTHON, BOOT_FLAGS, str(machine.pyz)]
    done = subprocess.run(
        [TARGET_PYTHON, BOOT_FLAGS, "-c", RECORD, str(out), *argv[2:]],
        env=machine.env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    record = json.loads(out.read_text())
    assert record["status"] in (0, None), done.stderr
    files: list[str] = record["files"]
    return files


@pytest.mark.parametrize("command", ["unlock", "handover-load"])
def test_every_file_a_boot_imports_is_in_the_image(
    machine: Machine, tmp_path: Path, command: str
) -> None:
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        loaded = imported(machine, tmp_path, *([] if command == "unlock" else [command]))
    image = image_files(machine.pyz)
    # The image holds sourceless bytecode where the host has x.py (+ __pycache__).
    missing = [f for f in loaded if f not in image and f[:-3] + ".pyc" not in image]
    assert missing == [], missing
    assert not any("/cryptography/x509/" in f for f in loaded), "the public API stays unused"
