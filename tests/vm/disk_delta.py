"""Layer 4 for a payload chroot: the base image's disk plus what the payload changed.

A full image copies the whole root file system into the encrypted rpool inside a helper VM,
several minutes under TCG, and every change to the files zkv installs would pay that again. A
payload changes a few hundred files, so its image is a qcow2 overlay of the cached base image's
disk (the flavour chroot's own image, which the baseline scenarios build anyway): a helper VM
unpacks a tar of the changed files into rpool/ROOT/debian, removes what the payload removed, and
writes the payload's /boot over p1. tank is untouched, so its key is the base image's.

The changes are found as rsync's quick check finds them (type, mode, owner, size, mtime, link
target), against the base chroot the payload chroot was copied from with `cp -a`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.vm import cache, disk, qemu, testbed
from tests.vm.chroot_layers import Chroot
from tests.vm.testbed import Image

_HELPER = testbed.GUEST_DIR / "helper-delta.sh"
REMOVED_LIST = "zkv-e2e-removed"  # helper-delta.sh reads it from the root of the tar


def build(
    chroot: Chroot,
    base_chroot: Chroot,
    base: Image,
    helper_initrd: Path,
    root_args: list[str] | None = None,
) -> Image:
    """The derived image of ``chroot`` (a payload on ``base_chroot``, whose image is ``base``).

    ``root_args``: how helper-delta.sh opens the root (kernel command line), by default the
    ZFS layout's passphrase; the LUKS layout's: ``zkv.rootluks=UUID zkv.rootkey=KEY``."""
    args = root_args if root_args is not None else [f"zkv.rootpass={testbed.ROOT_PASSPHRASE}"]
    inputs: dict[str, object] = {
        "layer": "image-delta",
        "parent": chroot.key,
        "base_chroot": base_chroot.key,
        "base_image": base.directory.name,
        # A base image rebuilt under the same name has a new tank key: never mix the two.
        "base_data_key": hashlib.sha256(base.data_key().encode()).hexdigest(),
        "helper": cache.file_digest(_HELPER),
        "passphrase": testbed.ROOT_PASSPHRASE,
    }
    if root_args is not None:
        inputs["root_args"] = root_args

    def make(work: Path) -> None:
        image = Image(base.flavour, base.channel, work)
        _make(chroot.root, base_chroot.root, base, image, helper_initrd, args)

    directory = cache.entry(f"image-{chroot.directory.name}", inputs, make)
    return Image(base.flavour, base.channel, directory)


def changes(root: Path, base: Path) -> tuple[list[str], list[str]]:
    """Paths (relative, sorted) that differ in ``root`` from ``base``, and those it lacks.

    /boot is left out: it is a file system of its own. A changed directory is listed (for its
    mode and owner) without its unchanged contents.
    """
    ours = dict(_entries(root))
    theirs = dict(_entries(base))
    changed = sorted(path for path, sig in ours.items() if theirs.get(path) != sig)
    # A removed directory takes its contents with it: list only the topmost removed path.
    removed: list[str] = []
    for path in sorted(set(theirs) - set(ours)):
        if not removed or not path.startswith(removed[-1] + "/"):
            removed.append(path)
    return changed, removed


def _entries(root: Path) -> Iterator[tuple[str, tuple[object, ...]]]:
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d != "boot"]
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            yield rel, _signature(path)


def _signature(path: str) -> tuple[object, ...]:
    info = os.lstat(path)
    kind = stat.S_IFMT(info.st_mode)
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
    # A directory's size and mtime change with its entries, which are compared themselves.
    size_time = (0, 0) if stat.S_ISDIR(info.st_mode) else (info.st_size, info.st_mtime_ns)
    return (kind, info.st_mode, info.st_uid, info.st_gid, info.st_rdev, *size_time, target)


def _make(
    root: Path, base_root: Path, base: Image, image: Image, helper_initrd: Path, args: list[str]
) -> None:
    work = image.directory
    shutil.copyfile(disk.only_file(root / "boot", "vmlinuz-*"), image.kernel)
    shutil.copyfile(disk.only_file(root / "boot", "initrd.img-*"), image.initrd)
    shutil.copyfile(base.data_key_file, image.data_key_file)
    image.data_key_file.chmod(0o600)
    qemu.overlay(base.disk, work / "disk.qcow2", base.disk_format)
    changed, removed = changes(root, base_root)
    cache.log(f"derived image: {len(changed)} changed, {len(removed)} removed paths")
    scratch = [work / name for name in ("delta.tar", "boot.ext4", "helper-root.ext4")]
    tar, boot, helper_root = scratch
    try:
        _pack(root, changed, removed, tar)
        with boot.open("wb") as handle:
            handle.truncate(disk.BOOT_MIB * disk.MiB)  # the whole p1: dd overwrites all of it
        disk.make_boot_fs(root / "boot", boot, offset_mib=0)
        disk.make_helper_root(root, helper_root, _HELPER)
        drives = [
            f"file={work / 'disk.qcow2'},format=qcow2,if=virtio,cache=unsafe",
            f"file={helper_root},format=raw,if=virtio,readonly=on",
            f"file={tar},format=raw,if=virtio,readonly=on",
            f"file={boot},format=raw,if=virtio,readonly=on",
        ]
        disk.run_helper(base, helper_initrd, drives, args, work / "helper-console.log")
    finally:
        for path in scratch:
            path.unlink(missing_ok=True)


def _pack(root: Path, changed: list[str], removed: list[str], tar: Path) -> None:
    listing, removed_list = tar.with_suffix(".list"), tar.parent / REMOVED_LIST
    try:
        listing.write_bytes(b"".join(p.encode() + b"\0" for p in changed))
        removed_list.write_bytes(b"".join(p.encode() + b"\0" for p in removed))
        subprocess.run(
            [
                *("tar", "-c", "-f", str(tar), "-C", str(root), "--numeric-owner"),
                *("--xattrs", "--acls", "--no-recursion", "--null", "-T", str(listing)),
            ],
            check=True,
        )
        # Appended from outside the chroot: a cached layer is never written to.
        subprocess.run(
            ["tar", "-r", "-f", str(tar), "-C", str(tar.parent), REMOVED_LIST], check=True
        )
    finally:
        listing.unlink(missing_ok=True)
        removed_list.unlink(missing_ok=True)
