"""The VM test bed's LUKS layout (tests/vm/luks_layout.py) agrees with its helper VM's shell
(guest/helper-luks.sh) on every key and mapping name, and its keystore entries are valid."""

from __future__ import annotations

import re
import subprocess

from tests.vm import luks_layout
from zkv import keystore
from zkv.keyload.luks import mapping_name


def _helper_functions() -> str:
    text = luks_layout.HELPER.read_text()
    found = [m.group(0) for m in re.finditer(r"^(key|mapping)\(\) \{.*\}$", text, re.M)]
    assert len(found) == 2, found
    return "\n".join(found)


def _sh(script: str) -> str:
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return run.stdout


def test_the_helper_derives_the_same_keys() -> None:
    names = ["root", "zvol", "nest", "files-0", "files-5"]
    calls = "; ".join(f"key {name}; echo" for name in names)
    out = _sh(f"seed={luks_layout.KEY_SEED}\n{_helper_functions()}\n{calls}").splitlines()
    assert out == [luks_layout.key_of(name) for name in names]


def test_the_helper_names_the_mappings_as_zkv_opens_them() -> None:
    targets = [luks_layout.file_target(0), luks_layout.file_target(5), luks_layout.ZVOL_TARGET]
    calls = "; ".join(f"mapping {t.split(':', 1)[0]}:{t.split(':', 1)[1]}; echo" for t in targets)
    out = _sh(f"{_helper_functions()}\n{calls}").splitlines()
    assert out == [mapping_name(t) for t in targets]
    assert mapping_name(luks_layout.ROOT_TARGET) == f"luks-{luks_layout.ROOT_UUID}"


def test_the_keystore_takes_every_entry_and_the_faulty_one_differs_where_it_says() -> None:
    good = luks_layout.entries("ab" * 32)
    bad = luks_layout.entries("ab" * 32, faulty=True)
    store = keystore.create(keystore.new_repository_key(), b"recovery passphrase")
    for entry, material in bad:
        store.put(entry, material)
    kinds = {e.target: e.kind for e, _ in good}
    assert list(kinds.values()).count(keystore.KIND_LOOPFILE) == luks_layout.FILES
    assert kinds[luks_layout.ROOT_TARGET] == keystore.KIND_LUKS
    assert kinds[luks_layout.ZVOL_TARGET] == keystore.KIND_LUKS
    changed = {e.target for e, k in bad} ^ {e.target for e, k in good}
    assert changed == {luks_layout.MISSING_TARGET}
    keys, bad_keys = ({e.target: k for e, k in entries} for entries in (good, bad))
    assert bad_keys[luks_layout.ZVOL_TARGET] != keys[luks_layout.ZVOL_TARGET]
    assert sorted(luks_layout.secrets("ab" * 32)) == sorted({k.decode() for _, k in good})
