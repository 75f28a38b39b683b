"""Layer 1: the Debian guest root file system with OpenZFS built by dkms (the slow part).

It carries initramfs-tools, so it is also the base of the initramfs-tools flavour and the
source of the helper VM's initrd. Its key covers the package lists, the apt pinning, the
finishing script and the channel, so a change of the guest configuration does not rebuild it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.vm import cache, chroot_run, testbed
from tests.vm.testbed import Channel

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SUITE = "bookworm"

_PACKAGE_LISTS = ("packages.txt", "packages-initramfs-tools.txt")
_PIN_FILE = testbed.GUEST_DIR / "apt" / "backports.pref"
_FINISH = testbed.GUEST_DIR / "rootfs-finish.sh"


def read_packages(name: str) -> list[str]:
    lines = (testbed.GUEST_DIR / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def sources(channel: Channel) -> list[str]:
    suites = [
        f"deb {MIRROR} {SUITE} main contrib",
        f"deb {MIRROR} {SUITE}-updates main contrib",
        f"deb {SECURITY_MIRROR} {SUITE}-security main contrib",
    ]
    if channel == "backports":
        suites.append(f"deb {MIRROR} {SUITE}-backports main contrib")
    return suites


def inputs(channel: Channel) -> cache.Inputs:
    return {
        "layer": "rootfs",
        "channel": channel,
        "sources": sources(channel),
        "packages": [pkg for name in _PACKAGE_LISTS for pkg in read_packages(name)],
        "pin": cache.file_digest(_PIN_FILE) if channel == "backports" else None,
        "finish": cache.file_digest(_FINISH),
    }


def build(channel: Channel) -> Path:
    """Return the cached rootfs entry; its tree is ``<entry>/root``."""
    return cache.entry(f"rootfs-{channel}", inputs(channel), lambda work: _build(channel, work))


def _build(channel: Channel, work: Path) -> None:
    root = work / "root"
    debs = testbed.cache_dir() / "debs"  # shared .deb cache: a rebuild downloads nothing twice
    debs.mkdir(parents=True, exist_ok=True)
    packages = [pkg for name in _PACKAGE_LISTS for pkg in read_packages(name)]
    hooks = [
        '--setup-hook=mkdir -p "$1"/etc/apt/preferences.d "$1"/var/cache/apt/archives',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
    ]
    if channel == "backports":
        hooks.insert(1, f"--setup-hook=copy-in {_PIN_FILE} /etc/apt/preferences.d")
    subprocess.run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=apt",
            "--format=directory",
            "--skip=essential/unlink",
            '--aptopt=APT::Install-Recommends "false"',
            f"--include={','.join(packages)}",
            *hooks,
            SUITE,
            str(root),
            *sources(channel),
        ],
        check=True,
    )
    chroot_run.run(root, _FINISH)
