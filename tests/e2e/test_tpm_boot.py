"""A host key held by a TPM, in the VM: swtpm attached to the guest as a tpm-tis device.

The image's host key was made inside a software TPM by the code `zkv enroll --tpm` runs
(tests/vm/guest_tpm.py), and the gateway enrolled it with that TPM's evidence: its EK
certificate and a TPM2_Certify of the key (tests/harness/tpm_enrol.py). Per flavour, one guest:

1. With its own TPM attached, the client signs through /dev/tpmrm0; the owner sees "key held
   by TPM: yes" in the message and on the page, approves with her passkey, everything unlocks.
2. The same disk (what the first boot left on it) with a fresh TPM, genuine and certified by
   the same CA, as a thief who copied the disk would boot it: the client says at once that the
   host key is not in this TPM and sends nothing, so the gateway has no request to accept; the
   recovery passphrase boots.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import record_outcome
from tests.harness.swtpm import manufacture
from tests.vm import guest_tpm, testbed, zkv_image
from tests.vm.driver import Guest
from tests.vm.testbed import Channel, Flavour
from tests.vm.zkv_boot import gateway, keep_tank_in_the_cache_file, run_boot
from tests.vm.zkv_image import RECOVERY_PASSPHRASE, ZkvImage

pytestmark = pytest.mark.e2e

CHANNEL: Channel = testbed.default_channel()
NOT_IN_THIS_TPM = "the host key is not in this TPM"


@pytest.fixture(scope="session")
def tpm_images(prerequisites: None) -> Callable[[Flavour], ZkvImage]:
    return lambda flavour: zkv_image.build(flavour, CHANNEL, tpm=True)


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_a_tpm_held_key_unlocks_and_a_copied_disk_cannot_ask(
    flavour: Flavour, tpm_images: Callable[[Flavour], ZkvImage], tmp_path: Path
) -> None:
    zimg = tpm_images(flavour)
    assert zimg.tpm_state is not None
    ca = zimg.tpm_state.parent / "ca"
    own = guest_tpm.copy_state(zimg.tpm_state, tmp_path / "own" / "state")
    log = testbed.cache_dir() / "logs" / f"tpm-{flavour}.log"
    with contextlib.ExitStack() as stack:
        with guest_tpm.serving(own, ca) as chip:  # the host enrols through its TPM
            gw = stack.enter_context(gateway(zimg, tmp_path, policy="page", tpm=chip))
        devices = stack.enter_context(guest_tpm.attached(own))
        guest = stack.enter_context(
            Guest(zimg.image, host_port=gw.guest_port, console_log=log, devices=devices)
        )

        out = run_boot(guest, on_pin=gw.approve_on_page)
        record_outcome(zimg.image, "zkv-tpm-approved", out)
        assert gw.last_unlock_state() == "approved", out.events
        assert gw.page.get("key_in_tpm") == "yes", gw.page
        assert any("Key held by TPM: yes" in text for text in gw.gw.notifications())
        assert out.root == testbed.ROOT_DATASET and out.data_mounted, out.events
        assert out.stock_prompts == [], out.events
        requests = len(gw.requests())
        guest.login()
        keep_tank_in_the_cache_file(guest)

        # The copied disk: a fresh TPM, from the same trusted CA (a copy of it: manufacturing
        # a TPM changes the CA's serial file, and the cached one must stay as it is).
        guest.power_off()
        thief_ca = shutil.copytree(ca, tmp_path / "thief-ca")
        fresh = tmp_path / "fresh" / "state"
        manufacture(fresh, thief_ca)
        guest.devices = tuple(stack.enter_context(guest_tpm.attached(fresh)))
        guest.boot_again()
        copied = run_boot(guest, recovery=RECOVERY_PASSPHRASE)
        record_outcome(zimg.image, "zkv-tpm-copied-disk", copied)
        assert copied.gateway_gave_up is not None, copied.events
        assert NOT_IN_THIS_TPM in copied.gateway_gave_up, copied.events
        assert copied.recovery_prompts_answered, copied.events
        assert copied.root == testbed.ROOT_DATASET and copied.data_mounted, copied.events
        assert len(gw.requests()) == requests, "the copied disk's boot reached the gateway"
