"""Constants and paths of the VM test bed, shared by the builder, the driver and the tests.

The secrets here are test constants: they protect throw-away disk images and nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

Flavour = Literal["dracut", "initramfs-tools"]
Channel = Literal["backports", "bookworm"]

FLAVOURS: Final[tuple[Flavour, ...]] = ("dracut", "initramfs-tools")
CHANNELS: Final[tuple[Channel, ...]] = ("backports", "bookworm")

ROOT_DATASET: Final = "rpool/ROOT/debian"
DATA_DATASET: Final = "tank/secure"
DATA_MOUNTPOINT: Final = "/srv/secure"
ROOT_PASSPHRASE: Final = "zkv-e2e-root-passphrase"
# The pools and the guest share this hostid, else the initrd refuses to import the pools.
HOSTID: Final = "5a4b5648"

# Printed on the serial console by zkv-e2e-marker.service in the real root.
BOOT_MARKER: Final = "ZKV-E2E-BOOTED"

VM_DIR: Final = Path(__file__).resolve().parent
GUEST_DIR: Final = VM_DIR / "guest"

QEMU_CPU: Final = os.environ.get("ZKV_QEMU_CPU", "max,-erms,-fsrm")
QEMU_MEMORY_MB: Final = 2048
QEMU_SMP: Final = 2


# Under TCG on a loaded host the kernel's IO-APIC timer check can fail and panic the boot.
# TCG runs the kernel's page zeroing slowly (rep stos), and Debian's kernel zeroes every page it
# hands out (CONFIG_INIT_ON_ALLOC_DEFAULT_ON) and faults huge pages (2 MiB each to zero): under
# load the real root then stalls for minutes in clear_page_rep (soft lockups), long enough for
# systemd-udev-settle to give up. Both off: the guests do what they do with less zeroing.
# TCG keys its translated code by virtual address: with address space randomisation every new
# process maps libc and the rest at new addresses, so their code is translated again per process
# and each code page collects translated blocks by the thousand. A store into such a page (freed
# initramfs pages reused by the real root) walks that list, and the real root stalled for minutes
# in ZFS's LZ4 decompression (perf on QEMU's vCPU thread: tb_invalidate_phys_page_range and
# page_collection_lock). norandmaps: one translation per library for all processes; an in-guest
# `update-initramfs -u` went from over 18 min (unfinished) to 433 s, and no soft lockup since.
BASE_CMDLINE: Final = (
    "console=ttyS0",
    "panic=-1",
    "no_timer_check",
    "init_on_alloc=0",
    "transparent_hugepage=never",
    "norandmaps",
)


def cache_dir() -> Path:
    """Root of the artefact cache (override with ZKV_E2E_CACHE)."""
    return Path(os.environ.get("ZKV_E2E_CACHE", "/var/tmp/zkv-e2e"))


def default_channel() -> Channel:
    """The channel every scenario runs on: ZKV_ZFS_CHANNEL, default backports (2.3.x)."""
    return parse_channel(os.environ.get("ZKV_ZFS_CHANNEL", "backports"))


def extra_channels() -> tuple[Channel, ...]:
    """Channels that get one baseline boot per flavour on top of the default channel.

    ZKV_E2E_EXTRA_CHANNELS is a comma-separated list; empty disables the extra boots.
    """
    default = default_channel()
    fallback = ",".join(c for c in CHANNELS if c != default)
    raw = os.environ.get("ZKV_E2E_EXTRA_CHANNELS", fallback)
    return tuple(parse_channel(c.strip()) for c in raw.split(",") if c.strip())


def parse_channel(value: str) -> Channel:
    for channel in CHANNELS:
        if value == channel:
            return channel
    raise ValueError(f"unknown ZFS channel {value!r}; expected one of {', '.join(CHANNELS)}")


def root_argument(flavour: Flavour) -> str:
    """The kernel's root= for the flavour's initrd (their syntaxes differ)."""
    if flavour == "dracut":
        return f"root=zfs:{ROOT_DATASET}"
    return f"root=ZFS={ROOT_DATASET}"


@dataclass(frozen=True)
class Image:
    """A cached, bootable disk and the kernel and initrd that belong to it (never modify)."""

    flavour: Flavour
    channel: Channel
    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def disk(self) -> Path:
        """disk.raw, or disk.qcow2 for an image derived from another's disk (disk_delta.py)."""
        derived = self.directory / "disk.qcow2"
        return derived if derived.exists() else self.directory / "disk.raw"

    @property
    def disk_format(self) -> str:
        return "qcow2" if self.disk.suffix == ".qcow2" else "raw"

    @property
    def data_key_file(self) -> Path:
        """Raw key of tank/secure: 64 hex characters, mode 0600."""
        return self.directory / "tank-secure.key"

    def data_key(self) -> str:
        return self.data_key_file.read_text().strip()
