"""Property tests: any keystore round-trips, and no single-byte change is ever accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkv import keystore
from zkv.errors import KeystoreCorrupt, KeystoreLocked

VECTORS = Path(__file__).parents[1] / "vectors"
REPO = bytes(range(32))
PASS = b"recovery passphrase"
WEAK = keystore.KdfParams(n=1 << 10, r=8, p=1)
ZFS_FORMATS = keystore.KIND_KEYFORMATS[keystore.KIND_ZFS]  # block entries: test_keystore_v2.py

_first = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_rest = st.text("abcxyzABC019_.:- ", max_size=12)
_component = st.builds(lambda a, b: (a + b).rstrip() or a, _first, _rest)
targets = st.lists(_component, min_size=1, max_size=4).map("/".join).filter(lambda t: len(t) <= 255)

materials = {
    "raw": st.binary(min_size=32, max_size=32),
    "hex": st.binary(min_size=32, max_size=32).map(lambda b: b.hex().encode()),
    "passphrase": st.binary(min_size=8, max_size=64).filter(
        lambda b: not any(c in b for c in b"\n\r\0")
    ),
}


@st.composite
def entries(draw: st.DrawFn) -> list[tuple[str, str, list[bytes]]]:
    names = draw(st.lists(targets, max_size=6, unique=True))
    out = []
    for name in names:
        keyformat = draw(st.sampled_from(ZFS_FORMATS))
        candidates = [draw(materials[keyformat])]
        if draw(st.booleans()):  # a rotation in flight, possibly to another format
            staged_format = draw(st.sampled_from(ZFS_FORMATS))
            candidates.append(draw(materials[staged_format]))
        out.append((name, keyformat, candidates))
    return out


def build(content: list[tuple[str, str, list[bytes]]]) -> keystore.OpenKeystore:
    store = keystore.create(REPO, PASS, WEAK)
    for name, keyformat, candidates in content:
        store.put(keystore.Entry(name, keyformat), candidates[0])
        if len(candidates) == 2:
            staged = next(f for f in ZFS_FORMATS if _valid(f, candidates[1]))
            store.stage(name, candidates[1], staged)
    return store


def _valid(keyformat: str, material: bytes) -> bool:
    try:
        keystore.check_material(keyformat, material)
    except keystore.InvalidKeyMaterial:
        return False
    return True


def snapshot(store: keystore.OpenKeystore) -> list[tuple[str, str, list[bytes]]]:
    return [(e.target, e.keyformat, store.candidates(e.target)) for e in store.entries()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries())
def test_round_trip(content: list[tuple[str, str, list[bytes]]]) -> None:
    store = build(content)
    data = store.serialize()
    sealed = keystore.SealedKeystore.parse(data)
    assert sealed.datasets() == sorted(name for name, _, _ in content)
    expected = sorted(content)
    assert snapshot(sealed.open_with_repository_key(REPO)) == expected
    reopened = sealed.open_with_passphrase(PASS)
    assert snapshot(reopened) == expected
    # and once more through serialize: what was read is what gets written
    again = keystore.SealedKeystore.parse(reopened.serialize()).open_with_repository_key(REPO)
    assert snapshot(again) == expected


def assert_rejected(data: bytes, passphrase: bytes) -> None:
    """Refused when parsed, or neither secret opens it; a success or another error fails."""
    try:
        sealed = keystore.SealedKeystore.parse(data)
    except KeystoreCorrupt:  # includes KeystoreUnsupportedVersion
        return
    with pytest.raises(KeystoreLocked):
        sealed.open_with_repository_key(REPO)
    with pytest.raises(KeystoreLocked):
        sealed.open_with_passphrase(passphrase)


def _corpus() -> list[tuple[bytes, bytes]]:
    store = build(
        [("tank/a", "raw", [bytes(32)]), ("tank/b", "passphrase", [b"passphrase!", bytes(32)])]
    )
    vector = json.loads((VECTORS / "keystore-v1-basic.json").read_text())
    basic = (VECTORS / vector["keystore_file"]).read_bytes()
    return [(store.serialize(), PASS), (basic, vector["recovery_passphrase"].encode())]


CORPUS = _corpus()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    original, passphrase = data.draw(st.sampled_from(CORPUS))
    position = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[position]))
    changed = original[:position] + bytes([value]) + original[position + 1 :]
    assert_rejected(changed, passphrase)


def test_every_position_with_a_bit_flip_is_rejected() -> None:
    """Exhaustive over positions (a cheap deterministic companion to the random test)."""
    original, passphrase = CORPUS[0]
    keystore.SealedKeystore.parse(original).open_with_passphrase(passphrase)  # sanity
    for position in range(len(original)):
        for flip in (0x01, 0x20):
            changed = bytearray(original)
            changed[position] ^= flip
            assert_rejected(bytes(changed), passphrase)
