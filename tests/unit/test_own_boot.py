"""tests/vm/own_boot.py against a real ext4 boot partition inside a qcow2 overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm import disk, own_boot, qemu

TOOLS = ("qemu-img", "mke2fs", "debugfs")


@pytest.fixture
def boot_dir(tmp_path: Path) -> Path:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"missing {missing}")
        pytest.skip(f"missing {missing}")
    boot = tmp_path / "boot"
    boot.mkdir()
    return boot


def _overlay(boot: Path, tmp: Path) -> Path:
    """A disk laid out like disk.py's p1 (ext4 at the same offset), behind a qcow2 overlay."""
    raw = tmp / "disk.raw"
    with raw.open("wb") as handle:
        handle.truncate((disk.BOOT_OFFSET_MIB + disk.BOOT_MIB + 1) * disk.MiB)
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-d", str(boot),
         "-E", f"offset={disk.BOOT_OFFSET_MIB * disk.MiB}", str(raw), f"{disk.BOOT_MIB}M"],
        check=True,
    )  # fmt: skip
    return qemu.overlay(raw, tmp / "disk.qcow2")


def test_newest_kernel_with_an_initrd_is_read_back(boot_dir: Path, tmp_path: Path) -> None:
    for name, content in (
        ("vmlinuz-6.1.0-9-amd64", b"old kernel"),
        ("initrd.img-6.1.0-9-amd64", b"old initrd"),
        ("vmlinuz-6.1.0-28-amd64", b"kernel 28"),
        ("initrd.img-6.1.0-28-amd64", os.urandom(300_000)),
        ("vmlinuz-6.1.0-30-amd64", b"no initrd yet: not bootable"),
        ("config-6.1.0-28-amd64", b"x"),
    ):
        (boot_dir / name).write_bytes(content)
    (boot_dir / "zkv").mkdir()
    files = own_boot.read_boot_files(_overlay(boot_dir, tmp_path), tmp_path / "out")
    assert files.version == "6.1.0-28-amd64"
    assert files.kernel.read_bytes() == b"kernel 28"
    assert files.initrd.read_bytes() == (boot_dir / "initrd.img-6.1.0-28-amd64").read_bytes()
    assert not (tmp_path / "out" / "boot.ext4").exists(), "the partition copy is removed"


def test_a_boot_without_an_initrd_is_an_error(boot_dir: Path, tmp_path: Path) -> None:
    (boot_dir / "vmlinuz-6.1.0-28-amd64").write_bytes(b"kernel")
    with pytest.raises(RuntimeError, match="no kernel with an initrd"):
        own_boot.read_boot_files(_overlay(boot_dir, tmp_path), tmp_path / "out")


def test_versions_compare_as_numbers() -> None:
    names = {"vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64"}
    names |= {"vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64"}
    assert own_boot.newest_pair(names) == "6.1.0-10-amd64"
