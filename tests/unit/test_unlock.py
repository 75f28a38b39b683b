"""zkv.keyload against the recording fake zfs: candidates in order, already-loaded is fine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.fakezfs import FakeZfs
from zkv import keystore
from zkv.keyload import Outcome, load_entries
from zkv.zfs import Zfs

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> keystore.OpenKeystore:
    monkeypatch.setenv("ZKV_TESTONLY_WEAKEN_KDF", "1")
    s = keystore.create(b"r" * 32, b"recovery-pass")
    s.put(keystore.Entry("tank/a", "raw"), OLD)
    s.put(keystore.Entry("tank/b", "raw"), OLD)
    return s


def zfs_for(fake: FakeZfs, monkeypatch: pytest.MonkeyPatch) -> Zfs:
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(fake.state_dir))
    return Zfs(binary=str(Path(__file__).parents[1] / "fakes" / "zfs"))


def test_loads_every_entry(
    tmp_path: Path, store: keystore.OpenKeystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeZfs.create(
        tmp_path,
        {"tank/a": {"keyformat": "raw", "key": OLD}, "tank/b": {"keyformat": "raw", "key": OLD}},
    )
    report = load_entries(store, zfs_for(fake, monkeypatch))
    assert report.ok
    assert [r.outcome for r in report.results] == [Outcome.LOADED, Outcome.LOADED]
    assert fake.keystatus("tank/a") == fake.keystatus("tank/b") == "available"


def test_staged_candidate_after_interrupted_rotation(
    tmp_path: Path, store: keystore.OpenKeystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.stage("tank/a", NEW)
    fake = FakeZfs.create(tmp_path, {"tank/a": {"keyformat": "raw", "key": NEW}})
    report = load_entries(store, zfs_for(fake, monkeypatch), only=["tank/a"])
    assert report.by_target()["tank/a"].outcome is Outcome.LOADED
    assert report.by_target()["tank/a"].candidate == 1


def test_newest_key_first_then_the_current_one(
    tmp_path: Path, store: keystore.OpenKeystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power cut before change-key: zfs still has the old key, tried second."""
    store.stage("tank/a", NEW)
    fake = FakeZfs.create(tmp_path, {"tank/a": {"keyformat": "raw", "key": OLD}})
    report = load_entries(store, zfs_for(fake, monkeypatch), only=["tank/a"])
    assert report.by_target()["tank/a"].outcome is Outcome.LOADED
    assert report.by_target()["tank/a"].candidate == 0
    tried = [data for argv, data in fake.calls() if argv[0] == "load-key"]
    assert tried == [NEW, OLD]


def test_already_loaded_absent_missing_and_wrong(
    tmp_path: Path, store: keystore.OpenKeystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(keystore.Entry("tank/c", "raw"), OLD)
    fake = FakeZfs.create(
        tmp_path,
        {
            "tank/a": {"keyformat": "raw", "key": OLD, "keystatus": "available"},
            "tank/c": {"keyformat": "raw", "key": OTHER},
        },
    )
    report = load_entries(
        store, zfs_for(fake, monkeypatch), only=["tank/a", "tank/b", "tank/c", "x/y"]
    )
    got = {t: r.outcome for t, r in report.by_target().items()}
    assert got == {
        "tank/a": Outcome.ALREADY_LOADED,
        "tank/b": Outcome.ABSENT,
        "tank/c": Outcome.FAILED,
        "x/y": Outcome.NO_ENTRY,
    }
    assert not report.ok
    assert all(OTHER.hex() not in r.detail and "o" * 32 not in r.detail for r in report.results)


def test_verify_only_never_loads(
    tmp_path: Path, store: keystore.OpenKeystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeZfs.create(tmp_path, {"tank/a": {"keyformat": "raw", "key": OLD}})
    report = load_entries(store, zfs_for(fake, monkeypatch), only=["tank/a"], verify_only=True)
    assert report.by_target()["tank/a"].outcome is Outcome.VERIFIED
    assert fake.keystatus("tank/a") == "unavailable"
    assert any("-n" in argv for argv, _ in fake.calls())
