"""Layers 2 and 3: a flavour chroot on top of the rootfs, and an optional payload on top of that.

Each layer is a full copy (reflinked where the file system can) of its parent, so changing a
layer never touches the cached layers below it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.vm import cache, chroot_run, rootfs, testbed
from tests.vm.testbed import Channel, Flavour

_OVERLAY = testbed.GUEST_DIR / "overlay"
_CONFIGURE = testbed.GUEST_DIR / "configure.sh"


@dataclass(frozen=True)
class Payload:
    """Extra content layered onto a flavour chroot before its initrd and disk are built.

    Applied in this order: ``overlay`` is copied onto ``/``, ``boot_overlay`` onto ``/boot``
    (the boot partition is made from the chroot's /boot), then ``script`` runs inside the
    chroot with /bin/sh (it must regenerate the initrd itself if it changes what goes in:
    ``update-initramfs -u -k all`` or ``dracut --force --regenerate-all``).
    The contents of all three are part of the cache key.
    """

    overlay: Path | None = None
    script: Path | None = None
    boot_overlay: Path | None = None

    def inputs(self) -> cache.Inputs:
        return {
            "overlay": cache.tree_digest(self.overlay) if self.overlay else None,
            "script": cache.file_digest(self.script) if self.script else None,
            "boot_overlay": cache.tree_digest(self.boot_overlay) if self.boot_overlay else None,
        }


@dataclass(frozen=True)
class Chroot:
    """A cached chroot entry: the tree is ``directory / "root"``."""

    key: str
    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root"


def flavour_inputs(flavour: Flavour, channel: Channel) -> cache.Inputs:
    script = _flavour_script(flavour)
    return {
        "layer": "flavour",
        "flavour": flavour,
        "parent": cache.key_of(rootfs.inputs(channel)),
        "overlay": cache.tree_digest(_OVERLAY),
        "configure": cache.file_digest(_CONFIGURE),
        "script": cache.file_digest(script),
        "packages": rootfs.read_packages(f"packages-{flavour}.txt"),
        "hostid": testbed.HOSTID,
    }


def flavour(flavour: Flavour, channel: Channel) -> Chroot:
    inputs = flavour_inputs(flavour, channel)
    parent = rootfs.build(channel) / "root"  # outside the entry: its build time is its own

    def build(work: Path) -> None:
        root = _copy(parent, work / "root")
        _overlay(_OVERLAY, root)
        chroot_run.run(root, _CONFIGURE, [testbed.HOSTID])
        packages = rootfs.read_packages(f"packages-{flavour}.txt")
        chroot_run.run(root, _flavour_script(flavour), packages)

    directory = cache.entry(f"chroot-{flavour}-{channel}", inputs, build)
    return Chroot(cache.key_of(inputs), directory)


def with_payload(base: Chroot, payload: Payload, name: str) -> Chroot:
    inputs = {"layer": "payload", "parent": base.key, **payload.inputs()}

    def build(work: Path) -> None:
        root = _copy(base.root, work / "root")
        if payload.overlay:
            _overlay(payload.overlay, root)
        if payload.boot_overlay:
            _overlay(payload.boot_overlay, root / "boot")
        if payload.script:
            chroot_run.run(root, payload.script)

    directory = cache.entry(f"chroot-{name}", inputs, build)
    return Chroot(cache.key_of(inputs), directory)


def _flavour_script(flavour: Flavour) -> Path:
    return testbed.GUEST_DIR / f"flavour-{flavour}.sh"


def _copy(source: Path, target: Path) -> Path:
    # --reflink=auto shares blocks on btrfs/xfs and falls back to a plain copy elsewhere.
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(target)], check=True)
    return target


def _overlay(source: Path, target: Path) -> None:
    # Copies contents, not ownership: the files belong to root inside the guest.
    subprocess.run(
        [
            "cp",
            "-r",
            "--preserve=mode,timestamps,links",
            "--no-dereference",
            "--no-target-directory",
            str(source),
            str(target),
        ],
        check=True,
    )
