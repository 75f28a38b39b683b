"""The LUKS layout of the test bed (issue 18): the pools on dm-crypt instead of (or under)
native ZFS encryption, built once per flavour and channel.

- rpool on the LUKS2 partition p2 (``luks:UUID=ROOT_UUID``), rpool/ROOT/debian unencrypted:
  zkv opens p2 in the initramfs before the pool import;
- ``files``: RAID-Z2 over six sparse LUKS2 files in /srv/pools on the root file system
  (``loopfile:`` entries, seed 004), opened in the real root before zfs-import-scan;
- ``nest`` on a LUKS2 zvol of tank (``luks:/dev/zvol/tank/vol``, seed 003), opened once tank is
  imported, then imported by zkv, its native key (nest/secure) loaded before zfs-mount;
- tank/secure natively encrypted, as in the ZFS layout.

The disk is written by a helper VM (guest/helper-luks.sh) from the flavour chroot with
cryptsetup (guest/luks-packages.sh); zkv's payload goes on as a derived image (disk_delta.py).
Keys are test constants derived from KEY_SEED, the same way in Python and in the helper's
shell: sha256 of ``SEED:NAME``, in hex.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.vm import cache, chroot_layers, disk, disk_delta, rootfs, testbed
from tests.vm.chroot_layers import Payload
from tests.vm.testbed import Channel, Flavour, Image
from zkv.keystore import KIND_LOOPFILE, KIND_LUKS, Entry, block_target

HELPER = testbed.GUEST_DIR / "helper-luks.sh"
PACKAGES_SCRIPT = testbed.GUEST_DIR / "luks-packages.sh"
KEY_SEED = "zkv-e2e-luks"
ROOT_UUID = "5a4b5618-0000-4000-8000-00000000e2e0"
FILES = 6
FILE_MIB = 96  # sparse; ZFS wants 64 MiB per vdev, LUKS2's header takes 16
FILE_DIR = "/srv/pools"
ZVOL = "/dev/zvol/tank/vol"
NEST_DATASET = "nest/secure"
# Where the helper left a canary in each pool: mount point -> dataset.
CANARIES = {"/srv/files": "files/data", "/srv/nest": NEST_DATASET, "/srv/secure": "tank/secure"}
_RPOOL_MIB = disk.RPOOL_MIB + 16  # the LUKS2 header on top of the ZFS layout's rpool


def key_of(name: str) -> str:
    return hashlib.sha256(f"{KEY_SEED}:{name}".encode()).hexdigest()


def file_target(index: int) -> str:
    return block_target(KIND_LOOPFILE, f"{FILE_DIR}/files-{index}.img")


ROOT_TARGET = block_target(KIND_LUKS, f"UUID={ROOT_UUID}")
ZVOL_TARGET = block_target(KIND_LUKS, ZVOL)
# The faulty keystore's extra entry: a seventh file that was never made.
MISSING_TARGET = file_target(FILES)


def entries(data_key: str, *, faulty: bool = False) -> list[tuple[Entry, bytes]]:
    """The keystore's entries and keys. ``faulty``: the zvol's key is wrong and a loop file
    that does not exist is listed too; everything else still opens."""
    out = [(Entry(ROOT_TARGET, "passphrase", KIND_LUKS), key_of("root"))]
    out += [
        (Entry(file_target(i), "passphrase", KIND_LOOPFILE), key_of(f"files-{i}"))
        for i in range(FILES)
    ]
    out.append((Entry(ZVOL_TARGET, "passphrase", KIND_LUKS), key_of("wrong" if faulty else "zvol")))
    if faulty:
        out.append((Entry(MISSING_TARGET, "passphrase", KIND_LOOPFILE), key_of("missing")))
    out.append((Entry(testbed.DATA_DATASET, "hex"), data_key))
    out.append((Entry(NEST_DATASET, "hex"), key_of("nest")))
    return [(entry, material.encode()) for entry, material in out]


def secrets(data_key: str) -> list[str]:
    """Every key of the layout, for the leftover checks."""
    names = ["root", "zvol", "nest", *(f"files-{i}" for i in range(FILES))]
    return [data_key, *(key_of(name) for name in names)]


def _base_chroot(flavour: Flavour, channel: Channel) -> chroot_layers.Chroot:
    """The flavour's chroot with cryptsetup: what the LUKS disk is written from."""
    base = chroot_layers.flavour(flavour, channel)
    return chroot_layers.with_payload(
        base, Payload(script=PACKAGES_SCRIPT), f"{flavour}-{channel}-luks"
    )


def payload_chroot(flavour: Flavour, channel: Channel, payload: Payload) -> chroot_layers.Chroot:
    return chroot_layers.with_payload(
        _base_chroot(flavour, channel), payload, f"{flavour}-{channel}-luks-payload"
    )


def helper_args() -> list[str]:
    return [
        f"zkv.luksuuid={ROOT_UUID}",
        f"zkv.files={FILES}",
        f"zkv.filemib={FILE_MIB}",
        f"zkv.keyseed={KEY_SEED}",
    ]


def build(flavour: Flavour, channel: Channel, payload: Payload) -> Image:
    """The cached LUKS-layout image with ``payload`` (zkv) installed.

    Two cache entries, as the ZFS layout's: the whole disk written from the cryptsetup chroot
    (minutes; independent of zkv's sources), and a derived image with the payload's changes
    (disk_delta.py, opening the root's LUKS partition)."""
    base_chroot = _base_chroot(flavour, channel)
    helper_initrd = disk.only_file(rootfs.build(channel) / "root" / "boot", "initrd.img-*")
    inputs = {
        "layer": "image-luks",
        "parent": base_chroot.key,
        "helper": cache.file_digest(HELPER),
        "args": helper_args(),
        "rpool_mib": _RPOOL_MIB,
    }

    def make(work: Path) -> None:
        image = Image(flavour, channel, work)
        disk.make_full(base_chroot.root, helper_initrd, image, HELPER, helper_args(), _RPOOL_MIB)

    directory = cache.entry(f"image-luks-{flavour}-{channel}", inputs, make)
    base = Image(flavour, channel, directory)
    root_args = [f"zkv.rootluks={ROOT_UUID}", f"zkv.rootkey={key_of('root')}"]
    chroot = payload_chroot(flavour, channel, payload)
    return disk_delta.build(chroot, base_chroot, base, helper_initrd, root_args)
