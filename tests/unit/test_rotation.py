"""zkv_admin.rotation in process, against the recording fake zfs, with a fixed clock."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.fakes.fakezfs import BINARY, FakeZfs
from zkv import keystore
from zkv.errors import InputError, RotationFailed
from zkv.zfs import Zfs
from zkv_admin import rotation

OLD, NEW = b"the old passphrase", b"the staged passphrase"
PROP = rotation.names("zkv:epoch")
NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeZfs, Path]:
    fake = FakeZfs.create(tmp_path / "zfs", {"tank/a": {"keyformat": "passphrase", "key": OLD}})
    path = tmp_path / "keystore"
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(fake.state_dir))
    monkeypatch.setenv("ZKV_KEYSTORE", str(path))
    monkeypatch.setenv("PATH", f"{BINARY.parent}:/usr/bin:/bin")  # the fake update-initramfs
    monkeypatch.setenv("ZKV_TESTONLY_WEAKEN_KDF", "1")
    return fake, path


def store_with(*keys: tuple[bytes, int | None]) -> keystore.OpenKeystore:
    store = keystore.create(b"r" * 32, b"recovery-pass")
    store.put(keystore.Entry("tank/a", "passphrase"), keys[0][0], keys[0][1])
    for key, epoch in keys[1:]:
        store.stage("tank/a", key, "passphrase", epoch)
    return store


def test_finish_takes_the_key_zfs_accepts_and_stamps_the_clock(
    env: tuple[FakeZfs, Path],
) -> None:
    fake, path = env
    state = fake.state()
    state["datasets"]["tank/a"].update(
        key=base64.b64encode(NEW).decode(), props={PROP.pending: "8"}
    )
    fake.write(state)
    store = store_with((OLD, 7), (NEW, 8))
    assert rotation.finish(Zfs(str(BINARY)), path, store, "tank/a", PROP, lambda: NOW) == 8
    props = fake.state()["datasets"]["tank/a"]["props"]
    assert props == {PROP.epoch: "8", PROP.time: "2026-05-28T20:26:40Z"}
    assert store.candidates("tank/a") == [NEW] and store.epochs("tank/a") == [8]
    on_disk = keystore.read(path).open_with_passphrase(b"recovery-pass")
    assert on_disk.candidates("tank/a") == [NEW]
    assert fake.image_keystore().read_bytes() == path.read_bytes()


def test_finish_keeps_the_old_key_when_change_key_never_ran(env: tuple[FakeZfs, Path]) -> None:
    fake, path = env
    store = store_with((OLD, 7), (NEW, 8))
    assert rotation.finish(Zfs(str(BINARY)), path, store, "tank/a", PROP, lambda: NOW) == 7
    assert store.candidates("tank/a") == [OLD]
    assert fake.state()["datasets"]["tank/a"]["props"][PROP.epoch] == "7"


def test_finish_with_no_key_that_works_keeps_everything(env: tuple[FakeZfs, Path]) -> None:
    fake, path = env
    store = store_with((b"neither of them", 1), (b"nor this one", 2))
    with pytest.raises(RotationFailed):
        rotation.finish(Zfs(str(BINARY)), path, store, "tank/a", PROP, lambda: NOW)
    assert len(store.candidates("tank/a")) == 2 and not path.exists()
    assert "set" not in fake.steps()


def test_rotate_numbers_epochs_from_the_property(env: tuple[FakeZfs, Path]) -> None:
    fake, path = env
    state = fake.state()
    state["datasets"]["tank/a"].update(keystatus="available", props={PROP.epoch: "41"})
    fake.write(state)
    store = store_with((OLD, None))
    zfs = Zfs(str(BINARY))
    assert rotation.rotate(zfs, path, store, "tank/a", "passphrase", PROP, lambda: NOW) == 42
    assert store.epochs("tank/a") == [42] and store.candidates("tank/a") == [fake.key("tank/a")]


@pytest.mark.parametrize(("keyformat", "size"), [("raw", 32), ("hex", 64), ("passphrase", 64)])
def test_generated_keys_are_valid_for_zfs(keyformat: str, size: int) -> None:
    keys = {rotation.generate_key(keyformat) for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(key) == size and keystore.check_material(keyformat, key) == key


def test_property_names_derive_and_are_checked() -> None:
    assert rotation.names("org.example:gen") == (
        "org.example:gen", "org.example:gen:pending", "org.example:gen:time",
    )  # fmt: skip
    with pytest.raises(InputError):
        rotation.names("x:" + "y" * 250)  # fits alone, not with ":pending"
