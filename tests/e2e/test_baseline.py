"""Baseline: OpenZFS's own passphrase prompt unlocks the encrypted root, for both initrds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import record_boot
from tests.vm import testbed
from tests.vm.driver import Guest
from tests.vm.testbed import Channel, Flavour, Image

pytestmark = pytest.mark.e2e

ImageGetter = Callable[[Flavour, Channel], Image]
GuestFactory = Callable[[Image], Guest]

DEFAULT = testbed.default_channel()
ALL_CHANNELS = [
    pytest.param(channel, id=channel) for channel in (DEFAULT, *testbed.extra_channels())
]


# One guest per test, closed when the test ends: a guest left running after its boot marker
# goes on booting its real root, and beside the next test's guest that starves both (a shared
# booted guest per flavour and channel once kept five TCG guests busy at once on two cores).
@pytest.mark.parametrize("channel", ALL_CHANNELS)
@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_passphrase_unlocks_root_and_the_data_key_by_hand(
    flavour: Flavour, channel: Channel, images: ImageGetter, guest_factory: GuestFactory
) -> None:
    image = images(flavour, channel)
    guest = guest_factory(image)
    result = guest.boot()
    record_boot(image, "passphrase", result)
    assert result.root_source == testbed.ROOT_DATASET
    assert len(result.timings.prompts) == 1
    # Nobody typed tank's key, so its dataset must still be locked.
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
