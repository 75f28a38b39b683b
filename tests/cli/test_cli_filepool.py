"""``zkv filepool create``: sparse files, LUKS2 on each, loop devices, the pool, the keys in the
keystore. Against the recording fakes of cryptsetup/losetup (tests/fakes/crypt) and zpool
(tests/fakes/zpool); then the REAL cryptsetup and losetup where the host allows (root), with
the fake zpool: luksFormat on the files for real, and opening them where device-mapper is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import Result, Zkv
from tests.cli.test_cli_luks import DM, accepts, loops_of
from tests.fakes.fakecrypt import FakeCrypt
from zkv import errors
from zkv.cryptsetup import Cryptsetup
from zkv.keyload.luks import mapping_name

ZPOOL = Path(__file__).resolve().parents[1] / "fakes" / "zpool"
SIZE = 64 << 20


@pytest.fixture
def zpool(zkv: Zkv, tmp_path: Path) -> Path:
    state = tmp_path / "zpool"
    state.mkdir()
    zkv.extra_env.update({"ZKV_ZPOOL": str(ZPOOL), "ZKV_FAKE_ZPOOL_STATE": str(state)})
    return state


def zpool_calls(state: Path) -> list[list[str]]:
    path = state / "calls.jsonl"
    rows = path.read_text().splitlines() if path.exists() else []
    return [json.loads(row)["argv"] for row in rows]


@pytest.fixture
def crypt(zkv: Zkv, tmp_path: Path) -> FakeCrypt:
    fake = FakeCrypt.create(tmp_path / "crypt", {})
    zkv.extra_env.update(fake.env())
    return fake


def create(zkv: Zkv, folder: Path, *extra: str, files: int = 6) -> Result:
    return zkv.with_pass(
        "filepool", "create", "backup", str(folder), "--files", str(files), "--size", "64M",
        "--raidz2", *extra,
    )  # fmt: skip


def test_six_luks_files_a_raidz2_and_the_keys_in_the_keystore(
    zkv: Zkv, crypt: FakeCrypt, zpool: Path, tmp_path: Path
) -> None:
    zkv.make_store()
    folder = tmp_path / "pools"
    result = create(zkv, folder)
    assert result.code == 0, result.stderr
    files = [folder / f"backup-{i}.img" for i in range(6)]
    for file in files:
        assert file.stat().st_size == SIZE and file.stat().st_blocks == 0  # sparse
        assert file.stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    store = zkv.open()
    targets = [f"loopfile:{f}" for f in files]
    assert sorted(e.target for e in store.entries()) == sorted(targets)
    assert {e.kind for e in store.entries()} == {"loopfile"}
    keys = [store.candidates(t)[0] for t in targets]
    assert len(set(keys)) == 6 and all(len(k) == 32 for k in keys)
    # Each file formatted with its own key, on its own loop, opened under the boot's name.
    assert [crypt.keys(str(f)) for f in files] == [[k] for k in keys]
    state = crypt.state()
    assert sorted(state["loops"].values()) == sorted(str(f) for f in files)
    assert set(state["mappings"]) == {mapping_name(t) for t in targets}
    (call,) = zpool_calls(zpool)
    assert call[:4] == ["zpool", "create", "backup", "raidz2"]
    assert call[4:] == [f"/dev/mapper/{mapping_name(t)}" for t in targets]
    crypt.argv_never_holds(*keys)
    formats = [c for c in crypt.calls() if c["argv"][1] == "luksFormat"]
    assert len(formats) == 6 and all("--key-file=-" in c["argv"] for c in formats)
    assert "pool backup created: raidz2 over 6" in result.stderr


def test_a_failed_pool_undoes_everything(
    zkv: Zkv, crypt: FakeCrypt, zpool: Path, tmp_path: Path
) -> None:
    zkv.make_store()
    (zpool / "fail").write_text("cannot create 'backup': pool already exists\n")
    result = create(zkv, tmp_path / "pools")
    assert result.code == errors.ZpoolError.exit_code
    line = result.error_line
    assert "zpool: create backup: cannot create 'backup': pool already exists" in line
    assert list((tmp_path / "pools").iterdir()) == []
    state = crypt.state()
    assert state["loops"] == {} and state["mappings"] == {}
    assert zkv.open().entries() == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--size", "1M"), "--size must be at least 64M"),
        (("--size", "lots"), "not a size"),
        (("--files", "0"), "--files must be between 1 and 64"),
        (("--layout", "raidz3", "--raidz2"), "not allowed with argument"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    zkv: Zkv, crypt: FakeCrypt, zpool: Path, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    zkv.make_store()
    before = zkv.keystore.read_bytes()
    result = zkv.with_pass(
        "filepool", "create", "backup", str(tmp_path / "pools"), "--files", "6", "--size", "64M",
        *extra,
    )  # fmt: skip
    assert result.code != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert zkv.keystore.read_bytes() == before
    assert crypt.calls() == [] and zpool_calls(zpool) == []


def test_an_existing_file_is_never_overwritten(
    zkv: Zkv, crypt: FakeCrypt, zpool: Path, tmp_path: Path
) -> None:
    zkv.make_store()
    folder = tmp_path / "pools"
    folder.mkdir()
    (folder / "backup-3.img").write_bytes(b"someone's data")
    result = create(zkv, folder)
    assert result.code == errors.InputError.exit_code
    assert "backup-3.img exists already" in result.error_line
    assert (folder / "backup-3.img").read_bytes() == b"someone's data"
    assert crypt.calls() == [] and zkv.open().entries() == []


REAL = os.geteuid() == 0 and shutil.which("cryptsetup") is not None and shutil.which("losetup")


@pytest.mark.skipif(not REAL and not os.environ.get("CI"), reason="needs root and cryptsetup")
def test_real_cryptsetup_formats_the_files_with_the_keystore_keys(
    zkv: Zkv, zpool: Path, tmp_path: Path
) -> None:
    """Real luksFormat and losetup. With device-mapper: opened, the pool asked for, all kept
    (cleaned up here). Without (this host's kernel): one line, and nothing left behind."""
    zkv.make_store()
    folder = tmp_path / "pools"
    result = create(zkv, folder, files=3)
    files = [folder / f"backup-{i}.img" for i in range(3)]
    try:
        if not DM:
            assert result.code == errors.CryptsetupError.exit_code, result.stderr
            assert "open" in result.error_line
            assert not any(f.exists() for f in files) and zkv.open().entries() == []
            assert zpool_calls(zpool) == []
            return
        assert result.code == 0, result.stderr
        store = zkv.open()
        for file in files:
            (key,) = store.candidates(f"loopfile:{file}")
            assert accepts(file, key) and not accepts(file, b"not the key")
            assert len(loops_of(file)) == 1
        assert len(zpool_calls(zpool)) == 1
    finally:
        for file in files:
            name = mapping_name(f"loopfile:{file}")
            subprocess.run(["cryptsetup", "close", name], capture_output=True, check=False)
            if file.exists():
                for loop in loops_of(file):
                    subprocess.run(["losetup", "-d", loop], check=False)


@pytest.mark.skipif(not REAL and not os.environ.get("CI"), reason="needs root and cryptsetup")
def test_real_luks_format_then_the_key_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "f.img"
    with open(image, "wb") as handle:
        handle.truncate(32 << 20)
    monkeypatch.setenv("ZKV_TESTONLY_WEAKEN_KDF", "1")
    Cryptsetup().format(str(image), bytes(range(32)))
    assert accepts(image, bytes(range(32))) and not accepts(image, bytes(32))
    header = subprocess.run(
        ["cryptsetup", "luksDump", str(image)], capture_output=True, text=True, check=True
    ).stdout
    versions = [
        line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("Version:")
    ]
    assert versions == ["2"]
    assert Cryptsetup().luks_uuid(str(image))
