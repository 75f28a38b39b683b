"""The zkv .deb with apt in each flavour's chroot (the test bed's cached chroots, in an overlay).

Offline: everything it depends on is already there. Install, upgrade (a reinstall: the same
maintainer-script path), remove and purge must each have the package rebuild the initramfs
through the generator's own trigger, and none of them may put zkv into the image while the host
is not set up. The admin's early.conf survives an upgrade and a remove; /boot/zkv survives all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm import chroot_layers, packages, testbed, zkv_image
from tests.vm.packages import Debs
from tests.vm.testbed import Flavour
from zkv import paths

pytestmark = pytest.mark.e2e

FILES = (
    "usr/sbin/zkv",
    "usr/lib/zkv/zkv-early.pyz",
    "usr/lib/zkv/zkv-lib.sh",
    "usr/lib/dracut/modules.d/50zkv/module-setup.sh",
    "usr/lib/dracut/dracut.conf.d/50-zkv.conf",
    "usr/share/initramfs-tools/hooks/zkv",
    "usr/share/initramfs-tools/scripts/local-top/zkv",
    "lib/systemd/system/zkv-load-keys.service",
    "lib/systemd/system/zkv-open-devices.service",
    "usr/share/man/man8/zkv.8.gz",
    "usr/share/man/man8/zkv-early.8.gz",
    "usr/share/man/man5/zkv-early.conf.5.gz",
)
EARLY_CONF = "etc/zkv/early.conf"
# The units the package enables (deb-systemd-helper), and removal disables.
WANTS = (
    "etc/systemd/system/zfs-mount.service.wants/zkv-load-keys.service",
    "etc/systemd/system/zfs-import.target.wants/zkv-open-devices.service",
)
# Not set up (no host key): the image stays without zkv, whatever the keystore holds.
KEYSTORE = "boot/zkv/keystore"
# What makes an image boot through zkv (zkv_installed in the boot scripts): the client and the
# keystore. initramfs-tools copies every boot script into every image; without these they exit.
IN_IMAGE = tuple(p.lstrip("/") for p in (paths.PYZ, paths.IMAGE_KEYSTORE, paths.IMAGE_HOST_KEY))


@pytest.fixture(params=testbed.FLAVOURS)
def chroot(request: pytest.FixtureRequest, prerequisites: None) -> Iterator[Path]:
    flavour: Flavour = request.param
    base = chroot_layers.flavour(flavour, testbed.default_channel()).root
    with tempfile.TemporaryDirectory(prefix=f"zkv-deb-{flavour}-", dir="/var/tmp") as tmp:
        with zkv_image.overlay_view(base, Path(tmp)) as root:
            yield root


def _initrd(root: Path) -> Path:
    [initrd] = (root / "boot").glob("initrd.img-*")
    return initrd


def _listing(root: Path) -> list[str]:
    """The image's file names, with the generator's own lister (lsinitrd or lsinitramfs)."""
    lister = "lsinitrd" if (root / "usr/bin/lsinitrd").exists() else "lsinitramfs"
    done = packages.run(root, lister, "/boot/" + _initrd(root).name)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


class Rebuilds:
    """Asserts that each step rebuilt the initrd (a newer file) and left zkv out of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mtime = _initrd(root).stat().st_mtime_ns
        assert not self.zkv_lines(), "the test bed's chroot has zkv already"

    def zkv_lines(self) -> list[str]:
        return [line for line in _listing(self.root) if any(p in line for p in IN_IMAGE)]

    def check(self, step: str, output: str) -> None:
        mtime = _initrd(self.root).stat().st_mtime_ns
        assert mtime > self.mtime, f"{step}: the initrd was not rebuilt\n{output}"
        self.mtime = mtime
        assert not self.zkv_lines(), f"{step}: zkv in the image before zkv init"


def test_install_upgrade_remove_purge(chroot: Path, debs: Debs) -> None:
    (chroot / KEYSTORE).parent.mkdir()
    (chroot / KEYSTORE).write_bytes(b"the admin's keystore")
    rebuilds = Rebuilds(chroot)
    deb = packages.copy_in(chroot, debs.zkv)

    rebuilds.check("install", packages.apt(chroot, "install", deb))
    for path in FILES:
        assert (chroot / path).is_file(), path
    assert not (chroot / "usr/share/man/man8/zkv-gateway.8.gz").exists(), "zkv-gateway's page"
    assert (chroot / "etc/zkv").stat().st_mode & 0o777 == 0o700
    conffiles = packages.run(chroot, "dpkg-query", "-W", "-f=${Conffiles}", "zkv").stdout
    assert "/" + EARLY_CONF in conffiles
    for wants in WANTS:
        assert (chroot / wants).is_symlink(), f"{wants}: not enabled by the package"
    done = packages.run(chroot, "zkv", "--help")
    assert done.returncode == 0 and "zkv" in done.stdout, done.stderr

    edited = (chroot / EARLY_CONF).read_text() + "# the admin's edit\n"
    (chroot / EARLY_CONF).write_text(edited)
    rebuilds.check("upgrade", packages.apt(chroot, "install", "--reinstall", deb))
    assert (chroot / EARLY_CONF).read_text() == edited

    rebuilds.check("remove", packages.apt(chroot, "remove", "zkv"))
    for path in FILES:
        assert not (chroot / path).exists(), path
    for wants in WANTS:
        assert not (chroot / wants).exists(), wants
    assert (chroot / EARLY_CONF).read_text() == edited

    output = packages.apt(chroot, "purge", "zkv")
    assert not (chroot / EARLY_CONF).exists()
    assert "kept /boot/zkv" in output
    assert (chroot / KEYSTORE).read_bytes() == b"the admin's keystore"
