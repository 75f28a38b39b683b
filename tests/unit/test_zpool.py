"""zkv.zpool against the recording fake (tests/fakes/zpool): the exact argv, nothing secret in
it, stdin closed, zpool's first line in a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.fakezfs import FakeZfs
from tests.fakes.fakezpool import FakeZpool
from zkv import errors
from zkv.zpool import Zpool

NEST = b"nest passphrase"
MAPPINGS = ["/dev/mapper/zkv-0123456789abcdef", "/dev/mapper/luks-0f1e2d3c"]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeZpool:
    nest = {"nest": {"keyformat": "passphrase", "key": NEST}, "nest/data": {}}
    made = FakeZpool.create(tmp_path / "zpool", {MAPPINGS[0]: nest})
    for name, value in made.env().items():
        monkeypatch.setenv(name, value)
    return made


@pytest.fixture
def zfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeZfs:
    made = FakeZfs.create(tmp_path / "zfs", {})
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(made.state_dir))
    return made


def test_import_from_names_each_device_and_no_cache_file(fake: FakeZpool, zfs: FakeZfs) -> None:
    Zpool().import_from(MAPPINGS)
    assert fake.calls() == [
        ["import", "-N", "-a", "-o", "cachefile=none", "-d", MAPPINGS[0], "-d", MAPPINGS[1]]
    ]
    assert sorted(zfs.state()["datasets"]) == ["nest", "nest/data"]  # the pool "appeared"
    assert NEST.decode() not in " ".join(fake.calls()[0])


def test_no_device_is_no_call(fake: FakeZpool) -> None:
    Zpool().import_from([])  # never a bare `zpool import -a`: it would take every pool in /dev
    assert fake.calls() == []


def test_nothing_to_import_is_success(fake: FakeZpool, zfs: FakeZfs) -> None:
    Zpool().import_from(MAPPINGS[1:])  # no pool there: zpool says so and exits 0
    fake.fail("no pools available to import")  # some versions exit 1 with it
    Zpool().import_from(MAPPINGS[1:])
    assert len(fake.calls()) == 2 and zfs.state()["datasets"] == {}


def test_import_failure_is_zpools_first_line(fake: FakeZpool) -> None:
    fake.fail("cannot import 'nest': pool was previously in use from another system.\nmore")
    with pytest.raises(errors.ZpoolError) as raised:
        Zpool().import_from(MAPPINGS[:1])
    assert raised.value.message == (
        "zpool: import: cannot import 'nest': pool was previously in use from another system."
    )
    assert raised.value.exit_code == errors.ZfsError.exit_code


def test_create_argv_and_failure(fake: FakeZpool) -> None:
    Zpool().create("backup", "raidz2", MAPPINGS)
    Zpool().create("stripe1", "stripe", MAPPINGS[:1])
    assert fake.calls() == [
        ["create", "backup", "raidz2", *MAPPINGS],
        ["create", "stripe1", *MAPPINGS[:1]],
    ]
    fake.fail("cannot create 'backup': pool already exists")
    with pytest.raises(errors.ZpoolError, match="create backup: cannot create 'backup'"):
        Zpool().create("backup", "mirror", MAPPINGS)
    with pytest.raises(errors.InputError):
        Zpool().create("1bad", "mirror", MAPPINGS)


def test_stdin_is_closed_and_a_hang_times_out(tmp_path: Path) -> None:
    script = tmp_path / "zpool"
    script.write_text(f'#!/bin/sh\nreadlink /proc/self/fd/0 >"{tmp_path}/stdin"\nexit 0\n')
    script.chmod(0o755)
    Zpool(binary=str(script)).import_from(MAPPINGS[:1])
    assert (tmp_path / "stdin").read_text().strip() == "/dev/null"
    script.write_text("#!/bin/sh\nexec sleep 10\n")
    with pytest.raises(errors.ZpoolError, match=r"'zpool import' took over 0\.2 s"):
        Zpool(binary=str(script), timeout=0.2).import_from(MAPPINGS[:1])


def test_no_zpool_binary(tmp_path: Path) -> None:
    with pytest.raises(errors.ZpoolError, match="cannot be run"):
        Zpool(binary=str(tmp_path / "none")).import_from(MAPPINGS)
