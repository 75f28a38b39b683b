"""The dracut module under Debian's stock dracut configuration, with and without dbus.

Each case builds an initrd with the real dracut inside an overlay of the cached dracut chroot,
without the test bed's dracut.conf.d (which names network-legacy itself): dracut must either
write an image that holds zkv and network-legacy's ifup, or stop with one sentence saying how
to fix it, and never write an image without zkv on a host that has a keystore.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm import chroot_layers, chroot_run, testbed, zkv_image
from zkv import hostkey, keystore, paths

pytestmark = pytest.mark.e2e

# Debian's dracut 059 has no dist configuration of its own; hostonly is off because the image
# is built in a chroot for another machine, not to choose modules.
_BUILD = """\
kver=$(ls /lib/modules | head -n 1)
rc=0
dracut --force --no-hostonly /tmp/zkv-stock.img "$kver" >/tmp/zkv-dracut.log 2>&1 || rc=$?
echo "$rc" >/tmp/zkv-dracut.rc
if [ -f /tmp/zkv-stock.img ]; then lsinitrd /tmp/zkv-stock.img >/tmp/zkv-lsinitrd.txt; fi
"""


@dataclass(frozen=True)
class Build:
    status: int
    log: str
    contents: str | None  # lsinitrd's listing, None when no image was written

    def has(self, path: str) -> bool:
        return self.contents is not None and path.lstrip("/") in self.contents


@pytest.fixture(scope="module")
def dracut_chroot(prerequisites: None) -> Path:
    return chroot_layers.flavour("dracut", testbed.default_channel()).root


@contextlib.contextmanager
def _stock_view(chroot: Path, with_zkv: bool = True) -> Iterator[Path]:
    """A writable view of the chroot, its dracut configuration back to Debian's."""
    with tempfile.TemporaryDirectory(prefix="zkv-dracut-stock-", dir="/var/tmp") as tmp:
        with zkv_image.overlay_view(chroot, Path(tmp)) as root:
            for conf in (root / "etc/dracut.conf.d").glob("*zkv*"):
                conf.unlink()
            if with_zkv:
                zkv_image.install_files(root, zkv_image.build_pyz(Path(tmp) / "zkv-early.pyz"))
            yield root


@pytest.fixture
def stock_root(dracut_chroot: Path) -> Iterator[Path]:
    with _stock_view(dracut_chroot) as root:
        yield root


def _set_up(root: Path) -> None:
    """What `zkv init` and `zkv enroll` leave behind: a keystore and a host key in /boot."""
    boot_zkv = root / paths.KEYSTORE.lstrip("/")
    boot_zkv.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = keystore.create(keystore.new_repository_key(), b"zkv-stock-recovery")
    keystore.write(boot_zkv, store)
    hostkey.generate(root / paths.HOST_KEY.lstrip("/"))


def _run(root: Path, script: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(script)
        f.flush()
        chroot_run.run(root, Path(f.name))


def _build(root: Path) -> Build:
    _run(root, _BUILD)
    listing = root / "tmp/zkv-lsinitrd.txt"
    return Build(
        int((root / "tmp/zkv-dracut.rc").read_text()),
        (root / "tmp/zkv-dracut.log").read_text(errors="replace"),
        listing.read_text(errors="replace") if listing.exists() else None,
    )


def _assert_zkv_inside(build: Build) -> None:
    assert build.status == 0, build.log
    assert build.has(paths.PYZ), build.log
    assert build.has("sbin/ifup"), build.log


def test_without_dbus_the_image_holds_zkv(stock_root: Path) -> None:
    assert not (stock_root / "usr/bin/dbus-daemon").exists()
    _set_up(stock_root)
    _assert_zkv_inside(_build(stock_root))


def test_with_dbus_zkv_still_gets_network_legacy(stock_root: Path) -> None:
    _run(stock_root, "apt-get install -y -q --no-install-recommends dbus >/dev/null\n")
    _set_up(stock_root)
    build = _build(stock_root)
    _assert_zkv_inside(build)
    assert not build.has("usr/lib/systemd/systemd-networkd"), "two network handlers"


def test_without_dracut_network_the_build_stops_with_the_fix(stock_root: Path) -> None:
    _run(stock_root, "dpkg --remove dracut-network >/dev/null\n")
    _set_up(stock_root)
    build = _build(stock_root)
    assert build.status != 0
    assert build.contents is None, "an image was written without zkv"
    assert "apt install dracut-network" in build.log


def test_before_zkv_init_dracut_behaves_as_without_zkv(dracut_chroot: Path) -> None:
    """Installing zkv changes nothing about the image until the host is set up. (Here that
    includes Debian's own failure: dracut-network's 11-ifcfg.conf without dbus stops every
    build, zkv or not; a host set up for zkv gets network-legacy named, which mends it.)"""
    builds = []
    for with_zkv in (False, True):
        with _stock_view(dracut_chroot, with_zkv) as root:
            builds.append(_build(root))
    without, with_ = builds
    assert with_.status == without.status, with_.log
    assert not with_.has(paths.PYZ)
    if without.contents is not None and with_.contents is not None:
        assert _paths(with_.contents) == _paths(without.contents)


def _paths(listing: str) -> set[str]:
    """lsinitrd's file names (its last column), without the build's own dates and sizes."""
    return {line.split()[-1] for line in listing.splitlines() if line.startswith(("-", "d", "l"))}
