"""zkv.cryptsetup and the luks/loopfile loaders against the recording fake (tests/fakes/crypt):
keys only on stdin or a pipe, every exit code typed, every loader outcome. The real tools:
tests/cli/test_cli_luks.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tests.fakes.fakecrypt import FOLDER as FAKE
from tests.fakes.fakecrypt import FakeCrypt
from tests.fakes.fakezfs import BINARY as ZFS
from tests.fakes.fakezfs import FakeZfs
from zkv import errors, keystore
from zkv.cryptsetup import Cryptsetup
from zkv.keyload import Outcome, load_entries
from zkv.keyload.loopfile import LoopfileLoader
from zkv.keyload.luks import LuksLoader, mapping_name
from zkv.zfs import Zfs

UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
OLD, NEW = b"old luks passphrase", b"new luks passphrase"
DISK = "/dev/fake-disk"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCrypt:
    image = tmp_path / "vdev.img"
    image.write_bytes(b"")
    made = FakeCrypt.create(
        tmp_path,
        {
            DISK: {"uuid": UUID, "keys": [OLD]},
            str(image): {"uuid": "1" * 8 + UUID[8:], "keys": [OLD]},
            "/dev/plain": {"uuid": "", "keys": [], "luks": False},
        },
    )
    for name, value in made.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("zkv.cryptsetup.BY_ID", {"UUID": str(tmp_path / "no-udev")})
    monkeypatch.setattr("os.path.exists", lambda p, _real=os.path.exists: p == DISK or _real(p))
    return made


def image(fake: FakeCrypt) -> str:
    return str(fake.folder / "vdev.img")


def test_add_key_reads_old_on_stdin_and_new_on_a_pipe(fake: FakeCrypt) -> None:
    Cryptsetup().add_key(DISK, OLD, NEW)
    (call,) = fake.calls()
    assert call["argv"][:2] == ["cryptsetup", "luksAddKey"]
    assert call["argv"][-1].startswith("/dev/fd/") and "--key-file=-" in call["argv"]
    assert base64.b64decode(call["stdin"]) == OLD
    assert base64.b64decode(call["new_key"]) == NEW
    assert fake.keys(DISK) == [OLD, NEW]
    fake.argv_never_holds(OLD, NEW)


def test_weak_pbkdf_only_when_tests_ask(fake: FakeCrypt, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKV_TESTONLY_WEAKEN_KDF", "1")
    Cryptsetup().add_key(DISK, OLD, NEW)
    assert "--pbkdf-force-iterations" in fake.calls()[0]["argv"]


@pytest.mark.parametrize(
    ("code", "error"),
    [(2, errors.CryptKeyRejected), (1, errors.CryptsetupError), (5, errors.CryptsetupError)],
)
def test_exit_codes_become_typed_errors(fake: FakeCrypt, code: int, error: type) -> None:
    fake.set(fail={"open": [code, "Device busy or whatever."]})
    with pytest.raises(error) as caught:
        Cryptsetup().test_key(DISK, OLD)
    assert type(caught.value) is error
    assert OLD.decode() not in caught.value.message


def test_wrong_key_missing_device_not_luks(fake: FakeCrypt) -> None:
    crypt = Cryptsetup()
    with pytest.raises(errors.CryptKeyRejected):
        crypt.test_key(DISK, NEW)
    with pytest.raises(errors.CryptDeviceNotFound, match="no such device: /dev/gone"):
        crypt.test_key("/dev/gone", OLD)
    with pytest.raises(errors.CryptNotLuks):
        crypt.luks_uuid("/dev/plain")
    assert crypt.luks_uuid(DISK) == UUID
    crypt.remove_key(DISK, OLD)
    assert fake.keys(DISK) == []
    fake.argv_never_holds(OLD, NEW)


def test_unavailable_and_timeout(fake: FakeCrypt, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKV_CRYPTSETUP", "/nonexistent/cryptsetup")
    with pytest.raises(errors.CryptUnavailable):
        Cryptsetup().is_luks(DISK)
    monkeypatch.setenv("ZKV_CRYPTSETUP", str(FAKE / "cryptsetup"))
    fake.set(delay=2)
    with pytest.raises(errors.CryptsetupError, match=r"took over 0\.5 s"):
        Cryptsetup(timeout=0.5).is_luks(DISK)


def test_uuid_resolved_by_blkid_without_udev(fake: FakeCrypt) -> None:
    crypt = Cryptsetup()
    assert crypt.device(f"UUID={UUID}") == DISK
    with pytest.raises(errors.CryptDeviceNotFound):
        crypt.device("UUID=00000000-0000-4000-8000-000000000000")


def test_luks_loader_newest_candidate_first_then_already_open(fake: FakeCrypt) -> None:
    fake.set(
        devices={
            **fake.state()["devices"],
            DISK: {"uuid": UUID, "keys": [base64.b64encode(NEW).decode()]},
        }
    )
    target = f"luks:UUID={UUID}"
    loader = LuksLoader(Cryptsetup())
    result = loader.load(target, [OLD, NEW], verify_only=False)
    assert (result.outcome, result.candidate) == (Outcome.LOADED, 1)
    assert fake.state()["mappings"] == {f"luks-{UUID}": DISK}
    assert loader.load(target, [OLD, NEW], False).outcome is Outcome.ALREADY_LOADED
    assert loader.load(target, [OLD], True).outcome is Outcome.FAILED
    fake.argv_never_holds(OLD, NEW)


def test_luks_loader_missing_device_and_broken_tool(fake: FakeCrypt) -> None:
    loader = LuksLoader(Cryptsetup())
    absent = loader.load("luks:UUID=00000000-0000-4000-8000-000000000000", [OLD], False)
    assert absent.outcome is Outcome.ABSENT and "no such device" in absent.detail
    fake.set(fail={"open": [1, "Cannot initialize device-mapper."]})
    failed = loader.load(f"luks:{DISK}", [OLD], False)
    assert failed.outcome is Outcome.FAILED
    assert failed.detail == f"cryptsetup: open {DISK}: Cannot initialize device-mapper."


def test_loopfile_attaches_opens_and_reuses_its_loop(fake: FakeCrypt) -> None:
    target = f"loopfile:{image(fake)}"
    loader = LoopfileLoader(Cryptsetup())
    assert loader.load(target, [OLD], True).outcome is Outcome.VERIFIED
    assert fake.state()["loops"] == {}  # a dry run attaches nothing
    assert loader.load(target, [OLD], False).outcome is Outcome.LOADED
    assert fake.state()["mappings"] == {mapping_name(target): "/dev/loop10"}
    assert loader.load(target, [OLD], False).outcome is Outcome.ALREADY_LOADED
    assert list(fake.state()["loops"]) == ["/dev/loop10"]


def test_loopfile_detaches_again_when_no_key_opens_it(fake: FakeCrypt) -> None:
    target = f"loopfile:{image(fake)}"
    result = LoopfileLoader(Cryptsetup()).load(target, [NEW], False)
    assert result.outcome is Outcome.FAILED
    assert fake.state()["loops"] == {}
    gone = LoopfileLoader(Cryptsetup()).load("loopfile:/nonexistent.img", [OLD], False)
    assert gone.outcome is Outcome.ABSENT
    fake.set(fail={"losetup": [1, "losetup: cannot find an unused loop device"]})
    broken = LoopfileLoader(Cryptsetup()).load(target, [OLD], False)
    assert broken.outcome is Outcome.FAILED and "unused loop device" in broken.detail


def test_block_entries_load_before_zfs_ones(fake: FakeCrypt, tmp_path: Path) -> None:
    zfs_fake = FakeZfs.create(
        tmp_path / "zfs", {"aaa/data": {"keyformat": "raw", "key": OLD[:1] * 32}}
    )
    os.environ["ZKV_FAKE_ZFS_STATE"] = str(zfs_fake.state_dir)
    try:
        store = keystore.create(keystore.new_repository_key(), b"recovery pass", keystore.WEAK_KDF)
        store.put(keystore.Entry("aaa/data", "raw"), OLD[:1] * 32)
        store.put(keystore.Entry(f"luks:{DISK}", "passphrase", "luks"), OLD)
        store.put(keystore.Entry(f"loopfile:{image(fake)}", "passphrase", "loopfile"), OLD)
        report = load_entries(store, Zfs(str(ZFS)))
    finally:
        del os.environ["ZKV_FAKE_ZFS_STATE"]
    assert [(r.target.split(":")[0], r.outcome) for r in report.results] == [
        ("loopfile", Outcome.LOADED),
        ("luks", Outcome.LOADED),
        ("aaa/data", Outcome.LOADED),
    ]
