"""The kernel and initrd a guest holds in its own /boot, read back from its disk after it stopped.

What a real reboot boots is what the guest's own update-initramfs or dracut wrote to /boot, not
an image built on the host. The scenarios that ask for that (a package that rebuilds the
initramfs, a key rotation cut off by a power loss) boot these files on the same disk.
No mount, no nbd: `qemu-img dd` copies the boot partition (p1, disk.py) out of the qcow2
overlay and debugfs reads the ext4 file system from that copy.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import NamedTuple

from tests.vm import disk

# debugfs `ls -p`: /inode/mode/uid/gid/name/size/
_ENTRY = re.compile(r"^/\d+/(\d+)/\d+/\d+/([^/]+)/\d*/$")
_REGULAR = 0o100000


class BootFiles(NamedTuple):
    kernel: Path
    initrd: Path
    version: str


def read_boot_files(overlay: Path, dest: Path) -> BootFiles:
    """Copy the newest kernel and its initrd out of ``overlay``'s /boot into ``dest``.

    The newest kernel version with both files wins, as GRUB's default entry would. Raises
    RuntimeError when /boot holds no such pair (the guest removed or never wrote its initrd).
    """
    dest.mkdir(parents=True, exist_ok=True)
    partition = dest / "boot.ext4"
    subprocess.run(
        [
            "qemu-img",
            "dd",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "bs=1M",
            f"skip={disk.BOOT_OFFSET_MIB}",
            f"count={disk.BOOT_MIB}",
            f"if={overlay}",
            f"of={partition}",
        ],
        check=True,
        capture_output=True,
    )
    try:
        names = _regular_files(partition)
        version = newest_pair(names)
        files = BootFiles(dest / f"vmlinuz-{version}", dest / f"initrd.img-{version}", version)
        for target in (files.kernel, files.initrd):
            _debugfs(partition, f"dump /{target.name} {target}")
            if not target.is_file() or target.stat().st_size == 0:
                raise RuntimeError(f"debugfs could not read /boot/{target.name} from {overlay}")
        return files
    finally:
        partition.unlink(missing_ok=True)


def newest_pair(names: set[str]) -> str:
    """The highest kernel version that has both vmlinuz-V and initrd.img-V in ``names``."""
    versions = [
        name.removeprefix("vmlinuz-")
        for name in names
        if name.startswith("vmlinuz-") and f"initrd.img-{name.removeprefix('vmlinuz-')}" in names
    ]
    if not versions:
        raise RuntimeError(f"no kernel with an initrd in /boot (it holds: {sorted(names)})")
    return max(versions, key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    # Good enough for Debian kernel versions (6.1.0-28-amd64): numbers compare as numbers.
    return [
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)
    ]


def _regular_files(partition: Path) -> set[str]:
    listing = _debugfs(partition, "ls -p /")
    names = set()
    for line in listing.splitlines():
        match = _ENTRY.match(line.strip())
        if match and int(match.group(1), 8) & 0o170000 == _REGULAR:
            names.add(match.group(2))
    return names


def _debugfs(partition: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(partition)], check=True, capture_output=True, text=True
    )
    return done.stdout
