"""Keystore format v2 (LUKS and loop-file entries): its vector, strict entry names, and which
version a keystore is written in."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from zkv import keystore
from zkv.encoding import canonical
from zkv.errors import (
    InputError,
    InvalidKeyMaterial,
    KeystoreCorrupt,
    KeystoreUnsupportedVersion,
)

VECTORS = Path(__file__).parents[1] / "vectors"
UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


@pytest.fixture(autouse=True)
def weak_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKV_TESTONLY_WEAKEN_KDF", "1")


def block_vector() -> tuple[dict[str, object], bytes]:
    expected = json.loads((VECTORS / "keystore-v2-block.json").read_text())
    return expected, (VECTORS / "keystore-v2-block.keystore").read_bytes()


def test_the_v2_vector_opens_with_both_secrets_and_rewrites_as_v2(tmp_path: Path) -> None:
    expected, data = block_vector()
    sealed = keystore.SealedKeystore.parse(data)
    assert json.loads(data)["version"] == 2
    assert sealed.datasets() == ["tank/data"]  # what an unlock request names
    assert sealed.targets() == [e["target"] for e in expected["entries"]]  # type: ignore[attr-defined]
    key = keystore.parse_repository_key(str(expected["repository_key"]))
    for store in (
        sealed.open_with_repository_key(key),
        sealed.open_with_passphrase(str(expected["recovery_passphrase"]).encode()),
    ):
        got = [
            {
                "target": e.target,
                "keyformat": e.keyformat,
                "candidates_b64": [
                    base64.b64encode(c).decode() for c in store.candidates(e.target)
                ],
                "kind": e.kind,
            }
            for e in store.entries()
        ]
        assert got == expected["entries"]
    keystore.write(tmp_path / "ks", store)
    assert json.loads((tmp_path / "ks").read_bytes())["version"] == 2


def test_without_block_entries_it_is_written_as_v1_again(tmp_path: Path) -> None:
    expected, data = block_vector()
    store = keystore.SealedKeystore.parse(data).open_with_passphrase(
        str(expected["recovery_passphrase"]).encode()
    )
    for target in store.entries():
        if target.kind != "zfs":
            store.remove(target.target)
    keystore.write(tmp_path / "ks", store)
    assert json.loads((tmp_path / "ks").read_bytes())["version"] == 1
    assert keystore.read(tmp_path / "ks").targets() == ["tank/data"]


@pytest.mark.parametrize(
    ("version", "error"), [(1, KeystoreCorrupt), (3, KeystoreUnsupportedVersion)]
)
def test_a_version_that_does_not_fit_the_entries_is_refused(version: int, error: type) -> None:
    _, data = block_vector()
    doc = json.loads(data)
    doc["version"] = version
    with pytest.raises(error):
        keystore.SealedKeystore.parse(canonical(doc) + b"\n")


def test_a_v2_file_with_only_zfs_entries_is_refused() -> None:
    data = (VECTORS / "keystore-v1-basic.keystore").read_bytes()
    doc = json.loads(data)
    doc["version"] = 2
    with pytest.raises(KeystoreCorrupt, match="does not fit"):
        keystore.SealedKeystore.parse(canonical(doc) + b"\n")


GOOD = [
    ("luks", f"luks:UUID={UUID}", "passphrase"),
    ("luks", "luks:PARTUUID=1234abcd-02", "keyfile"),
    ("luks", f"luks:PARTUUID={UUID}", "keyfile"),
    ("luks", "luks:/dev/zvol/rpool/keys vol", "passphrase"),
    ("loopfile", "loopfile:/srv/vdevs/vdev 0.img", "keyfile"),
    ("zfs", "tank/luks:data", "raw"),
]
BAD = [
    ("luks", f"luks:UUID={UUID.upper()}", "passphrase"),  # one spelling: lowercase
    ("luks", "luks:UUID=abc", "passphrase"),
    ("luks", "luks:/etc/shadow", "passphrase"),  # devices live under /dev
    ("luks", "luks:/dev/../etc/x", "passphrase"),
    ("luks", "luks:/dev/zvol//x", "passphrase"),
    ("luks", "luks:/dev/zvol/x ", "passphrase"),
    ("luks", f"luks:UUID={UUID}", "raw"),  # raw and hex are zfs's formats
    ("loopfile", "loopfile:relative.img", "keyfile"),
    ("loopfile", "loopfile:/a/./b", "keyfile"),
    ("loopfile", f"luks:UUID={UUID}", "keyfile"),  # the kind and the name disagree
    ("zfs", f"luks:UUID={UUID}", "raw"),
    ("zfs", "luks:/dev/zvol/pool/vol", "raw"),  # a valid dataset name, but ambiguous
    ("zfs", "tank/data", "keyfile"),
    ("tpm", "tpm:x", "raw"),
]


@pytest.mark.parametrize(("kind", "target", "keyformat"), GOOD)
def test_good_entries(kind: str, target: str, keyformat: str) -> None:
    entry = keystore.check_entry(keystore.Entry(target, keyformat, kind))
    assert keystore.kind_of(target) == kind
    assert entry.locator == (target.split(":", 1)[1] if kind != "zfs" else target)


@pytest.mark.parametrize(("kind", "target", "keyformat"), BAD)
def test_bad_entries_are_refused(kind: str, target: str, keyformat: str) -> None:
    with pytest.raises(InputError):
        keystore.check_entry(keystore.Entry(target, keyformat, kind))


def test_a_keyfile_keeps_every_byte_and_has_limits() -> None:
    store = keystore.create(keystore.new_repository_key(), b"recovery pass", keystore.WEAK_KDF)
    material = b"\n\0" + bytes(range(256))
    store.put(keystore.Entry(f"luks:UUID={UUID}", "keyfile", "luks"), material)
    again = keystore.SealedKeystore.parse(store.serialize()).open_with_passphrase(b"recovery pass")
    assert again.candidates(f"luks:UUID={UUID}") == [material]
    for bad in (b"", b"x" * (keystore.MAX_KEYFILE + 1)):
        with pytest.raises(InvalidKeyMaterial):
            keystore.check_material("keyfile", bad)
