"""Rebuilding the boot images: each holds a copy of the keystore (the hooks copy it in).

A rotation rebuilds them twice (zkv_admin/rotation.py): once while the keystore holds the old
and the new key, before ``zfs change-key``, and once after it holds only the new key. So every
image on disk, whichever the power cut left, holds a key that ZFS accepts.

The second rebuild only takes the retired key out of the images, but it must not be lost to a
power cut after the keystore dropped that key: with one key left, nothing else would say the
images are behind. So the keystore's folder holds a marker (``mark_stale``) from before the
keystore drops a key (a dataset's, or a repository slot) until the images are rebuilt
(``refresh``); ``zkv reconcile`` and the next rotation's rebuild clear one a power cut left.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from zkv.errors import BootImageFailed
from zkv.fsutil import atomic_write, fsync_dir, which

# The same order as the installation and the VM image (tests/vm/zkv_image.py): every kernel's
# image, since any of them may be the one that boots next.
BUILDERS = (
    ("update-initramfs", ("-u", "-k", "all")),
    ("dracut", ("--force", "--regenerate-all")),
)
TIMEOUT = 900.0


def builder() -> list[str] | None:
    for name, args in BUILDERS:
        path = which(name)
        if path:
            return [path, *args]
    return None


def rebuild() -> None:
    """Rebuild every boot image from the keystore on disk and flush it to the disk."""
    command = builder()
    if command is None:
        raise BootImageFailed(detail="neither update-initramfs nor dracut was found")
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootImageFailed(detail=f"{command[0]}: {exc}") from None
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"]
        raise BootImageFailed(detail=f"{os.path.basename(command[0])}: {lines[-1][:200]}")
    os.sync()  # the builders rename their new image into place; make it survive a power cut


def stale_marker(keystore_path: Path) -> Path:
    return keystore_path.with_name(f".{keystore_path.name}.images-stale")


def mark_stale(keystore_path: Path) -> None:
    """Say, durably, that the images hold keys the keystore is about to drop."""
    atomic_write(stale_marker(keystore_path), b"")


def is_stale(keystore_path: Path) -> bool:
    return stale_marker(keystore_path).exists()


def refresh(keystore_path: Path) -> None:
    """Rebuild the images, then clear the marker (only once they are on disk)."""
    rebuild()
    marker = stale_marker(keystore_path)
    try:
        marker.unlink(missing_ok=True)
        fsync_dir(str(marker.parent))
    except OSError:
        pass  # a marker left behind costs one more rebuild, never a stale image
