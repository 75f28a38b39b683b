"""LUKS devices and loop files at boot, against the recording fake cryptsetup/losetup/blkid:
the initramfs opens LUKS devices before the import (boot_unlock._open_devices), the real root
opens the handed-over ones before its import (handover-open) and loads the rest after it."""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.fakecrypt import FakeCrypt
from tests.fakes.fakezfs import FakeZfs
from tests.fakes.fakezpool import FakeZpool
from zkv import errors, keystore, paths
from zkv.cryptsetup import Cryptsetup
from zkv.keyload import Outcome
from zkv.keyload.luks import mapping_name
from zkv.zfs import Zfs
from zkv_early import boot_unlock, cli, handover, initramfs_files
from zkv_early.console import PREFIX, Console

ROOT_UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
WRONG_UUID = "1f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
GONE_UUID = "2f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
KEY, OTHER, TANK = b"root luks passphrase", b"not the key", b"tank passphrase 1"
ROOT = keystore.block_target("luks", f"UUID={ROOT_UUID}")
WRONG = keystore.block_target("luks", f"UUID={WRONG_UUID}")
GONE = keystore.block_target("luks", f"UUID={GONE_UUID}")
ZVOL = keystore.block_target("luks", "/dev/zvol/tank/vault")


@pytest.fixture
def shm() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="zkv-unit-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCrypt:
    (tmp_path / "pool").mkdir()
    made = FakeCrypt.create(
        tmp_path / "crypt",
        {
            "/dev/vda2": {"uuid": ROOT_UUID, "keys": [KEY]},
            "/dev/vdb": {"uuid": WRONG_UUID, "keys": [OTHER]},
            str(tmp_path / "pool" / "f1"): {"uuid": "", "keys": [KEY]},
        },
    )
    (tmp_path / "pool" / "f1").write_bytes(b"")
    for name, value in made.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("zkv.cryptsetup.BY_ID", {"UUID": str(tmp_path / "no-udev")})
    return made


def store(tmp_path: Path) -> keystore.OpenKeystore:
    s = keystore.create(bytes(32), b"recovery words", kdf=keystore.WEAK_KDF)
    for target in (ROOT, WRONG, GONE, ZVOL):
        s.put(keystore.Entry(target, "passphrase", "luks"), KEY)
    loop = keystore.block_target("loopfile", str(tmp_path / "pool" / "f1"))
    s.put(keystore.Entry(loop, "passphrase", "loopfile"), KEY)
    s.put(keystore.Entry("tank", "passphrase"), TANK)
    return s


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(out), out


def test_initramfs_opens_the_luks_devices_then_lets_the_import_go(
    fake: FakeCrypt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock one second further at each look: three rounds within DEVICE_WAIT, then give up.
    ticks = iter(range(100))
    clock = types.SimpleNamespace(monotonic=lambda: float(next(ticks)), sleep=lambda _s: None)
    monkeypatch.setattr(boot_unlock, "time", clock)
    monkeypatch.setattr(boot_unlock, "DEVICE_WAIT", 2.5)
    priorities: list[int] = []
    monkeypatch.setattr(boot_unlock, "_set_priority", priorities.append)
    con, out = console()
    after = tmp_path / "run" / "go"
    after.parent.mkdir()
    opened = boot_unlock._open_devices(store(tmp_path), Zfs(), str(after), con)
    assert opened == {ROOT}
    assert fake.state()["mappings"] == {mapping_name(ROOT): "/dev/vda2"}
    said = out.getvalue()
    assert f"{WRONG}: cryptsetup rejected every key" in said
    assert f"not found, left to the real root: {GONE}" in said
    assert f"LUKS devices opened: {ROOT}" in said
    assert (after.parent / paths.DEVICES_NAME).read_text() == "0\n"
    # Absent: looked for again until DEVICE_WAIT; loop files and zvols: never in the initramfs.
    lookups = [c["argv"] for c in fake.calls() if c["argv"][0] == "blkid"]
    assert sum(f"UUID={GONE_UUID}" in a for a in lookups) == 3
    touched = " ".join(" ".join(c["argv"]) for c in fake.calls())
    assert "losetup" not in touched and "/dev/zvol" not in touched
    fake.argv_never_holds(KEY, OTHER)
    # The import waits for the devices: opened at normal priority, then back to yielding.
    assert priorities == [0, boot_unlock.AHEAD_NICE]


def test_no_luks_entry_still_says_done(
    fake: FakeCrypt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    priorities: list[int] = []
    monkeypatch.setattr(boot_unlock, "_set_priority", priorities.append)
    s = keystore.create(bytes(32), b"recovery words", kdf=keystore.WEAK_KDF)
    s.put(keystore.Entry("tank", "passphrase"), TANK)
    boot_unlock._open_devices(s, Zfs(), str(tmp_path / "go"), console()[0])
    assert (tmp_path / paths.DEVICES_NAME).exists() and fake.calls() == []
    assert priorities == [], "nothing held: the client keeps yielding"


def test_opened_devices_are_not_handed_over(
    fake: FakeCrypt, tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boot_unlock, "DEVICE_WAIT", 0.0)
    monkeypatch.setattr(boot_unlock, "_set_priority", lambda _nice: None)
    s = store(tmp_path)
    con = console()[0]
    opened = boot_unlock._open_devices(s, Zfs(), str(tmp_path / "go"), con)
    zfs = FakeZfs.create(tmp_path / "zfs", {"rpool": {"encryptionroot": "-"}})
    for name, value in zfs.env().items():
        monkeypatch.setenv(name, value)
    path = shm / "zkv" / "handover"
    options = boot_unlock.Options(roots=["rpool"], handover=str(path))
    boot_unlock._load(s, Zfs(), {}, set(), options, con, opened)
    handed = {e.target for e in handover.read(str(path)).entries()}
    assert ROOT not in handed
    assert {WRONG, GONE, ZVOL, "tank"} <= handed


def test_real_root_opens_block_devices_before_the_import_then_loads_and_wipes(
    fake: FakeCrypt, tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store(tmp_path)
    loop = keystore.block_target("loopfile", str(tmp_path / "pool" / "f1"))
    path = shm / "zkv" / "handover"
    handover.write(str(path), s, [ROOT, loop, "tank"])
    zfs = FakeZfs.create(tmp_path / "zfs", {})  # tank not imported yet
    for name, value in zfs.env().items():
        monkeypatch.setenv(name, value)
    report = handover.open_devices(str(path), Zfs())
    assert {r.target: r.outcome for r in report.results} == {
        ROOT: Outcome.LOADED,
        loop: Outcome.LOADED,
    }
    assert path.exists(), "kept for handover-load after the import"
    assert zfs.calls() == []
    assert sorted(fake.state()["loops"].values()) == [str(tmp_path / "pool" / "f1")]
    # The import: tank appears.
    imported = FakeZfs.create(
        tmp_path / "imported", {"tank": {"keyformat": "passphrase", "key": TANK}}
    )
    for name, value in imported.env().items():
        monkeypatch.setenv(name, value)
    after = handover.load(str(path), Zfs())
    outcomes = {r.target: r.outcome for r in after.results}
    assert outcomes[ROOT] is Outcome.ALREADY_LOADED and outcomes[loop] is Outcome.ALREADY_LOADED
    assert outcomes["tank"] is Outcome.LOADED
    assert not path.exists()
    fake.argv_never_holds(KEY, TANK)


def test_handover_open_fails_visibly_for_a_rejected_key(
    fake: FakeCrypt, tmp_path: Path, shm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shm / "zkv" / "handover"
    handover.write(str(path), store(tmp_path), [WRONG, GONE])
    rc = cli.main(["handover-open", "--handover", str(path)])
    err = capsys.readouterr().err
    assert rc == errors.KeysNotLoaded.exit_code
    assert f"{WRONG}: cryptsetup rejected every key" in err
    assert f"{GONE}: " in err  # absent: one line, handover-load fails for it later
    assert "Traceback" not in err and KEY.decode() not in err
    assert path.exists()
    assert cli.main(["handover-open", "--handover", str(shm / "none")]) == 0


def test_handover_keeps_the_entry_kinds(tmp_path: Path, shm: Path) -> None:
    path = shm / "zkv" / "handover"
    handover.write(str(path), store(tmp_path), [ROOT, "tank"])
    kinds = {e.target: e.kind for e in handover.read(str(path)).entries()}
    assert kinds == {ROOT: "luks", "tank": "zfs"}


def test_initramfs_files_lists_the_luks_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keystore.write(tmp_path / "keystore", store(tmp_path))
    assert initramfs_files.main(["luks", str(tmp_path / "keystore")]) == 0
    assert capsys.readouterr().out.split() == sorted([ROOT, WRONG, GONE, ZVOL])
    zfs_only = keystore.create(bytes(32), b"recovery words", kdf=keystore.WEAK_KDF)
    zfs_only.put(keystore.Entry("tank", "passphrase"), TANK)
    keystore.write(tmp_path / "zfs-only", zfs_only)
    assert initramfs_files.main(["luks", str(tmp_path / "zfs-only")]) == 0
    assert capsys.readouterr().out == ""
    (tmp_path / "garbage").write_text("{")
    with pytest.raises(SystemExit) as failed:
        initramfs_files.main(["luks", str(tmp_path / "garbage")])
    assert failed.value.code == 1


# --- ZFS on LUKS on a zvol (seed 003): opened after the import, its pool imported then --------

NEST = b"nest passphrase"
ZVOL_DEVICE = "/dev/zvol/tank/vault"
NEST_ON = f"/dev/mapper/{mapping_name(ZVOL)}"
IMPORT = ["import", "-N", "-a", "-o", "cachefile=none", "-d", NEST_ON]
TANK_IMPORTED: dict[str, dict[str, object]] = {"tank": {"keyformat": "passphrase", "key": TANK}}


@pytest.fixture
def zvol(fake: FakeCrypt, monkeypatch: pytest.MonkeyPatch) -> FakeCrypt:
    """tank/vault's zvol holds a LUKS device once tank is imported (udev's link: patched in,
    as /dev/zvol cannot be made here)."""
    state = fake.state()
    state["devices"][ZVOL_DEVICE] = {"uuid": "", "keys": [base64.b64encode(KEY).decode()]}
    fake.write(state)
    found = Cryptsetup.device
    monkeypatch.setattr(
        Cryptsetup, "device", lambda self, loc: loc if loc == ZVOL_DEVICE else found(self, loc)
    )
    return fake


def real_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imported: dict[str, dict[str, object]]
) -> tuple[FakeZfs, FakeZpool]:
    """After the boot's import: the pools in ``imported``; nest on the zvol's mapping."""
    zfs = FakeZfs.create(tmp_path / "zfs", imported)
    nest = {"nest": {"keyformat": "passphrase", "key": NEST}, "nest/data": {}}
    zpool = FakeZpool.create(tmp_path / "zpool", {NEST_ON: nest})
    for name, value in {**zfs.env(), **zpool.env()}.items():
        monkeypatch.setenv(name, value)
    return zfs, zpool


def hand_over(tmp_path: Path, shm: Path, targets: list[str]) -> Path:
    s = store(tmp_path)
    s.put(keystore.Entry("nest", "passphrase"), NEST)
    path = shm / "zkv" / "handover"
    handover.write(str(path), s, targets)
    return path


def test_zvol_entry_is_known_as_one() -> None:
    entries = {e.target: e.on_zvol for e in store(Path("/srv")).entries()}
    assert entries[ZVOL] and not entries[ROOT] and not entries["tank"]
    assert not keystore.Entry("loopfile:/dev/zvol/x", "keyfile", "loopfile").on_zvol


def test_handover_open_leaves_the_zvol_for_after_the_import(
    zvol: FakeCrypt, tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hand_over(tmp_path, shm, [ROOT, ZVOL, "nest"])
    _zfs, zpool = real_root(tmp_path, monkeypatch, {})
    report = handover.open_devices(str(path), Zfs())
    assert {r.target: r.outcome for r in report.results} == {ROOT: Outcome.LOADED}
    assert ZVOL_DEVICE not in " ".join(" ".join(c["argv"]) for c in zvol.calls())
    assert zpool.calls() == [] and path.exists()


def test_handover_load_opens_the_zvol_imports_its_pool_then_loads_the_key(
    zvol: FakeCrypt,
    tmp_path: Path,
    shm: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = hand_over(tmp_path, shm, [ZVOL, "nest", "tank"])
    zfs, zpool = real_root(tmp_path, monkeypatch, TANK_IMPORTED)
    assert cli.main(["handover-open", "--handover", str(path)]) == 0
    assert cli.main(["handover-load", "--handover", str(path)]) == 0, capsys.readouterr().err
    assert zvol.state()["mappings"] == {mapping_name(ZVOL): ZVOL_DEVICE}
    assert zpool.calls() == [IMPORT]
    assert zfs.keystatus("nest") == "available" and zfs.keystatus("tank") == "available"
    assert f"keys loaded: {ZVOL}, nest, tank" in capsys.readouterr().err
    assert not path.exists()
    zvol.argv_never_holds(KEY, NEST, TANK)
    assert not any(s.decode() in " ".join(zpool.calls()[0]) for s in (KEY, NEST, TANK))


@pytest.mark.parametrize("native", [True, False], ids=["native-keys", "zfs-on-luks-only"])
def test_a_failed_import_is_one_line_and_fails_the_unit_the_other_keys_loaded(
    zvol: FakeCrypt,
    tmp_path: Path,
    shm: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    native: bool,
) -> None:
    path = hand_over(tmp_path, shm, [ZVOL, "tank", *(["nest"] if native else [])])
    zfs, zpool = real_root(tmp_path, monkeypatch, TANK_IMPORTED)
    zpool.fail("cannot import 'nest': pool was previously in use from another system.")
    rc = cli.main(["handover-load", "--handover", str(path)])
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "were not imported" in line]
    assert said == [
        f"{PREFIX}the pools on {NEST_ON} ({ZVOL}) were not imported: zpool: import: cannot "
        "import 'nest': pool was previously in use from another system."
    ], err
    assert zfs.keystatus("tank") == "available"
    if native:  # nest's key has no pool to go to: dropped, and named
        assert rc == errors.KeysDropped.exit_code
        assert "zkv unlock nest" in err
        assert err.index("were not imported") < err.index("dropped"), "the cause first"
    else:
        assert rc == errors.DevicePoolsNotImported.exit_code != 0
    assert not path.exists() and "Traceback" not in err
    assert KEY.decode() not in err and TANK.decode() not in err


def test_no_import_when_handover_load_opened_nothing(
    zvol: FakeCrypt, tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hand_over(tmp_path, shm, [ROOT, "tank"])
    zfs, zpool = real_root(tmp_path, monkeypatch, TANK_IMPORTED)
    handover.open_devices(str(path), Zfs())  # ROOT: open before the boot's import
    report = handover.load(str(path), Zfs())
    assert report.by_target()[ROOT].outcome is Outcome.ALREADY_LOADED
    assert report.not_imported is None and zpool.calls() == []
    assert zfs.keystatus("tank") == "available"


def test_a_rejected_zvol_key_says_why_and_names_the_keys_dropped_with_it(
    zvol: FakeCrypt,
    tmp_path: Path,
    shm: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Seen in the VM: the exit line named only the zvol ("keys not loaded for: luks:..."),
    not why, and nest's key went without a word."""
    state = zvol.state()
    state["devices"][ZVOL_DEVICE]["keys"] = [base64.b64encode(OTHER).decode()]
    zvol.write(state)
    path = hand_over(tmp_path, shm, [ZVOL, "nest", "tank"])
    zfs, zpool = real_root(tmp_path, monkeypatch, TANK_IMPORTED)
    rc = cli.main(["handover-load", "--handover", str(path)])
    err = capsys.readouterr().err
    assert rc == errors.KeysNotLoaded.exit_code
    assert f"{PREFIX}{ZVOL}: cryptsetup rejected every key" in err, err
    dropped = [line for line in err.splitlines() if "nest" in line and "zkv unlock" in line]
    assert dropped, err
    assert zfs.keystatus("tank") == "available" and zpool.calls() == []
    assert not path.exists() and "Traceback" not in err and KEY.decode() not in err
