"""The keystore's half of a remote wipe: every write leaves a recovery-only twin beside the
keystore, and destroy_repository_slots puts it in place, so the gateway's key opens nothing
while the recovery passphrase still opens everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from zkv import keystore
from zkv.errors import KeystoreLocked, WipeFailed

PASSPHRASE = b"correct horse battery"
RAW = bytes(range(32))


def written(tmp_path: Path) -> tuple[Path, bytes]:
    repository_key = keystore.new_repository_key()
    store = keystore.create(repository_key, PASSPHRASE, keystore.WEAK_KDF)
    store.put(keystore.Entry("tank/a", "raw"), RAW)
    path = tmp_path / "keystore"
    keystore.write(path, store)
    return path, repository_key


def test_every_write_leaves_a_recovery_only_twin(tmp_path: Path) -> None:
    path, repository_key = written(tmp_path)
    twin = keystore.read(keystore.recovery_only_path(path))
    assert [s.kind for s in twin.slots] == [keystore.SLOT_RECOVERY]
    assert twin.open_with_passphrase(PASSPHRASE).candidates("tank/a") == [RAW]
    with pytest.raises(KeystoreLocked):
        twin.open_with_repository_key(repository_key)
    assert Path(keystore.recovery_only_path(path)).stat().st_mode & 0o777 == 0o600


def test_destroy_keeps_the_recovery_slot_and_every_key(tmp_path: Path) -> None:
    path, repository_key = written(tmp_path)
    before = keystore.read(path)
    before.open_with_repository_key(repository_key)
    assert keystore.destroy_repository_slots(path) is True
    after = keystore.read(path)
    with pytest.raises(KeystoreLocked):
        after.open_with_repository_key(repository_key)
    assert after.open_with_passphrase(PASSPHRASE).candidates("tank/a") == [RAW]
    assert after.datasets() == before.datasets() and after.host_id == before.host_id
    assert not Path(keystore.recovery_only_path(path)).exists()
    assert keystore.destroy_repository_slots(path) is False  # a second wipe: nothing to do


def test_a_keystore_without_repository_slot_has_no_twin(tmp_path: Path) -> None:
    path, _ = written(tmp_path)
    store = keystore.read(path).open_with_passphrase(PASSPHRASE).without_repository_slots()
    keystore.write(path, store)
    assert not Path(keystore.recovery_only_path(path)).exists()
    assert keystore.destroy_repository_slots(path) is False


def test_no_twin_no_wipe(tmp_path: Path) -> None:
    path, repository_key = written(tmp_path)
    Path(keystore.recovery_only_path(path)).unlink()
    with pytest.raises(WipeFailed, match="is missing"):
        keystore.destroy_repository_slots(path)
    keystore.read(path).open_with_repository_key(repository_key)  # untouched


def test_a_twin_of_another_keystore_is_never_put_in_place(tmp_path: Path) -> None:
    path, repository_key = written(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = written(tmp_path / "other")
    Path(keystore.recovery_only_path(other)).replace(keystore.recovery_only_path(path))
    with pytest.raises(WipeFailed, match="does not match"):
        keystore.destroy_repository_slots(path)
    keystore.read(path).open_with_repository_key(repository_key)  # untouched
