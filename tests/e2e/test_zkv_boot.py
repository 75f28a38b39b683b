"""zkv in the VM: the boot client in the initrd against the real gateway on the host's loopback.

The guest reaches the gateway as https://10.0.2.100/ (QEMU guestfwd -> TLS front -> gunicorn on
127.0.0.1). The gateway runs the twilio approver: it texts the owner through the local Twilio API
stand-in (the real twilio SDK). The approved boot runs the page policy: the owner's passkey
(a virtual authenticator in headless chromium) approves through the link in her message, after
the test checked the page's request code against the guest console's. The other scenarios run
the sms-pin policy: the test replies as the owner with a correctly signed inbound-SMS webhook
(`PIN` approves, `NO PIN` denies), the PIN read off the guest console.

Five boots per flavour: approved (then the leftover checks in the same boot, then `zkv reboot
--approve-ahead` approved on the page and the boot of that planned reboot, which does not wait:
one more boot of the same disk), gateway down
(recovery passphrase at zkv's prompt), denied (zkv announces it, its prompt takes the recovery
passphrase), and a released key that does not open the keystore (zkv gives up after the short
`[timeouts] fallback` of the e2e early.conf, OpenZFS's own prompt takes the root passphrase).
One more on initramfs-tools: a host past its dead-man window is refused, the passphrase boots.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import record_outcome
from tests.vm import testbed, zkv_image
from tests.vm.driver import Guest
from tests.vm.testbed import Channel, Flavour
from tests.vm.zkv_boot import (
    Gateway,
    gateway,
    keep_tank_in_the_cache_file,
    no_leftovers,
    run_boot,
    unreachable_port,
)
from tests.vm.zkv_image import RECOVERY_PASSPHRASE, ZkvImage

pytestmark = pytest.mark.e2e

CHANNEL: Channel = testbed.default_channel()
AHEAD_CODE = re.compile(r"request code (\d{4,12})\. They approve")  # zkv reboot's own line
AHEAD_APPROVED = re.compile(r"approved ahead: the next boot of")
GuestFactory = Callable[..., Guest]


@pytest.fixture(scope="session")
def zkv_images(prerequisites: None) -> Callable[..., ZkvImage]:
    built: dict[tuple[Flavour, Channel], ZkvImage] = {}

    def get(flavour: Flavour, channel: Channel = CHANNEL) -> ZkvImage:
        if (flavour, channel) not in built:
            built[flavour, channel] = zkv_image.build(flavour, channel)
        return built[flavour, channel]

    return get


def _reboot_approved_ahead(guest: Guest, gw: Gateway, zimg: ZkvImage) -> dict[str, str]:
    """`zkv reboot --approve-ahead` on the running guest (its network up, the host key given
    to it through a pipe of the console), the owner's passkey approves it on the page, the guest
    reboots; returns what the page showed. QEMU runs with -no-reboot: boot_again starts the
    next boot on the same disk."""
    key = base64.b64encode(zimg.host_key.read_bytes()).decode()
    keep_tank_in_the_cache_file(guest)
    guest.check(
        "ip link set enp0s1 up && dhclient -1 -4 enp0s1 && install -d -m 0700 /root/zkv"
        f" && (umask 077; echo {key} | base64 -d > /root/zkv/host.key)",
        timeout=180,
    )
    guest.child.sendline("zkv reboot --keystore /root/zkv/keystore --approve-ahead --within 30m")
    guest._expect([AHEAD_CODE], time.monotonic() + 120, "zkv reboot's request code")
    gw.approve_on_page(guest.child.match.group(1))
    guest._expect([AHEAD_APPROVED], time.monotonic() + 120, "zkv reboot to be approved")
    guest.boot_again(timeout=300)
    return gw.page


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_approved_boot_unlocks_everything_and_leaves_nothing(
    flavour: Flavour,
    zkv_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    zimg = zkv_images(flavour)
    with gateway(zimg, tmp_path, policy="page") as gw:
        guest = guest_factory(zimg.image, gw.guest_port)
        out = run_boot(guest, on_pin=gw.approve_on_page)
        record_outcome(zimg.image, "zkv-approved", out)
        assert gw.last_unlock_state() == "approved"
        # The console shows a request code (it approves nothing) and where to approve; the
        # page shows the same code, and the boot's flags as the client reported them.
        assert out.code_kind == "request code" and out.pin is not None, out.events
        assert out.boot_flags == "none", out.events
        assert gw.page["code"] == out.pin, gw.page
        assert gw.page["boot_flags"] == "none", gw.page
        assert gw.page["status"].startswith("Approved"), gw.page
        assert any("alice with passkey" in line for line in gw.gw.audit()), "no passkey vote"
        assert out.root == testbed.ROOT_DATASET
        assert out.stock_prompts == []
        assert out.data_mounted, "tank/secure's key should have come from the keystore"
        left = no_leftovers(guest, zimg)
        # For the console log: where zkv-load-keys.service spent its time (docs/boot-integration.md)
        guest.shell(
            "systemd-analyze critical-chain zkv-load-keys.service | cat;"
            " journalctl -b -o short-monotonic --no-pager -u zkv-load-keys.service"
        )
        # The same disk, a planned reboot: approved ahead on the page, its boot does not wait.
        ahead, told = _reboot_approved_ahead(guest, gw, zimg), len(gw.gw.notifications())
        again = run_boot(guest)
        record_outcome(zimg.image, "zkv-approved-ahead", again)
        states = [row[2] for row in gw.requests() if len(row) >= 3 and row[1] == "unlock"]
        audit = gw.gw.audit()
    assert ahead["within"] == "30 min" and ahead["status"].startswith("Approved"), ahead
    assert "approved ahead of this planned reboot" in guest.console_log_path.read_text()
    assert states == ["approved", "approved"], states  # the second one by the approval ahead
    assert any("ahead_used" in line for line in audit), "the approval ahead was not used"
    assert len(gw.gw.notifications()) == told, "the boot approved ahead told the owner again"
    assert again.root == testbed.ROOT_DATASET and again.data_mounted, again.events
    assert again.stock_prompts == [] and again.recovery_prompts_answered == [], again.events
    assert left["run_zkv"] == "0", left
    assert left["secrets_in_run"] == "0", left
    assert left["global_addresses"] == "0", left
    assert left["net_conf"] == "0", left
    assert left["dhclient"] == "0", left
    assert "Result=success" in left["handover_unit"], left


@pytest.mark.parametrize("channel", testbed.extra_channels())
@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_approved_boot_on_the_other_openzfs(
    flavour: Flavour,
    channel: Channel,
    zkv_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    """One approved boot on the other channel's OpenZFS (2.1.11 by default): its hooks differ
    (initramfs-tools: local-top + POOL_IMPORTED instead of the load-key.d drop-in).
    `ZKV_ZFS_CHANNEL=bookworm` runs every scenario there."""
    zimg = zkv_images(flavour, channel)
    with gateway(zimg, tmp_path) as gw:
        guest = guest_factory(zimg.image, gw.guest_port)
        out = run_boot(guest, on_pin=gw.approve_pin)
        assert gw.last_unlock_state() == "approved"
    record_outcome(zimg.image, "zkv-approved", out)
    assert out.root == testbed.ROOT_DATASET
    assert out.stock_prompts == []
    assert out.data_mounted


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_gateway_down_recovery_passphrase_boots(
    flavour: Flavour,
    zkv_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
) -> None:
    zimg = zkv_images(flavour)
    with unreachable_port() as port:
        guest = guest_factory(zimg.image, port)
        # The prompt races the gateway: answer it at once, as a person at the console would.
        out = run_boot(guest, recovery=RECOVERY_PASSPHRASE, answer_after_gateway_gave_up=False)
    record_outcome(zimg.image, "zkv-gateway-down", out)
    assert out.pin is None
    assert out.recovery_prompts_answered
    assert out.stock_prompts == []
    assert out.root == testbed.ROOT_DATASET
    assert out.data_mounted


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_denied_falls_back_to_a_prompt(
    flavour: Flavour,
    zkv_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    zimg = zkv_images(flavour)
    with gateway(zimg, tmp_path) as gw:
        guest = guest_factory(zimg.image, gw.guest_port)
        # The recovery passphrase is typed only once the client said the owner denied.
        out = run_boot(guest, on_pin=gw.deny_pin, recovery=RECOVERY_PASSPHRASE)
        assert gw.last_unlock_state() == "denied"
    record_outcome(zimg.image, "zkv-denied", out)
    assert out.gateway_gave_up is not None and "denied" in out.gateway_gave_up, out.events
    assert out.recovery_prompts_answered
    assert out.stock_prompts == []
    assert out.root == testbed.ROOT_DATASET
    assert out.data_mounted, "the recovery passphrase opens the keystore: tank too"


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_released_key_that_does_not_open_the_keystore_falls_back(
    flavour: Flavour,
    zkv_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    zimg = zkv_images(flavour)
    with gateway(zimg, tmp_path, secret=secrets.token_hex(32)) as gw:
        guest = guest_factory(zimg.image, gw.guest_port)
        # Nobody types at zkv's prompt: after [timeouts] fallback the client exits and
        # OpenZFS's own prompt takes the dataset passphrase.
        out = run_boot(guest, on_pin=gw.approve_pin, stock=testbed.ROOT_PASSPHRASE)
    record_outcome(zimg.image, "zkv-wrong-key", out)
    assert out.gateway_gave_up is not None, out.events
    assert "does not open the keystore" in out.gateway_gave_up, out.events
    assert out.recovery_prompts_answered == []
    assert len(out.stock_prompts) == 1
    assert out.root == testbed.ROOT_DATASET


def test_host_past_its_deadman_window_is_refused_and_the_passphrase_boots(
    zkv_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    """The dead-man switch (docs/gateway.md): the enrolled host sent no heartbeat within its
    window, so the gateway refuses its unlock (uniform 401, no SMS); the console says so and
    the recovery passphrase still boots. One flavour is enough: the gateway decides."""
    zimg = zkv_images("initramfs-tools")
    with gateway(zimg, tmp_path) as gw:
        gw.gw.cli("hosts", "deadman", zimg.host_id, "--window", "1s")
        time.sleep(2)  # silent past its window before the guest even starts
        guest = guest_factory(zimg.image, gw.guest_port)
        out = run_boot(guest, recovery=RECOVERY_PASSPHRASE)
        listing = gw.gw.cli("hosts", "list").stdout
        refusals = [line for line in gw.gw.audit() if "auth_failed" in line]
        texts = gw.gw.notifications()
    record_outcome(zimg.image, "zkv-deadman-suspended", out)
    assert f"{zimg.host_id}  suspended" in listing, listing
    assert any("host is suspended" in line for line in refusals), refusals
    assert gw.last_unlock_state() == ""  # refused before any request existed
    assert not any("asks to unlock" in text for text in texts), texts
    assert [t for t in texts if "no heartbeat" in t], texts  # the owner is told, once
    assert out.pin is None
    assert out.gateway_gave_up is not None and "refused" in out.gateway_gave_up, out.events
    assert out.recovery_prompts_answered
    assert out.stock_prompts == []
    assert out.root == testbed.ROOT_DATASET
    assert out.data_mounted, "the recovery passphrase opens the keystore: tank too"
