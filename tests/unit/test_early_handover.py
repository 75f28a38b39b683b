"""Keys handed from the initramfs to the real root: tmpfs only, 0600 in 0700, wiped after use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.fakezfs import FakeZfs
from zkv import keystore
from zkv.errors import HandoverError
from zkv.zfs import Zfs
from zkv_early import handover

KEY = b"tank passphrase 1"


@pytest.fixture
def shm() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="zkv-unit-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def store() -> keystore.OpenKeystore:
    s = keystore.create(bytes(32), b"recovery words", kdf=keystore.WEAK_KDF)
    s.put(keystore.Entry("tank", "passphrase"), KEY)
    s.put(keystore.Entry("vault", "raw"), bytes(range(32)))
    return s


def test_written_private_on_tmpfs_and_merged(shm: Path) -> None:
    path = shm / "zkv" / "handover"
    handover.write(str(path), store(), ["tank"])
    handover.write(str(path), store(), ["vault"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    back = handover.read(str(path))
    assert [e.target for e in back.entries()] == ["tank", "vault"]
    assert back.candidates("tank") == [KEY]


def test_refuses_a_disk(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n")
    assert handover.filesystem_of("/run/zkv", str(mounts)) == "tmpfs"
    assert handover.filesystem_of(str(tmp_path), str(mounts)) == "ext4"
    with pytest.raises(HandoverError, match="refusing"):
        handover.write(str(tmp_path / "zkv" / "handover"), store(), ["tank"], str(mounts))
    assert not (tmp_path / "zkv" / "handover").exists()


def test_load_then_wipe(shm: Path, tmp_path: Path) -> None:
    path = shm / "zkv" / "handover"
    handover.write(str(path), store(), ["tank", "vault"])
    fake = FakeZfs.create(tmp_path / "zfs", {"tank": {"keyformat": "passphrase", "key": KEY}})
    with pytest.MonkeyPatch.context() as mp:
        for name, value in fake.env().items():
            mp.setenv(name, value)
        report = handover.load(str(path), Zfs())
    assert [r.target for r in report.loaded] == ["tank"]
    assert fake.keystatus("tank") == "available"
    assert not path.exists() and not path.parent.exists()
    assert handover.load(str(path), Zfs()).results == []  # nothing handed over: nothing to do


def test_garbage_is_wiped_too(shm: Path) -> None:
    path = shm / "zkv" / "handover"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(HandoverError):
        handover.load(str(path), Zfs(binary="/bin/false"))
    assert not path.exists()
