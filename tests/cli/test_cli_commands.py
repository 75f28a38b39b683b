"""The installed ``zkv`` end to end against the recording fake zfs."""

from __future__ import annotations

import base64
import json
import os
import re
import stat

import pytest

from tests.cli.conftest import HEX_C, PASS_D, PASSPHRASE, RAW_A, RAW_B, Zkv, secrets_in
from zkv import keystore


def mode(path: object) -> int:
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def test_init_writes_private_keystore_and_key_file(zkv: Zkv) -> None:
    key_file = zkv.tmp / "repo.key"
    result = zkv.ok(
        "init", "--recovery-passphrase-file", str(zkv.passphrase_file),
        "--repository-key-file", str(key_file),
    )  # fmt: skip
    assert result.stdout == b""
    assert mode(zkv.keystore) == 0o600 and mode(key_file) == 0o600
    assert mode(zkv.keystore.parent) == 0o700
    repository_key = keystore.parse_repository_key(key_file.read_bytes())
    keystore.read(zkv.keystore).open_with_repository_key(repository_key)
    zkv.open()


def test_init_shows_key_once_and_refuses_to_overwrite(zkv: Zkv) -> None:
    shown = zkv.ok("init", "--recovery-passphrase-file", str(zkv.passphrase_file)).stdout
    key_line = shown.decode().splitlines()[-1].strip()
    keystore.read(zkv.keystore).open_with_repository_key(bytes.fromhex(key_line))
    before = zkv.keystore.read_bytes()
    again = zkv("init", "--recovery-passphrase-file", str(zkv.passphrase_file))
    assert again.code == 12 and "already exists" in again.error_line
    assert zkv.keystore.read_bytes() == before
    zkv.ok("init", "--force", "--recovery-passphrase-file", str(zkv.passphrase_file))
    assert zkv.keystore.read_bytes() != before


def test_init_dash_prints_only_the_key(zkv: Zkv) -> None:
    out = zkv.ok(
        "init", "--repository-key-file", "-", "--recovery-passphrase-file", "-",
        stdin=PASSPHRASE + b"\n",
    ).stdout  # fmt: skip
    assert len(out) == 65 and out.endswith(b"\n")
    keystore.read(zkv.keystore).open_with_repository_key(bytes.fromhex(out.decode()))
    keystore.read(zkv.keystore).open_with_passphrase(PASSPHRASE)


def test_add_raw_key_travels_on_stdin_only(zkv: Zkv) -> None:
    zkv.make_store()
    result = zkv.with_pass("add", "tank/a", stdin=RAW_A)
    assert "update-initramfs" in result.stderr
    store = zkv.open()
    assert store.candidates("tank/a") == [RAW_A]
    assert store.entry("tank/a").keyformat == "raw"
    assert mode(zkv.keystore) == 0o600
    secrets_in(zkv.fake)(RAW_A)
    verify = [(argv, data) for argv, data in zkv.fake.calls() if argv[0] == "load-key"]
    assert verify == [(["load-key", "-L", "prompt", "-n", "tank/a"], RAW_A)]
    assert zkv.fake.keystatus("tank/a") == "unavailable"


def test_add_hex_and_passphrase_from_key_file(zkv: Zkv) -> None:
    zkv.make_store()
    (zkv.tmp / "hex").write_bytes(HEX_C + b"\n")
    zkv.ok("add", "tank/c", "--key-file", str(zkv.tmp / "hex"),
           "--recovery-passphrase-file", str(zkv.passphrase_file))  # fmt: skip
    store = zkv.open()
    assert store.candidates("tank/c") == [HEX_C]
    secrets_in(zkv.fake)(HEX_C)
    assert [e.target for e in store.entries()] == ["tank/c"]


def test_add_refuses_wrong_key_and_keeps_the_file(zkv: Zkv) -> None:
    zkv.make_store()
    before = zkv.keystore.read_bytes()
    result = zkv.with_pass("add", "tank/a", stdin=RAW_B)
    assert result.code == 21 and "rejected the key for tank/a" in result.error_line
    assert zkv.keystore.read_bytes() == before


def test_add_existing_entry_needs_force(zkv: Zkv) -> None:
    zkv.make_store()
    zkv.with_pass("add", "tank/d", stdin=PASS_D + b"\n")
    assert zkv.with_pass("add", "tank/d", stdin=PASS_D).code == 50
    zkv.ok("add", "-f", "tank/d", "--recovery-passphrase-file", str(zkv.passphrase_file),
           stdin=PASS_D)  # fmt: skip
    assert zkv.open().candidates("tank/d") == [PASS_D]


def test_generate_rotates_in_crash_safe_order(zkv: Zkv) -> None:
    zkv.make_store(("tank/d", "passphrase", PASS_D))
    state = zkv.fake.state()
    state["datasets"]["tank/d"]["keystatus"] = "available"
    zkv.fake.write(state)
    zkv.ok("add", "--generate", "tank/d", "--recovery-passphrase-file", str(zkv.passphrase_file))
    new = zkv.fake.key("tank/d")
    # a passphrase by default: OpenZFS's own prompt can still take it
    assert zkv.fake.state()["datasets"]["tank/d"]["keyformat"] == "passphrase"
    assert re.fullmatch(rb"([a-km-np-z2-9]{4}-){12}[a-km-np-z2-9]{4}", new), new
    store = zkv.open()
    assert store.candidates("tank/d") == [new] and store.entry("tank/d").keyformat == "passphrase"
    assert store.epochs("tank/d") == [1]
    assert zkv.fake.state()["datasets"]["tank/d"]["props"]["zkv:epoch"] == "1"
    tail = [c for c in zkv.fake.steps() if c != "get"]
    # verify the stored key; keystore [old, new] in the boot images; stage; change-key; verify
    # the new one; commit the property; keystore [new] in the boot images
    assert tail[-8:] == [
        "load-key -n", "update-initramfs", "set", "change-key", "load-key -n", "set", "inherit",
        "update-initramfs",
    ]  # fmt: skip
    change = next(data for argv, data in zkv.fake.calls() if argv[0] == "change-key")
    assert change == new + b"\n"
    secrets_in(zkv.fake)(new)


def test_generate_raw_on_request(zkv: Zkv) -> None:
    zkv.make_store(("tank/d", "passphrase", PASS_D))
    state = zkv.fake.state()
    state["datasets"]["tank/d"]["keystatus"] = "available"
    zkv.fake.write(state)
    zkv.with_pass("add", "--generate", "--raw", "tank/d")
    assert len(zkv.fake.key("tank/d")) == 32
    assert zkv.fake.state()["datasets"]["tank/d"]["keyformat"] == "raw"
    assert zkv.open().entry("tank/d").keyformat == "raw"


def test_generate_rolls_back_when_change_key_fails(zkv: Zkv) -> None:
    zkv.make_store(("tank/a", "raw", RAW_A))
    state = zkv.fake.state()
    state["datasets"]["tank/a"]["keystatus"] = "available"
    state["fail_change_key"] = True
    zkv.fake.write(state)
    result = zkv.with_pass("add", "--generate", "--keyformat", "hex", "tank/a")
    assert result.code == 52 and "Permission denied" in result.error_line
    assert zkv.open().candidates("tank/a") == [RAW_A]
    assert zkv.fake.key("tank/a") == RAW_A


def test_generate_needs_loaded_key(zkv: Zkv) -> None:
    zkv.make_store(("tank/a", "raw", RAW_A))
    result = zkv.with_pass("add", "--generate", "tank/a")
    assert result.code == 51 and "must be loaded" in result.error_line


def test_list_needs_no_key_and_shows_no_secret(zkv: Zkv) -> None:
    zkv.make_store(("tank/a", "raw", RAW_A), ("tank/c", "hex", HEX_C))
    out = zkv.ok("list").stdout
    assert out == b"tank/a\traw\ntank/c\thex\n"
    doc = json.loads(zkv.ok("list", "--json").stdout)
    assert [e["target"] for e in doc["entries"]] == ["tank/a", "tank/c"]
    assert HEX_C not in out and RAW_A.hex().encode() not in out


def test_unlock_loads_everything_keys_on_stdin(zkv: Zkv) -> None:
    repository_key = zkv.make_store(
        ("tank/a", "raw", RAW_A), ("tank/b", "raw", RAW_B), ("tank/c", "hex", HEX_C)
    )
    state = zkv.fake.state()
    state["datasets"]["tank/b"]["keystatus"] = "available"
    zkv.fake.write(state)
    out = zkv.ok("unlock", "--repository-key-file", "-", stdin=repository_key.hex().encode())
    assert out.stdout.decode().splitlines() == [
        "tank/a: loaded", "tank/b: already-loaded", "tank/c: loaded",
    ]  # fmt: skip
    assert zkv.fake.keystatus("tank/a") == zkv.fake.keystatus("tank/c") == "available"
    loads = [(argv, data) for argv, data in zkv.fake.calls() if argv[:1] == ["load-key"]]
    assert (["load-key", "-L", "prompt", "tank/a"], RAW_A) in loads
    assert (["load-key", "-L", "prompt", "tank/c"], HEX_C + b"\n") in loads
    for key in (RAW_A, RAW_B, HEX_C, repository_key):
        secrets_in(zkv.fake)(key)


def test_verify_reports_each_entry(zkv: Zkv) -> None:
    zkv.make_store(("tank/a", "raw", RAW_A), ("tank/b", "raw", RAW_B))
    assert zkv.with_pass("verify").stdout == b"tank/a: verified\ntank/b: verified\n"
    state = zkv.fake.state()
    state["datasets"]["tank/b"]["key"] = state["datasets"]["tank/a"]["key"]
    zkv.fake.write(state)
    result = zkv.with_pass("verify")
    assert result.code == 53 and "1 of 2" in result.error_line
    assert b"tank/b: failed" in result.stdout
    assert zkv.fake.keystatus("tank/a") == "unavailable"


def test_remove_and_passwd(zkv: Zkv) -> None:
    zkv.make_store(("tank/a", "raw", RAW_A))
    zkv.ok("remove", "tank/a", "--recovery-passphrase-file", str(zkv.passphrase_file))
    assert zkv.ok("list").stdout == b""
    zkv.ok("fs", "remove", "-f", "tank/a")
    zkv.ok("passwd", "--recovery-passphrase-file", str(zkv.passphrase_file),
           "--new-passphrase-file", "-", stdin=b"another passphrase\n")  # fmt: skip
    assert zkv.with_pass("list").code == 2  # list takes no passphrase option
    assert zkv.with_pass("verify").code == 15
    keystore.read(zkv.keystore).open_with_passphrase(b"another passphrase")


def test_seed_aliases(zkv: Zkv) -> None:
    out = zkv.ok("fs", "init", "-m", "--recovery-passphrase-file", str(zkv.passphrase_file))
    assert len(out.stdout.strip()) == 64
    zkv.ok("fs", "add", "tank/a", "--recovery-passphrase-file", str(zkv.passphrase_file),
           stdin=RAW_A)  # fmt: skip
    assert zkv.ok("fs", "list").stdout == b"tank/a\traw\n"


@pytest.mark.parametrize("zfs_has", ["old", "new"], ids=["before-change-key", "after-change-key"])
def test_interrupted_rotation_still_unlocks_and_can_be_redone(zkv: Zkv, zfs_has: str) -> None:
    """A crash inside 'add --generate' leaves [old, new]: whichever zfs has, the keystore opens
    it, and a second 'add --generate' completes the rotation."""
    old, new = PASS_D, RAW_B
    zkv.make_store(("tank/d", "passphrase", old))
    store = zkv.open()
    store.stage("tank/d", new, "raw")
    keystore.write(zkv.keystore, store)
    state = zkv.fake.state()
    if zfs_has == "new":
        state["datasets"]["tank/d"].update(keyformat="raw", key=base64.b64encode(new).decode())
    zkv.fake.write(state)
    assert zkv.with_pass("unlock").stdout.startswith(b"tank/d: loaded")
    zkv.ok("add", "--generate", "tank/d", "--recovery-passphrase-file", str(zkv.passphrase_file))
    final = zkv.open()
    assert final.candidates("tank/d") == [zkv.fake.key("tank/d")]
    assert zkv.fake.key("tank/d") not in (old, new)
