"""``zkv rotate`` of a LUKS entry, power cut at every cryptsetup call (the recording fake,
tests/fakes/crypt; the real tools: test_cli_luks.py). Whatever call it dies in, the keystore on
disk and the boot image hold a key the device takes, and ``zkv reconcile`` leaves exactly one
key in the keystore and one keyslot of zkv's on the device."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import PASSPHRASE, Zkv
from tests.fakes.fakecrypt import FakeCrypt
from zkv import keystore

OLD = b"the old luks passphrase"
# isLuks, test OLD | stage, rebuild | luksAddKey | test NEW, test OLD, luksRemoveKey | commit
CALLS = ["isLuks", "open", "luksAddKey", "open", "open", "luksRemoveKey"]
CRASHES = [(n, when) for n in range(1, len(CALLS) + 1) for when in ("before", "after")]


@pytest.fixture
def crypt(zkv: Zkv, tmp_path: Path) -> tuple[FakeCrypt, str]:
    image = tmp_path / "vdev.img"
    image.write_bytes(b"")
    fake = FakeCrypt.create(tmp_path / "crypt", {str(image): {"uuid": "x", "keys": [OLD]}})
    zkv.extra_env.update(fake.env())
    zkv.make_store()
    store = zkv.open()
    store.put(keystore.Entry(f"loopfile:{image}", "passphrase", "loopfile"), OLD)
    keystore.write(zkv.keystore, store)
    return fake, str(image)


def test_a_clean_rotation_call_by_call(zkv: Zkv, crypt: tuple[FakeCrypt, str]) -> None:
    fake, image = crypt
    result = zkv.with_pass("rotate", f"loopfile:{image}")
    assert result.code == 0, result.stderr
    assert [c["argv"][1] for c in fake.calls()] == CALLS
    (new,) = zkv.open().candidates(f"loopfile:{image}")
    assert fake.keys(image) == [new] and zkv.open().epochs(f"loopfile:{image}") == [1]
    fake.argv_never_holds(OLD, new)


@pytest.mark.parametrize(("call", "when"), CRASHES, ids=[f"{w}-{n}" for n, w in CRASHES])
def test_power_cut_at_every_call_boots_and_reconciles(
    zkv: Zkv, crypt: tuple[FakeCrypt, str], call: int, when: str
) -> None:
    fake, image = crypt
    target = f"loopfile:{image}"
    fake.set(crash={"call": call, "when": when})
    assert zkv.with_pass("rotate", target).code == -9
    fake.reboot()
    on_device = fake.keys(image)
    on_disk = keystore.read(zkv.keystore).open_with_passphrase(PASSPHRASE).candidates(target)
    assert set(on_disk) & set(on_device)  # the next boot opens it
    if zkv.fake.image_keystore().exists():
        image_store = keystore.read(zkv.fake.image_keystore()).open_with_passphrase(PASSPHRASE)
        assert set(image_store.candidates(target)) & set(on_device)
    settled = zkv.with_pass("reconcile")
    assert settled.code == 0, settled.stderr
    (kept,) = zkv.open().candidates(target)
    assert fake.keys(image) == [kept]
