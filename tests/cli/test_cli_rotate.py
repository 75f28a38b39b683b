"""``zkv rotate`` and ``zkv reconcile`` against the recording fake zfs.

The power is cut (SIGKILL from the fake, tests/fakes/zfs) at every call the rotation makes,
before it and after it. Each time the next boot (the boot image's keystore, through the same
loader as the boot client) unlocks, and ``zkv reconcile`` leaves a keystore with the one key
ZFS accepts and an epoch property that names that key's epoch.
"""

from __future__ import annotations

import fcntl
import re
import shutil

import pytest

from tests.cli.conftest import PASS_D, PASSPHRASE, Zkv, secrets_in
from tests.fakes.fakezfs import BINARY
from zkv import keystore
from zkv.keyload import Outcome, load_entries
from zkv.zfs import Zfs
from zkv_admin import bootimage, cli, repokey

DS = "tank/d"
# A clean rotation of DS from epoch 1, call by call (what the crash points below walk).
STEPS = [
    "get",  # require_encryption_root: the key is loaded
    "get",  # finish(): zkv:epoch, :pending, :time set on DS itself
    "get",  # load_key checks the encryption root
    "load-key -n",  # the keystore's key still opens DS
    "update-initramfs",  # keystore [old@1, new@2] goes into every boot image
    "set",  # zkv:epoch:pending=2
    "get",  # change_key checks the encryption root
    "change-key",
    "get",  # finish()
    "get",
    "load-key -n",  # the new key (newest first) opens DS: epoch 2 won
    "set",  # zkv:epoch=2 zkv:epoch:time=... in one transaction
    "inherit",  # zkv:epoch:pending cleared
    "get",  # the keyformat zfs now has
    "update-initramfs",  # keystore [new@2] in every boot image
]
# "After call n" is the state "before call n+1" unless zkv writes the keystore in between
# (before each update-initramfs), or n is the last call. These are all distinct crash points.
_WRITES_NEXT = {n for n in range(1, len(STEPS)) if STEPS[n] == "update-initramfs"}
CRASHES = [(n, "before") for n in range(1, len(STEPS) + 1)] + [
    (n, "after") for n in sorted(_WRITES_NEXT | {len(STEPS)})
]


def prepare(zkv: Zkv) -> None:
    """DS at epoch 1, key loaded, and a boot image built from the keystore."""
    repository_key = keystore.new_repository_key()
    store = keystore.create(repository_key, PASSPHRASE, keystore.WEAK_KDF)
    store.put(keystore.Entry(DS, "passphrase"), PASS_D, epoch=1)
    zkv.keystore.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keystore.write(zkv.keystore, store)
    zkv.fake.image_keystore().parent.mkdir()
    shutil.copyfile(zkv.keystore, zkv.fake.image_keystore())
    state = zkv.fake.state()
    state["datasets"][DS].update(keystatus="available", props={"zkv:epoch": "1"})
    zkv.fake.write(state)


def props(zkv: Zkv) -> dict[str, str]:
    return dict(zkv.fake.state()["datasets"][DS].get("props", {}))


def boot(zkv: Zkv) -> None:
    """Unlock from the boot image's keystore with the boot client's loader: newest key first."""
    image = keystore.read(zkv.fake.image_keystore()).open_with_passphrase(PASSPHRASE)
    before = len(zkv.fake.calls())
    (entry,) = load_entries(image, Zfs(binary=str(BINARY))).results
    assert entry.outcome is Outcome.LOADED, entry
    tried = [data for argv, data in zkv.fake.calls()[before:] if argv[0] == "load-key"]
    newest_first = [k + b"\n" for k in reversed(image.candidates(DS))]
    assert tried == newest_first[: len(tried)] and entry.candidate == len(newest_first) - len(tried)


def reconcile(zkv: Zkv, monkeypatch: pytest.MonkeyPatch) -> None:
    """``zkv reconcile``, in this process (the CLI's own entry point) to keep the test quick."""
    for name, value in zkv.env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["reconcile", "--recovery-passphrase-file", str(zkv.passphrase_file)]) == 0


def test_clean_rotation_order_epoch_and_time(zkv: Zkv) -> None:
    prepare(zkv)
    zkv.with_pass("rotate", DS)
    assert zkv.fake.steps() == STEPS
    new = zkv.fake.key(DS)
    store = zkv.open()
    assert store.candidates(DS) == [new] and store.epochs(DS) == [2]
    got = props(zkv)
    assert got["zkv:epoch"] == "2" and "zkv:epoch:pending" not in got
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got["zkv:epoch:time"])
    assert zkv.fake.image_keystore().read_bytes() == zkv.keystore.read_bytes()
    secrets_in(zkv.fake)(new)
    change = next(data for argv, data in zkv.fake.calls() if argv[0] == "change-key")
    assert change == new + b"\n"  # on stdin, the only way in
    zkv.with_pass("rotate", DS)
    assert zkv.open().epochs(DS) == [3] and props(zkv)["zkv:epoch"] == "3"


@pytest.mark.parametrize(
    ("call", "when"), CRASHES, ids=[f"{w}-{n}-{STEPS[n - 1]}" for n, w in CRASHES]
)
def test_power_cut_at_every_call_boots_and_reconciles(
    zkv: Zkv, monkeypatch: pytest.MonkeyPatch, call: int, when: str
) -> None:
    prepare(zkv)
    zkv.fake.set(crash={"call": call, "when": when})
    assert zkv.with_pass("rotate", DS).code == -9  # killed there
    zkv.fake.reboot()
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(zkv.fake.state_dir))
    boot(zkv)
    in_zfs = zkv.fake.key(DS)
    reconcile(zkv, monkeypatch)
    store = zkv.open()
    epoch = 1 if in_zfs == PASS_D else 2
    assert store.candidates(DS) == [in_zfs] and store.epochs(DS) == [epoch]
    got = props(zkv)
    assert got["zkv:epoch"] == str(epoch) and "zkv:epoch:pending" not in got
    # Every image is rebuilt from the settled keystore, even after a cut between the last
    # keystore write and the last rebuild (one key left, nothing else says the images are behind).
    assert zkv.fake.image_keystore().read_bytes() == zkv.keystore.read_bytes()
    assert not bootimage.stale_marker(zkv.keystore).exists()


def test_a_cut_before_the_last_rebuild_leaves_a_marker_that_reconcile_clears(
    zkv: Zkv, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare(zkv)
    zkv.fake.set(crash={"call": len(STEPS), "when": "before"})
    assert zkv.with_pass("rotate", DS).code == -9
    assert bootimage.stale_marker(zkv.keystore).exists()
    image = keystore.read(zkv.fake.image_keystore()).open_with_passphrase(PASSPHRASE)
    assert len(image.candidates(DS)) == 2 and zkv.open().candidates(DS) == [zkv.fake.key(DS)]
    zkv.fake.reboot()
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(zkv.fake.state_dir))
    before = len(zkv.fake.steps())
    reconcile(zkv, monkeypatch)
    assert zkv.fake.steps()[before:].count("update-initramfs") == 1
    assert zkv.fake.image_keystore().read_bytes() == zkv.keystore.read_bytes()
    assert not bootimage.stale_marker(zkv.keystore).exists()
    before = len(zkv.fake.steps())
    reconcile(zkv, monkeypatch)  # nothing left to do: no rebuild
    assert "update-initramfs" not in zkv.fake.steps()[before:]


def test_rotate_after_a_crash_settles_first(zkv: Zkv) -> None:
    prepare(zkv)
    zkv.fake.set(crash={"call": STEPS.index("change-key") + 1, "when": "after"})
    assert zkv.with_pass("rotate", DS).code == -9
    zkv.fake.reboot()
    state = zkv.fake.state()
    state["datasets"][DS]["keystatus"] = "available"
    zkv.fake.write(state)
    result = zkv.with_pass("rotate", DS)
    assert result.code == 0 and "settling the rotation a crash interrupted" in result.stderr
    assert zkv.open().epochs(DS) == [3] and props(zkv)["zkv:epoch"] == "3"
    assert zkv.open().candidates(DS) == [zkv.fake.key(DS)]


@pytest.mark.parametrize(
    "name", ["Zkv:epoch", "noColon", "-o", "zkv:epoch=1", "zkv:ep och", "a:" + "b" * 250]
)
def test_bad_property_names_are_refused_before_zfs(zkv: Zkv, name: str) -> None:
    prepare(zkv)
    result = zkv.with_pass("rotate", DS, f"--epoch-property={name}")
    assert result.code == 4 and "user property" in result.error_line
    assert [s for s in zkv.fake.steps() if s != "get"] == []


def test_foreign_property_value_stops_the_rotation(zkv: Zkv) -> None:
    prepare(zkv)
    state = zkv.fake.state()
    state["datasets"][DS]["props"] = {"zkv:epoch": "x; rm -rf"}
    zkv.fake.write(state)
    result = zkv.with_pass("rotate", DS)
    assert result.code == 57 and "not an epoch" in result.error_line
    assert zkv.fake.key(DS) == PASS_D and "change-key" not in zkv.fake.steps()


def test_boot_image_failure_stops_before_change_key(zkv: Zkv) -> None:
    prepare(zkv)
    zkv.fake.set(fail_boot_image=True)
    result = zkv.with_pass("rotate", DS)
    assert result.code == 56 and "boot image" in result.error_line
    assert zkv.fake.key(DS) == PASS_D and "change-key" not in zkv.fake.steps()
    zkv.fake.set(fail_boot_image=False)
    zkv.ok("reconcile", "--recovery-passphrase-file", str(zkv.passphrase_file))
    assert zkv.open().candidates(DS) == [PASS_D]


def test_rotate_needs_an_entry(zkv: Zkv) -> None:
    zkv.make_store()
    result = zkv.with_pass("rotate", DS)
    assert result.code == 16 and DS in result.error_line


def test_one_rotation_at_a_time(zkv: Zkv) -> None:
    prepare(zkv)
    lock = zkv.keystore.with_name(f".{zkv.keystore.name}.rotate-lock")
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = zkv.with_pass("rotate", DS)
    assert result.code == 58 and "another 'zkv rotate'" in result.error_line
    assert zkv.fake.steps() == [] and zkv.fake.key(DS) == PASS_D


# The named crash points the VM test cuts the power at: how many calls ran before each.
NAMED = {
    "staged": STEPS.index("update-initramfs"),
    "rebuilt": STEPS.index("update-initramfs") + 1,
    "begun": STEPS.index("set") + 1,
    "changed": STEPS.index("change-key") + 1,
    "settled": STEPS.index("inherit") + 1,
    "committed": len(STEPS) - 1,
}


@pytest.mark.parametrize("step", list(NAMED))
def test_named_crash_point_stops_there_and_reconciles(
    zkv: Zkv, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    prepare(zkv)
    zkv.extra_env[repokey.CRASH_ENV] = step
    result = zkv.with_pass("rotate", DS)
    del zkv.extra_env[repokey.CRASH_ENV]
    assert result.code == -9 and f"{repokey.CRASH_MARKER} {step}\n" in result.stderr
    assert zkv.fake.steps() == STEPS[: NAMED[step]]
    zkv.fake.reboot()
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(zkv.fake.state_dir))
    boot(zkv)
    reconcile(zkv, monkeypatch)
    epoch = 1 if zkv.fake.key(DS) == PASS_D else 2
    assert epoch == (2 if NAMED[step] > STEPS.index("change-key") else 1)
    assert zkv.open().epochs(DS) == [epoch] and props(zkv)["zkv:epoch"] == str(epoch)
