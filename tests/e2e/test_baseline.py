"""Baseline: OpenZFS's own passphrase prompt unlocks the encrypted root, for both initrds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import record_boot
from tests.vm import testbed
from tests.vm.driver import BootResult, Guest
from tests.vm.testbed import Channel, Flavour, Image

pytestmark = pytest.mark.e2e

ImageGetter = Callable[[Flavour, Channel], Image]
GuestFactory = Callable[[Image], Guest]
BootedGuest = Callable[[Flavour, Channel], tuple[Guest, BootResult]]

DEFAULT = testbed.default_channel()
ALL_CHANNELS = [
    pytest.param(channel, id=channel) for channel in (DEFAULT, *testbed.extra_channels())
]


@pytest.mark.parametrize("channel", ALL_CHANNELS)
@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_passphrase_unlocks_root(
    flavour: Flavour, channel: Channel, booted_guest: BootedGuest
) -> None:
    _, result = booted_guest(flavour, channel)
    assert result.root_source == testbed.ROOT_DATASET
    assert len(result.timings.prompts) == 1
    # Nobody typed tank's key, so its dataset must still be locked.
    assert not result.data_mounted


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_data_key_loaded_by_hand(flavour: Flavour, booted_guest: BootedGuest) -> None:
    """Reuses the passphrase boot: root autologin, then the data key typed by hand."""
    guest, result = booted_guest(flavour, DEFAULT)
    assert not result.data_mounted
    guest.login()
    guest.load_data_key(guest.image.data_key())
    mounted = guest.check(f"zfs get -H -o value mounted {testbed.DATA_DATASET}")
    assert mounted.strip().splitlines()[-1].strip() == "yes"
    canary = guest.check(f"cat {testbed.DATA_MOUNTPOINT}/canary")
    assert "zkv-e2e canary" in canary


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_wrong_then_right_passphrase(
    flavour: Flavour, images: ImageGetter, guest_factory: GuestFactory
) -> None:
    image = images(flavour, DEFAULT)
    guest = guest_factory(image)
    result = guest.boot(answers=["not-the-passphrase", testbed.ROOT_PASSPHRASE])
    record_boot(image, "wrong-then-right", result)
    assert result.root_source == testbed.ROOT_DATASET
    assert len(result.timings.prompts) == 2
