"""Keystore format v1 (v2: test_keystore_v2.py): vectors, limits, canonical form, rotations."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from zkv import crypto, keystore
from zkv.encoding import canonical
from zkv.errors import (
    InputError,
    InvalidKeyMaterial,
    KeystoreCorrupt,
    KeystoreLocked,
    KeystoreNotFound,
    KeystoreUnsupportedVersion,
)

VECTORS = Path(__file__).parents[1] / "vectors"
NAMES = ("empty", "basic", "rotation", "two-repository-slots")
REPO = bytes(range(32))
PASS = b"recovery passphrase"


@pytest.fixture(autouse=True)
def weak_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKV_TESTONLY_WEAKEN_KDF", "1")


def vector(name: str) -> tuple[dict[str, Any], bytes]:
    expected = json.loads((VECTORS / f"keystore-v1-{name}.json").read_text())
    return expected, (VECTORS / expected["keystore_file"]).read_bytes()


def check_contents(store: keystore.OpenKeystore, expected: dict[str, Any]) -> None:
    assert store.host_id == expected["host_id"]
    got = [
        {
            "target": e.target,
            "keyformat": e.keyformat,
            "candidates_b64": [base64.b64encode(c).decode() for c in store.candidates(e.target)],
        }
        for e in store.entries()
    ]
    assert got == expected["entries"]


@pytest.mark.parametrize("name", NAMES)
def test_vectors_open_with_both_secrets(name: str) -> None:
    expected, data = vector(name)
    sealed = keystore.SealedKeystore.parse(data)
    assert sealed.datasets() == [e["target"] for e in expected["entries"]]
    repository_key = keystore.parse_repository_key(expected["repository_key"])
    check_contents(sealed.open_with_repository_key(repository_key), expected)
    check_contents(sealed.open_with_passphrase(expected["recovery_passphrase"].encode()), expected)


@pytest.mark.parametrize("name", NAMES)
def test_vectors_survive_a_rewrite(name: str, tmp_path: Path) -> None:
    expected, data = vector(name)
    store = keystore.SealedKeystore.parse(data).open_with_passphrase(
        expected["recovery_passphrase"].encode()
    )
    keystore.write(tmp_path / "ks", store)
    again = keystore.read(tmp_path / "ks")
    key = keystore.parse_repository_key(expected["repository_key"])
    check_contents(again.open_with_repository_key(key), expected)


@pytest.mark.parametrize("name", NAMES)
def test_vectors_reject_wrong_secrets(name: str) -> None:
    _, data = vector(name)
    sealed = keystore.SealedKeystore.parse(data)
    with pytest.raises(KeystoreLocked):
        sealed.open_with_repository_key(bytes(32))
    with pytest.raises(KeystoreLocked):
        sealed.open_with_passphrase(b"not the passphrase")


def test_rotation_vector_stages_a_key_in_another_format() -> None:
    _, data = vector("rotation")
    store = keystore.SealedKeystore.parse(data).open_with_repository_key(REPO)
    _, new = store.candidates("tank/data")
    assert store.entry("tank/data").keyformat == "passphrase" and len(new) == 32
    store.commit("tank/data", new, "raw")
    assert store.entry("tank/data").keyformat == "raw"
    assert store.candidates("tank/data") == [new]


def fresh(*entries: tuple[str, str, bytes]) -> keystore.OpenKeystore:
    store = keystore.create(REPO, PASS)
    for target, keyformat, material in entries:
        store.put(keystore.Entry(target, keyformat), material)
    return store


def test_round_trip_and_remove(tmp_path: Path) -> None:
    store = fresh(("tank/a", "raw", b"k" * 32), ("tank/b", "hex", b"f" * 64))
    store.remove("tank/a")
    keystore.write(tmp_path / "ks", store)
    assert (tmp_path / "ks").stat().st_mode & 0o777 == 0o600
    opened = keystore.read(tmp_path / "ks").open_with_passphrase(PASS)
    assert [e.target for e in opened.entries()] == ["tank/b"]
    assert opened.candidates("tank/b") == [b"f" * 64]


def test_passphrase_and_repository_key_changes() -> None:
    store = fresh()
    store.set_recovery_passphrase(b"a new passphrase")
    store.set_repository_key(bytes(range(1, 33)))
    sealed = keystore.SealedKeystore.parse(store.serialize())
    for attempt in (
        lambda: sealed.open_with_passphrase(PASS),
        lambda: sealed.open_with_repository_key(REPO),
    ):
        with pytest.raises(KeystoreLocked):
            attempt()
    sealed.open_with_passphrase(b"a new passphrase")
    sealed.open_with_repository_key(bytes(range(1, 33)))


@pytest.mark.parametrize(
    ("keyformat", "material"),
    [("raw", b"x" * 31), ("raw", b"x" * 33), ("hex", b"g" * 64), ("hex", b"a" * 63),
     ("passphrase", b"short"), ("passphrase", b"x" * 513), ("passphrase", b"line\nbreak"),
     ("passphrase", b"nul\0inside")],
)  # fmt: skip
def test_material_is_checked(keyformat: str, material: bytes) -> None:
    with pytest.raises(InvalidKeyMaterial):
        fresh().put(keystore.Entry("tank/a", keyformat), material)


@pytest.mark.parametrize("target", ["", "/tank", "tank/", "tank//a", "-x", "t" * 256, "ta\nnk"])
def test_bad_dataset_names(target: str) -> None:
    with pytest.raises(InputError):
        fresh().put(keystore.Entry(target, "raw"), b"k" * 32)


def test_unknown_keyformat_and_entry() -> None:
    with pytest.raises(InputError):
        fresh().put(keystore.Entry("tank/a", "base64"), b"k" * 32)
    with pytest.raises(keystore.EntryNotFound):
        fresh().candidates("tank/a")


def test_entry_limit() -> None:
    store = fresh()
    for i in range(keystore.MAX_ENTRIES):
        store.put(keystore.Entry(f"tank/{i}", "raw"), b"k" * 32)
    store.put(keystore.Entry("tank/0", "raw"), b"j" * 32)  # replacing is fine
    with pytest.raises(InputError):
        store.put(keystore.Entry("tank/one-too-many", "raw"), b"k" * 32)


def test_recovery_passphrase_limits() -> None:
    for bad in (b"short", b"x" * 1025):
        with pytest.raises(InputError):
            keystore.create(REPO, bad)


def test_repository_key_text() -> None:
    assert keystore.parse_repository_key(REPO.hex().upper() + "\n") == REPO
    for bad in ("", "00" * 31, "zz" * 32, "00" * 33):
        with pytest.raises(InputError):
            keystore.parse_repository_key(bad)


# --- what the parser refuses ----------------------------------------------------------------


def document() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(vector("basic")[1])
    return parsed


def sealed_bytes(doc: dict[str, Any]) -> bytes:
    return canonical(doc) + b"\n"


def test_size_limit(tmp_path: Path) -> None:
    with pytest.raises(KeystoreCorrupt, match="larger than"):
        keystore.SealedKeystore.parse(b" " * (keystore.MAX_FILE_SIZE + 1))
    (tmp_path / "big").write_bytes(b"{" * (keystore.MAX_FILE_SIZE + 10))
    with pytest.raises(KeystoreCorrupt, match="larger than"):
        keystore.read(tmp_path / "big")


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(KeystoreNotFound):
        keystore.read(tmp_path / "nope")
    with pytest.raises(KeystoreCorrupt):
        keystore.read(tmp_path)  # a directory


def test_empty_and_deeply_nested() -> None:
    for data in (b"", b"[" * 100_000, b"null\n", b"[]\n", b'"zkv-keystore"\n'):
        with pytest.raises(KeystoreCorrupt):
            keystore.SealedKeystore.parse(data)


@pytest.mark.parametrize("version", [0, 3, "1", None, 1.0, True])
def test_unknown_version(version: object) -> None:
    doc = document()
    doc["version"] = version
    with pytest.raises(KeystoreUnsupportedVersion) as info:
        keystore.SealedKeystore.parse(sealed_bytes(doc))
    assert info.value.exit_code == 14


def test_every_truncation_is_corrupt() -> None:
    _, data = vector("basic")
    for length in range(len(data)):
        with pytest.raises(KeystoreCorrupt):
            keystore.SealedKeystore.parse(data[:length])


def mutate(change: str) -> dict[str, Any]:
    doc = document()
    entries, slots = doc["entries"], doc["slots"]
    if change == "extra field":
        doc["comment"] = "hi"
    elif change == "entry extra field":
        entries[0]["note"] = "x"
    elif change == "unsorted entries":
        entries.reverse()
    elif change == "duplicate entry":
        entries.append(entries[-1])
    elif change == "unknown kind":
        entries[0]["kind"] = "luks"
    elif change == "unknown aead":
        doc["aead"] = "aes-256-gcm"
    elif change == "uppercase host id":
        doc["host_id"] = doc["host_id"].upper()
    elif change == "no slots":
        doc["slots"] = []
    elif change == "too many slots":
        doc["slots"] = slots * 17
    elif change == "unknown slot":
        slots[0]["kind"] = "tpm"
    elif change == "hostile scrypt":
        slots[1].update(n=1 << 20, r=32, p=16)
    elif change == "scrypt n not power of two":
        slots[1]["n"] = 1000
    elif change == "scrypt float":
        slots[1]["r"] = 8.0
    elif change == "bad base64":
        doc["payload"]["nonce"] = "!!!!"
    elif change == "unpadded base64":
        slots[1]["salt"] = slots[1]["salt"].rstrip("=")
    return doc


@pytest.mark.parametrize(
    "change",
    ["extra field", "entry extra field", "unsorted entries", "duplicate entry", "unknown kind",
     "unknown aead", "uppercase host id", "no slots", "too many slots", "unknown slot",
     "hostile scrypt", "scrypt n not power of two", "scrypt float", "bad base64",
     "unpadded base64"],
)  # fmt: skip
def test_malformed_fields_are_corrupt(change: str) -> None:
    with pytest.raises(KeystoreCorrupt):
        keystore.SealedKeystore.parse(sealed_bytes(mutate(change)))


@pytest.mark.parametrize(
    "render",
    [
        lambda d: json.dumps(d, sort_keys=True).encode() + b"\n",  # spaces
        lambda d: json.dumps(d, indent=2, sort_keys=True).encode() + b"\n",
        lambda d: json.dumps(dict(reversed(d.items())), separators=(",", ":")).encode() + b"\n",
        lambda d: canonical(d),  # no final newline
        lambda d: canonical(d) + b"\n\n",
        lambda d: b" " + canonical(d) + b"\n",
        lambda d: canonical(d).replace(b"tank/home", b"tank\\/home") + b"\n",  # escaped slash
    ],
)
def test_non_canonical_forms_are_corrupt(render: Any) -> None:
    doc = document()
    assert sealed_bytes(doc) == vector("basic")[1]
    with pytest.raises(KeystoreCorrupt, match=r"canonical|JSON"):
        keystore.SealedKeystore.parse(render(doc))


def test_header_and_slots_are_bound() -> None:
    """Authenticated, not only canonical: a valid-looking edit of the header cannot open."""
    doc = document()
    doc["entries"][0]["keyformat"] = "hex"
    sealed = keystore.SealedKeystore.parse(sealed_bytes(doc))
    with pytest.raises(KeystoreLocked):
        sealed.open_with_repository_key(REPO)
    # A slot moved to a keystore with another host id does not open it.
    other = json.loads(vector("empty")[1])
    other["host_id"] = "f" * 32
    with pytest.raises(KeystoreLocked):
        keystore.SealedKeystore.parse(sealed_bytes(other)).open_with_repository_key(REPO)


def test_epochs_round_trip_and_stage_must_be_newer() -> None:
    store = fresh()
    store.put(keystore.Entry("tank/a", "raw"), b"k" * 32, epoch=4)
    with pytest.raises(InputError):
        store.stage("tank/a", b"n" * 32, "raw", epoch=4)  # not newer
    store.stage("tank/a", b"n" * 32, "passphrase", epoch=5)
    opened = keystore.SealedKeystore.parse(store.serialize()).open_with_passphrase(PASS)
    assert opened.candidates("tank/a") == [b"k" * 32, b"n" * 32]
    assert opened.epochs("tank/a") == [4, 5]
    opened.commit("tank/a", b"n" * 32, "passphrase", epoch=5)
    assert opened.epochs("tank/a") == [5]
    with pytest.raises(InputError):
        opened.put(keystore.Entry("tank/b", "raw"), b"k" * 32, epoch=-1)


def test_no_epochs_no_epoch_field_and_old_vectors_have_none() -> None:
    """A keystore without rotations has the payload of before epochs (readers that predate
    them, e.g. an old boot image, ignore the field anyway); the vectors open with None."""
    store = fresh(("tank/a", "raw", b"k" * 32))
    sealed = keystore.SealedKeystore.parse(store.serialize())
    data_key = store.data_key
    plain = crypto.aead_open(data_key, sealed.payload_nonce, sealed.payload, sealed.header_bytes)
    assert set(json.loads(plain)) == {"keys"}
    _, data = vector("rotation")
    old = keystore.SealedKeystore.parse(data).open_with_repository_key(REPO)
    assert old.epochs("tank/data") == [None, None]


def test_two_repository_slots_vector_opens_with_either_key_and_drops_one() -> None:
    """The slot tag (``key_id``) is an optional field: untagged v1 vectors still read."""
    expected, data = vector("two-repository-slots")
    sealed = keystore.SealedKeystore.parse(data)
    old, new = (keystore.parse_repository_key(k) for k in expected["repository_keys"])
    ids = [keystore.repository_key_id(old), keystore.repository_key_id(new)]
    assert sealed.repository_key_ids() == ids == expected["repository_key_ids"]
    for key in (old, new):
        check_contents(sealed.open_with_repository_key(key), expected)
    store = sealed.open_with_repository_key(new)
    assert store.keep_repository_key(ids[1])
    dropped = keystore.SealedKeystore.parse(store.serialize())
    assert dropped.repository_key_ids() == [ids[1]]
    check_contents(dropped.open_with_repository_key(new), expected)
    with pytest.raises(KeystoreLocked):
        dropped.open_with_repository_key(old)
    assert keystore.SealedKeystore.parse(vector("basic")[1]).repository_key_ids() == [""]


def test_repository_rotation_bookkeeping() -> None:
    store = fresh()
    new = bytes(range(1, 33))
    with pytest.raises(InputError, match="already has"):
        store.add_repository_key(REPO)
    key_id = store.add_repository_key(new)
    with pytest.raises(InputError, match="in flight"):
        store.add_repository_key(bytes(range(2, 34)))
    old_id = keystore.repository_key_id(REPO)
    assert not store.keep_repository_key("0" * 16)  # the gateway holds neither: keep both
    assert store.repository_key_ids() == [old_id, key_id]
    assert store.keep_repository_key(key_id) and store.repository_key_ids() == [key_id]
    store.add_repository_key(REPO)
    store.drop_repository_key(old_id)
    assert store.repository_key_ids() == [key_id]
    with pytest.raises(InputError, match="no second"):
        store.drop_repository_key(key_id)  # never the last one


def test_an_untagged_slot_is_kept_for_a_key_id_no_tagged_slot_has() -> None:
    """A keystore written before key ids: its slot is the one the gateway's key may open."""
    expected, data = vector("basic")
    store = keystore.SealedKeystore.parse(data).open_with_passphrase(
        expected["recovery_passphrase"].encode()
    )
    new_id = store.add_repository_key(bytes(range(1, 33)))
    assert store.repository_key_ids() == ["", new_id]
    old_id = keystore.repository_key_id(bytes.fromhex(expected["repository_key"]))
    assert store.keep_repository_key(old_id) and store.repository_key_ids() == [""]


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789", "0" * 15, 7])
def test_a_malformed_key_id_is_corrupt(bad: Any) -> None:
    doc = json.loads(vector("two-repository-slots")[1])
    doc["slots"][0]["key_id"] = bad
    with pytest.raises(KeystoreCorrupt, match="malformed"):
        keystore.SealedKeystore.parse(sealed_bytes(doc))
