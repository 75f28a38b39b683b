"""zkv with the pools on LUKS (issue 18), both flavours: tests/vm/luks_layout.py's guest.

rpool sits on a LUKS2 partition (rpool/ROOT/debian has no native encryption), ``files`` is a
RAID-Z2 pool over six LUKS2 sparse files on the root file system, ``nest`` a pool on a LUKS2
zvol of tank (nest/secure natively encrypted), tank/secure as in the ZFS layout. One approval
(or the recovery passphrase) opens them all. Three boots per flavour:

- approved: no cryptsetup and no ZFS prompt; every pool imported and its canary readable;
  the root's vdev is the LUKS mapping; the file pool is imported (zfs-import-scan, after
  zkv-open-devices opened the files) and nest imported by zkv-load-keys, both before
  zfs-mount; no unit failed; no key material left in /run;
- gateway down: the recovery passphrase at zkv's prompt opens everything;
- faulty keystore (a wrong key for the zvol, a seventh file that does not exist): one console
  line for each, everything else opens, zkv-load-keys.service fails visibly, and the stock
  cryptsetup prompt then opens the zvol and OpenZFS's prompt takes nest/secure's key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import record_outcome
from tests.vm import luks_layout, testbed, zkv_image
from tests.vm.driver import Guest
from tests.vm.luks_layout import CANARIES, ROOT_UUID
from tests.vm.testbed import Channel, Flavour
from tests.vm.zkv_boot import facts, gateway, no_leftovers, run_boot, unreachable_port
from tests.vm.zkv_image import RECOVERY_PASSPHRASE, ZkvImage
from zkv.keyload.luks import mapping_name

pytestmark = pytest.mark.e2e

CHANNEL: Channel = testbed.default_channel()
GuestFactory = Callable[..., Guest]
# What systemd-cryptsetup, cryptsetup itself and initramfs-tools' cryptroot ask with.
_CRYPT_PROMPTS = ("Please enter passphrase for disk", "Enter passphrase for", "Please unlock disk")
_UNITS = ("zkv-open-devices", "zfs-import-scan", "zkv-load-keys", "zfs-mount")


@pytest.fixture(scope="session")
def luks_images(prerequisites: None) -> Callable[..., ZkvImage]:
    built: dict[tuple[Flavour, bool], ZkvImage] = {}

    def get(flavour: Flavour, faulty: bool = False) -> ZkvImage:
        if (flavour, faulty) not in built:
            built[flavour, faulty] = zkv_image.build(flavour, CHANNEL, layout="luks", faulty=faulty)
        return built[flavour, faulty]

    return get


def _pool_facts(guest: Guest) -> dict[str, str]:
    commands = {
        "root_vdev": "zpool status -P rpool | awk '$1 ~ /^\\/dev\\// {print $1}'",
        "root_crypt": f"cryptsetup status luks-{ROOT_UUID} | awk '$1 == \"type:\" {{print $2}}'",
        "root_encryption": f"zfs get -H -o value encryption {testbed.ROOT_DATASET}",
        "files_vdevs": "zpool status -P files | grep -c '/dev/mapper/zkv-'",
        "files_layout": "zpool status files | awk '$1 ~ /^raidz2/ {print $1}'",
        "nest_vdev": "zpool status -P nest | awk '$1 ~ /^\\/dev\\// {print $1}'",
        "failed": "systemctl --failed --no-legend --plain | awk '{print $1}'",
        # For the log: whether udev made the zvol's link (zkv does not need it: zkv/zvol.py).
        "zvol_link": f"readlink -e {luks_layout.ZVOL} || echo missing",
    }
    for index, (point, dataset) in enumerate(CANARIES.items()):
        commands[f"mount{index}"] = f"findmnt -n -o SOURCE {point}"
        commands[f"canary{index}"] = f"cat {point}/canary"
        commands[f"dataset{index}"] = f"echo {dataset}"
    for unit in _UNITS:
        name = unit.replace("-", "_")
        props = "-P ExecMainStartTimestampMonotonic -P ExecMainExitTimestampMonotonic"
        commands[f"t_{name}"] = f"systemctl show {props} {unit}.service"
    return facts(guest, commands)


def _times(found: dict[str, str], unit: str) -> tuple[int, int]:
    """(start, exit) of a unit's main process in µs since boot; (0, 0) if it never ran."""
    values = found[f"t_{unit.replace('-', '_')}"].split()
    start, end = (int(v) for v in values) if len(values) == 2 else (0, 0)
    return start, end


def _assert_everything_open(found: dict[str, str]) -> None:
    assert found["root_vdev"] == f"/dev/mapper/luks-{ROOT_UUID}", found
    assert found["root_crypt"] == "LUKS2", found
    assert found["root_encryption"] == "off", found
    assert found["files_vdevs"] == str(luks_layout.FILES), found
    assert found["files_layout"].startswith("raidz2"), found
    mapping = "/dev/mapper/" + mapping_name(luks_layout.ZVOL_TARGET)
    assert found["nest_vdev"] == mapping, found
    for index in range(len(CANARIES)):
        assert found[f"mount{index}"] == found[f"dataset{index}"], found
        assert "canary" in found[f"canary{index}"], found
    # The file pool's devices were open before the import, nest imported and its key loaded
    # before zfs-mount mounted them.
    _, opened = _times(found, "zkv-open-devices")
    scan_start, scan_end = _times(found, "zfs-import-scan")
    _, loaded = _times(found, "zkv-load-keys")
    mount_start, _ = _times(found, "zfs-mount")
    assert 0 < opened <= scan_start < scan_end <= mount_start, found
    assert 0 < loaded <= mount_start, found


def _crypt_prompts(guest: Guest) -> list[str]:
    text = guest.console_log_path.read_text(errors="replace")
    return [p for p in _CRYPT_PROMPTS if p in text]


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_approved_boot_opens_the_luks_root_the_file_pool_and_the_zvol_pool(
    flavour: Flavour,
    luks_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    zimg = luks_images(flavour)
    with gateway(zimg, tmp_path) as gw:
        guest = guest_factory(zimg.image, gw.guest_port)
        out = run_boot(guest, on_pin=gw.approve_pin)
        assert gw.last_unlock_state() == "approved"
    record_outcome(zimg.image, "zkv-luks-approved", out)
    assert out.root == testbed.ROOT_DATASET, out.events
    assert out.stock_prompts == [] and out.recovery_prompts_answered == [], out.events
    assert _crypt_prompts(guest) == []
    assert out.data_mounted, out.events
    left = no_leftovers(guest, zimg, luks_layout.secrets(zimg.base.data_key()))
    found = _pool_facts(guest)
    _assert_everything_open(found)
    assert found["failed"] == "", found
    assert left["run_zkv"] == "0", left
    assert left["secrets_in_run"] == "0", left
    assert "Result=success" in left["handover_unit"], left


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_gateway_down_the_recovery_passphrase_opens_every_device(
    flavour: Flavour,
    luks_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
) -> None:
    zimg = luks_images(flavour)
    with unreachable_port() as port:
        guest = guest_factory(zimg.image, port)
        out = run_boot(guest, recovery=RECOVERY_PASSPHRASE, answer_after_gateway_gave_up=False)
    record_outcome(zimg.image, "zkv-luks-gateway-down", out)
    assert out.pin is None and out.recovery_prompts_answered, out.events
    assert out.stock_prompts == [] and _crypt_prompts(guest) == [], out.events
    assert out.root == testbed.ROOT_DATASET and out.data_mounted, out.events
    guest.login()
    found = _pool_facts(guest)
    _assert_everything_open(found)
    assert found["failed"] == "", found


_CRYPTSETUP_PROMPT = re.compile(r"Enter passphrase for \S*vol\S*:")
_NEST_PROMPT = re.compile(rf"Enter hex key for '{re.escape(luks_layout.NEST_DATASET)}':")


@pytest.mark.parametrize("flavour", testbed.FLAVOURS)
def test_a_wrong_and_a_missing_device_cost_one_line_each_and_the_stock_prompts_still_work(
    flavour: Flavour,
    luks_images: Callable[..., ZkvImage],
    guest_factory: GuestFactory,
    tmp_path: Path,
) -> None:
    zimg = luks_images(flavour, faulty=True)
    with gateway(zimg, tmp_path) as gw:
        guest = guest_factory(zimg.image, gw.guest_port)
        out = run_boot(guest, on_pin=gw.approve_pin)
        assert gw.last_unlock_state() == "approved"
    record_outcome(zimg.image, "zkv-luks-faulty", out)
    assert out.root == testbed.ROOT_DATASET and out.data_mounted, out.events
    assert out.stock_prompts == [] and _crypt_prompts(guest) == [], out.events
    guest.login()
    console = guest.console_log_path.read_text(errors="replace").splitlines()
    missing = [ln for ln in console if luks_layout.MISSING_TARGET in ln]
    wrong = [ln for ln in console if luks_layout.ZVOL_TARGET in ln and "reject" in ln]
    assert missing and wrong, "no console line names the missing file or the wrong zvol key"
    found = _pool_facts(guest)
    assert found["files_vdevs"] == str(luks_layout.FILES), found
    assert found["root_vdev"] == f"/dev/mapper/luks-{ROOT_UUID}", found
    assert "zkv-load-keys.service" in found["failed"].split(), found
    # The stock prompts: cryptsetup opens the zvol, OpenZFS takes nest/secure's key. They
    # need udev's link, which a loaded TCG guest once never got (zvol_id killed, it seems):
    # then udev's journal goes to the log, and the zd devices are triggered again.
    guest.check(
        f"[ -e {luks_layout.ZVOL} ] || {{ journalctl -b -u systemd-udevd --no-pager | tail -n 30;"
        " udevadm trigger --action=change --sysname-match='zd*' && udevadm settle -t 120; }",
        timeout=300,
    )
    zvol_key, nest_key = luks_layout.key_of("zvol"), luks_layout.key_of("nest")
    opened = guest.answer(
        f"cryptsetup open {luks_layout.ZVOL} nestvol", _CRYPTSETUP_PROMPT, zvol_key
    )
    assert opened == 0
    guest.check("zpool import -N -d /dev/mapper/nestvol nest", timeout=180)
    assert guest.answer(f"zfs load-key {luks_layout.NEST_DATASET}", _NEST_PROMPT, nest_key) == 0
    guest.check(f"zfs mount {luks_layout.NEST_DATASET} && cat /srv/nest/canary")
