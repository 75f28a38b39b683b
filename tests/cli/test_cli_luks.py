"""``zkv add --luks``, verify, unlock, remove against the REAL cryptsetup and losetup (root).

Every device is a 32 MiB sparse file formatted here with fast PBKDF2 (1000 iterations), on a
loop device where a device is needed; loops and mappings are removed in finally blocks, and
names come from fresh UUIDs, so parallel runs do not clash. Without root the module is skipped,
but not in CI. Activation (``cryptsetup open``) needs device-mapper in the kernel: where it is
missing (some containers) the tests check instead that the failure is one line and that no
loop device is left behind (so on this machine and its CI; the VM guests open for real).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Zkv
from zkv import keystore
from zkv.cryptsetup import Cryptsetup
from zkv.keyload.luks import mapping_name

IN_CI = bool(os.environ.get("CI"))
pytestmark = pytest.mark.skipif(
    not IN_CI and (os.geteuid() != 0 or shutil.which("cryptsetup") is None),
    reason="needs root and cryptsetup (always run in CI)",
)
OLD = b"the old passphrase"
FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def _dm_available() -> bool:
    try:
        with open("/proc/misc") as misc:
            return "device-mapper" in misc.read()
    except OSError:
        return False


# The CI machine's kernel has no device-mapper either (no dm_mod, no modprobe): opening a
# mapping is proven inside the VM guests, whose kernels have it.
DM = _dm_available()


def luks_file(path: Path, passphrase: bytes = OLD, luks_type: str = "luks2") -> Path:
    with open(path, "wb") as handle:
        handle.truncate(32 << 20)
    subprocess.run(
        ["cryptsetup", "luksFormat", "-q", "--type", luks_type, *FAST, "--key-file=-", str(path)],
        input=passphrase,
        check=True,
    )
    return path


def accepts(device: str | Path, key: bytes) -> bool:
    done = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(device)],
        input=key,
        check=False,
        capture_output=True,
    )
    return done.returncode == 0


def loops_of(path: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME", "--associated", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def cleanup(*paths: Path, names: tuple[str, ...] = ()) -> None:
    for name in names:
        if Cryptsetup().status(name) is not None:
            subprocess.run(["cryptsetup", "close", name], check=False)
    for path in paths:
        for loop in loops_of(path):
            subprocess.run(["losetup", "--detach", loop], check=False)


@pytest.fixture
def store(zkv: Zkv) -> Zkv:
    zkv.make_store()
    zkv.extra_env["ZKV_TESTONLY_WEAKEN_KDF"] = "1"
    return zkv


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    image = luks_file(tmp_path / "disk.img")
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    uuid = Cryptsetup().luks_uuid(device)
    try:
        yield device, image
    finally:
        cleanup(image, names=(f"luks-{uuid}",))


def test_add_a_device_by_uuid_verify_unlock_remove(store: Zkv, loop: tuple[str, Path]) -> None:
    device, _ = loop
    uuid = Cryptsetup().luks_uuid(device)
    target = f"luks:UUID={uuid}"
    added = store.with_pass("add", "--luks", device, "--key-file", "-", stdin=OLD + b"\n")
    assert added.code == 0, added.stderr
    assert f"added {target} (passphrase)" in added.stderr
    entry = store.open().entry(target)
    assert (entry.kind, entry.keyformat, store.open().candidates(target)) == (
        "luks",
        "passphrase",
        [OLD],
    )
    assert store.ok("list").stdout.decode() == f"{target}\tpassphrase\n"
    assert store.with_pass("verify").stdout.decode() == f"{target}: verified\n"
    unlocked = store.with_pass("unlock")
    if DM:
        assert unlocked.code == 0, unlocked.stderr
        assert Cryptsetup().status(mapping_name(target)) is not None
        again = store.with_pass("unlock")
        assert again.stdout.decode() == f"{target}: already-loaded\n"
    else:
        assert unlocked.code == 54
        assert unlocked.stdout.decode().startswith(f"{target}: failed: cryptsetup: open ")
    store.ok("remove", target, "--recovery-passphrase-file", str(store.passphrase_file))
    assert store.open().entries() == []
    assert accepts(device, OLD)  # removing the entry leaves the keyslot


def test_a_wrong_key_is_refused_in_one_line(store: Zkv, loop: tuple[str, Path]) -> None:
    device, _ = loop
    result = store.with_pass("add", "--luks", device, "--key-file", "-", stdin=b"not the key\n")
    assert result.code == 27
    assert result.error_line == f"zkv: error: cryptsetup rejected the key for {device}"
    assert store.open().entries() == []


def test_generate_adds_a_keyslot_and_keeps_the_old_passphrase(
    store: Zkv, loop: tuple[str, Path]
) -> None:
    device, _ = loop
    result = store.with_pass("add", "--luks", device, "--generate", "--key-file", "-", stdin=OLD)
    assert result.code == 0, result.stderr
    ((entry, keys),) = [(e, store.open().candidates(e.target)) for e in store.open().entries()]
    assert entry.keyformat == "passphrase" and keys[0] != OLD and len(keys[0]) == 64
    assert accepts(device, keys[0]) and accepts(device, OLD)
    assert store.with_pass("verify").code == 0


def test_a_stable_path_is_kept_and_a_keyfile_keeps_its_newline(store: Zkv, tmp_path: Path) -> None:
    key = os.urandom(63) + b"\n"
    image = luks_file(tmp_path / "keyfile.img", key)
    link = tmp_path / "zvol-like"
    link.symlink_to(image)
    # A path outside /dev is a loop file; its entry is its absolute path.
    result = store.with_pass(
        "add", "--luks", str(link), "--keyformat", "keyfile", "--key-file", "-", stdin=key
    )
    assert result.code == 0, result.stderr
    target = f"loopfile:{link}"
    assert store.open().candidates(target) == [key]
    assert store.with_pass("verify").stdout.decode() == f"{target}: verified\n"


def test_a_loop_file_is_attached_then_opened(store: Zkv, tmp_path: Path) -> None:
    image = luks_file(tmp_path / "vdev0.img")
    target = f"loopfile:{image}"
    try:
        added = store.with_pass("add", "--luks", str(image), "--key-file", "-", stdin=OLD)
        assert added.code == 0, added.stderr
        assert store.with_pass("verify").stdout.decode() == f"{target}: verified\n"
        assert loops_of(image) == []  # a dry run needs no loop device
        unlocked = store.with_pass("unlock")
        if DM:
            assert unlocked.code == 0, unlocked.stderr
            assert len(loops_of(image)) == 1
            assert Cryptsetup().status(mapping_name(target)) is not None
        else:  # cannot open: the loop it attached is detached again
            assert unlocked.code == 54
            assert unlocked.stdout.decode().count("\n") == 1
            assert loops_of(image) == []
    finally:
        cleanup(image, names=(mapping_name(target),))


def test_luks1_and_a_missing_device(store: Zkv, tmp_path: Path) -> None:
    image = luks_file(tmp_path / "luks1.img", luks_type="luks1")
    gone = luks_file(tmp_path / "gone.img")
    for path in (image, gone):
        assert store.with_pass("add", "--luks", str(path), stdin=OLD).code == 0
    gone.unlink()
    doctor = store("doctor")
    report = doctor.stdout.decode() + doctor.stderr
    assert f"entry loopfile:{image} is a LUKS device." in report
    assert f"entry loopfile:{gone}: no such device: {gone}; remove it" in report
    verified = store.with_pass("verify")
    assert verified.code == 53
    assert verified.stdout.decode().splitlines() == [
        f"loopfile:{gone}: absent: no such device: {gone}",
        f"loopfile:{image}: verified",
    ]


def test_a_missing_uuid_is_absent_and_the_rest_still_load(store: Zkv) -> None:
    opened = store.open()
    missing = "luks:UUID=00000000-0000-4000-8000-000000000000"
    opened.put(keystore.Entry(missing, "passphrase", "luks"), OLD)
    opened.put(keystore.Entry("tank/a", "raw"), bytes(range(32)))
    keystore.write(store.keystore, opened)
    unlocked = store.with_pass("unlock")
    assert unlocked.code == 0, unlocked.stderr
    assert unlocked.stdout.decode().splitlines() == [
        f"{missing}: absent: no such device: UUID=00000000-0000-4000-8000-000000000000",
        "tank/a: loaded",
    ]


def test_rotate_adds_the_new_keyslot_then_removes_the_old(store: Zkv, tmp_path: Path) -> None:
    image = luks_file(tmp_path / "rot.img")
    target = f"loopfile:{image}"
    assert store.with_pass("add", "--luks", str(image), stdin=OLD).code == 0
    rotated = store.with_pass("rotate", target)
    assert rotated.code == 0, rotated.stderr
    (new,) = store.open().candidates(target)
    assert store.open().epochs(target) == [1]
    assert new != OLD and accepts(image, new) and not accepts(image, OLD)
    assert store.fake.image_keystore().read_bytes() == store.keystore.read_bytes()


def test_reconcile_after_a_crash_between_add_key_and_remove_key(store: Zkv, tmp_path: Path) -> None:
    image = luks_file(tmp_path / "crash.img")
    target = f"loopfile:{image}"
    opened = store.open()
    opened.put(keystore.Entry(target, "passphrase", "loopfile"), OLD)
    new = b"the staged new passphrase"
    opened.stage(target, new, "passphrase", 1)
    keystore.write(store.keystore, opened)
    Cryptsetup().add_key(str(image), OLD, new)  # the power went off right after this
    assert accepts(image, OLD) and accepts(image, new)
    assert store.with_pass("reconcile").stdout.decode() == f"{target}: epoch 1\n"
    assert store.open().candidates(target) == [new]
    assert accepts(image, new) and not accepts(image, OLD)
