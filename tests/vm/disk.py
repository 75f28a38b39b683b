"""Layer 4: the bootable image (disk, kernel, initrd, data key) made from a chroot.

The host kernel cannot load ZFS, so the pools are created by a helper VM: the guest kernel
boots the rootfs layer's initramfs-tools initrd with a read-only ext4 copy of the chroot as
root and guest/helper-init.sh as init.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path

from tests.vm import cache, qemu, testbed
from tests.vm.chroot_layers import Chroot
from tests.vm.testbed import Channel, Flavour, Image

_HELPER = testbed.GUEST_DIR / "helper-init.sh"
_HELPER_TIMEOUT_S = 1200
MiB = 1 << 20
# GPT: p1 ext4 /boot, p2 rpool, p3 tank. The raw file is sparse. own_boot.py reads p1 back.
BOOT_OFFSET_MIB = 1
BOOT_MIB = 256
RPOOL_MIB = 4608
TANK_MIB = 512
_DISK_MIB = BOOT_OFFSET_MIB + BOOT_MIB + RPOOL_MIB + TANK_MIB + 1


def inputs(chroot: Chroot) -> cache.Inputs:
    return {
        "layer": "image",
        "parent": chroot.key,
        "helper": cache.file_digest(_HELPER),
        "layout": [BOOT_MIB, RPOOL_MIB, _DISK_MIB],
        "passphrase": testbed.ROOT_PASSPHRASE,
    }


def build(flavour: Flavour, channel: Channel, chroot: Chroot, helper_initrd: Path) -> Image:
    def make(work: Path) -> None:
        _make(chroot.root, helper_initrd, Image(flavour, channel, work))

    directory = cache.entry(f"image-{chroot.directory.name}", inputs(chroot), make)
    return Image(flavour, channel, directory)


def only_file(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if len(matches) != 1:
        raise RuntimeError(f"expected one {pattern} in {directory}, found {matches}")
    return matches[0]


def _make(root: Path, helper_initrd: Path, image: Image) -> None:
    make_full(root, helper_initrd, image, _HELPER, [f"zkv.rootpass={testbed.ROOT_PASSPHRASE}"])


def make_full(
    root: Path,
    helper_initrd: Path,
    image: Image,
    helper: Path,
    args: list[str],
    rpool_mib: int = RPOOL_MIB,
) -> None:
    """A whole disk from ``root``: kernel, initrd, a new tank key, the partitions and /boot,
    then ``helper`` as the helper VM's init writes the pools (``args`` and ``zkv.datakey=``
    on its command line)."""
    work = image.directory
    shutil.copyfile(only_file(root / "boot", "vmlinuz-*"), image.kernel)
    shutil.copyfile(only_file(root / "boot", "initrd.img-*"), image.initrd)
    image.data_key_file.touch(mode=0o600)
    image.data_key_file.write_text(secrets.token_hex(32) + "\n")

    partition(image.disk, rpool_mib)
    make_boot_fs(root / "boot", image.disk)
    helper_root = work / "helper-root.ext4"
    try:
        make_helper_root(root, helper_root, helper)
        drives = [
            f"file={image.disk},format=raw,if=virtio,cache=unsafe",
            f"file={helper_root},format=raw,if=virtio,readonly=on",
        ]
        args = [*args, f"zkv.datakey={image.data_key()}"]
        run_helper(image, helper_initrd, drives, args, work / "helper-console.log")
    finally:
        helper_root.unlink(missing_ok=True)


def partition(disk: Path, rpool_mib: int = RPOOL_MIB, tank_mib: int = TANK_MIB) -> None:
    """GPT on a new sparse ``disk``: p1 /boot, p2 rpool's ``rpool_mib``, p3 tank's."""
    with disk.open("wb") as handle:
        handle.truncate((BOOT_OFFSET_MIB + BOOT_MIB + rpool_mib + tank_mib + 1) * MiB)
    subprocess.run(
        [
            "sgdisk",
            f"--new=1:{BOOT_OFFSET_MIB}M:+{BOOT_MIB}M",
            "--typecode=1:8300",
            "--change-name=1:zkv-boot",
            f"--new=2:0:+{rpool_mib}M",
            "--typecode=2:bf00",
            "--change-name=2:rpool",
            "--new=3:0:0",
            "--typecode=3:bf00",
            "--change-name=3:tank",
            str(disk),
        ],
        check=True,
        stdout=subprocess.DEVNULL,  # sgdisk has no -q; errors still reach stderr
    )


def make_boot_fs(boot: Path, disk: Path, offset_mib: int = BOOT_OFFSET_MIB) -> None:
    """The ext4 /boot file system from ``boot``, at p1's offset of ``disk`` unless told."""
    subprocess.run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            "zkv-boot",
            "-d",
            str(boot),
            "-E",
            f"offset={offset_mib * MiB}",
            str(disk),
            f"{BOOT_MIB}M",
        ],
        check=True,
    )


def make_helper_root(root: Path, target: Path, init: Path) -> None:
    """A read-only ext4 copy of ``root`` whose /zkv-e2e-helper is ``init``."""
    used = subprocess.run(
        ["du", "-sx", "--block-size=1M", str(root)], check=True, capture_output=True, text=True
    )
    size_mib = int(used.stdout.split()[0]) * 5 // 4 + 512
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-d", str(root), str(target), f"{size_mib}M"], check=True
    )
    # The helper lives only in this throw-away image, not in the cached chroot.
    for request in (f"write {init} zkv-e2e-helper", "sif zkv-e2e-helper mode 0100755"):
        subprocess.run(
            ["debugfs", "-w", "-R", request, str(target)], check=True, capture_output=True
        )


def run_helper(
    image: Image, initrd: Path, drives: list[str], args: list[str], console: Path
) -> None:
    """Boot the helper VM (root /dev/vdb, init /zkv-e2e-helper) until it powers off.

    ``drives`` are QEMU -drive values in order (vda, vdb = the helper root, ...); ``args`` go on
    the kernel command line. Raises RuntimeError unless the helper printed ZKV-HELPER-OK.
    """
    cmdline = [
        "root=/dev/vdb",
        "rootfstype=ext4",
        "ro",
        "init=/zkv-e2e-helper",
        *testbed.BASE_CMDLINE,
        *args,
    ]
    command = qemu.command(
        kernel=image.kernel, initrd=initrd, cmdline=cmdline, drives=drives, serial=f"file:{console}"
    )
    started = time.monotonic()
    cache.log("helper VM: writing the pools (TCG, takes a while)")
    subprocess.run(command, check=True, timeout=_HELPER_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output = console.read_text(errors="replace")
    if "ZKV-HELPER-OK" not in (line.strip() for line in output.splitlines()):
        tail = "\n".join(output.splitlines()[-40:])
        raise RuntimeError(f"helper VM failed; last console lines:\n{tail}")
    cache.log(f"helper VM done in {time.monotonic() - started:.0f} s")
