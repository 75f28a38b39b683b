"""The image builder's public API: ``build(flavour, channel, payload=None) -> Image``.

Layers, each a cache entry keyed by its inputs and its parent's key:

1. ``rootfs-<channel>``: mmdebstrap + dkms-built OpenZFS (initramfs-tools inside);
2. ``chroot-<flavour>-<channel>``: guest configuration, the flavour's initrd generator;
3. ``chroot-<flavour>-<channel>-payload`` (only with a payload): the payload on top of 2;
4. ``image-…``: disk (GPT, ext4 /boot, encrypted rpool and tank), kernel, initrd, data key;
   a payload's image is layer 2's image plus the payload's changes (disk_delta.py).
"""

from __future__ import annotations

from tests.vm import chroot_layers, disk, disk_delta, rootfs
from tests.vm.chroot_layers import Payload
from tests.vm.testbed import Channel, Flavour, Image

__all__ = ["Payload", "build"]


def build(flavour: Flavour, channel: Channel, payload: Payload | None = None) -> Image:
    """Return the cached image for these inputs, building whatever layer is missing."""
    chroot = chroot_layers.flavour(flavour, channel)
    helper_initrd = disk.only_file(rootfs.build(channel) / "root" / "boot", "initrd.img-*")
    image = disk.build(flavour, channel, chroot, helper_initrd)
    if payload is None:
        return image
    payload_chroot = chroot_layers.with_payload(chroot, payload, f"{flavour}-{channel}-payload")
    return disk_delta.build(payload_chroot, chroot, image, helper_initrd)
