"""The keystore format, versions 1 and 2 — defined here once, used by the CLI, the boot client
and tests.

On disk: one line of canonical JSON (sorted keys, no spaces, ASCII) plus a newline::

    {"aead": "chacha20-poly1305", "entries": [{"keyformat", "kind", "target"}, ...],
     "format": "zkv-keystore", "host_id": "<32 hex>", "version": 1 | 2,
     "slots": [{"kind": "repository", "nonce", "wrapped"},
               {"kind": "recovery", "kdf": "scrypt", "n", "r", "p", "salt", "nonce", "wrapped"}],
     "payload": {"nonce", "ciphertext"}}

A random 256-bit *data key* encrypts the payload (the key material of every entry). Key
*slots* wrap the data key, LUKS-style: a ``repository`` slot opens with the repository key (the
secret that lives in Azure Key Vault), a ``recovery`` slot with a passphrase through scrypt
(parameters stored in the slot). Associated data binds everything: each slot is bound to the
host id and its own parameters, the payload to the whole header (entries and slots). Because
the file must also be byte-for-byte canonical, any change to any byte is rejected.

Version 2 adds entry kinds for block devices beside ``zfs``: ``luks`` (a LUKS1/LUKS2 device,
target ``luks:UUID=...``, ``luks:PARTUUID=...`` or ``luks:/dev/...``) and ``loopfile`` (a LUKS
image file attached with losetup, target ``loopfile:/path``), and the ``keyfile`` keyformat
for them. A keystore with only ``zfs`` entries is still written as version 1, byte for byte
as before, so older boot images and readers keep opening it (docs/keystore-format.md).

Entry names and key formats are in the clear (ZFS shows dataset names to anyone with the disk
anyway), so ``zkv list`` and the boot client's request need no key. Key material is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

from zkv import crypto, paths, zvol
from zkv.encoding import b64 as _b64
from zkv.encoding import canonical
from zkv.encoding import unb64 as _unb64
from zkv.errors import (
    EntryNotFound,
    InputError,
    InvalidKeyMaterial,
    KeystoreCorrupt,
    KeystoreLocked,
    KeystoreNotFound,
    KeystoreUnsupportedVersion,
    WipeFailed,
)
from zkv.fsutil import atomic_write, fsync_dir, read_limited

FORMAT = "zkv-keystore"
VERSION = 2  # the newest this code reads and writes; VERSION_ZFS_ONLY when it suffices
VERSION_ZFS_ONLY = 1
VERSIONS = (VERSION_ZFS_ONLY, VERSION)
DEFAULT_PATH = paths.KEYSTORE
ENV_PATH = "ZKV_KEYSTORE"
MAX_FILE_SIZE = 1 << 20
MAX_SLOTS = 32
MAX_ENTRIES = 1024
MAX_CANDIDATES = 2  # current key, plus the staged one while a rotation is in flight
MAX_EPOCH = (1 << 53) - 1  # exact in every JSON reader

KIND_ZFS, KIND_LUKS, KIND_LOOPFILE = "zfs", "luks", "loopfile"
KINDS = (KIND_ZFS, KIND_LUKS, KIND_LOOPFILE)
BLOCK_KINDS = (KIND_LUKS, KIND_LOOPFILE)  # named "<kind>:<locator>"; version 2 only
KEYFORMATS = ("raw", "hex", "passphrase", "keyfile")
# What each kind accepts: zfs's own three; a LUKS key is a passphrase (no newline, what
# cryptsetup's prompt reads) or a keyfile (any bytes, as cryptsetup --key-file reads them).
KIND_KEYFORMATS = {
    KIND_ZFS: ("raw", "hex", "passphrase"),
    KIND_LUKS: ("passphrase", "keyfile"),
    KIND_LOOPFILE: ("passphrase", "keyfile"),
}
MAX_KEYFILE = 4096
SLOT_REPOSITORY = "repository"
SLOT_RECOVERY = "recovery"

# Matched with fullmatch: "$" would also match before a trailing newline.
_DATASET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\- ]*(/[A-Za-z0-9_.:\- ]+)*")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_COMPONENT = r"[A-Za-z0-9_.:+@,=\- ]+"
# luks: a LUKS UUID, a GPT or MBR partition UUID, or a stable path such as /dev/zvol/pool/vol;
# loopfile: an absolute path. No "." or ".." components (checked apart): one spelling each.
_LOCATOR_RE = {
    KIND_LUKS: re.compile(
        rf"UUID={_UUID}|PARTUUID=(?:{_UUID}|[0-9a-f]{{8}}-[0-9a-f]{{2}})|/dev(?:/{_COMPONENT})+"
    ),
    KIND_LOOPFILE: re.compile(rf"(?:/{_COMPONENT})+"),
}
MAX_LOCATOR = 1024
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
MAX_REPOSITORY_SLOTS = 2  # the current key, plus the new one while its rotation is in flight


class KdfParams(NamedTuple):
    n: int = 1 << 16
    r: int = 8
    p: int = 1

    def check(self) -> None:
        if self.n < 1 << 10 or self.n > 1 << 20 or self.n & (self.n - 1):
            raise ValueError("scrypt n must be a power of two between 2^10 and 2^20")
        if not 1 <= self.r <= 32 or not 1 <= self.p <= 16:
            raise ValueError("scrypt r must be 1..32 and p 1..16")
        if self.n * self.r * self.p > 1 << 23:  # 1 GiB: a hostile file must not exhaust memory
            raise ValueError("scrypt parameters too expensive")


# Tests set ZKV_TESTONLY_WEAKEN_KDF=1 so they do not spend seconds in scrypt (borg's idea).
WEAK_KDF = KdfParams(n=1 << 10, r=8, p=1)


def default_kdf() -> KdfParams:
    return WEAK_KDF if os.environ.get("ZKV_TESTONLY_WEAKEN_KDF") == "1" else KdfParams()


class Entry(NamedTuple):
    target: str
    keyformat: str
    kind: str = KIND_ZFS

    @property
    def locator(self) -> str:
        """What a block entry names (``UUID=...``, a path); a zfs entry's dataset."""
        return self.target.split(":", 1)[1] if self.kind in BLOCK_KINDS else self.target

    @property
    def on_zvol(self) -> bool:
        """A LUKS device on a zvol: it exists only once its pool is imported, so both boot
        stages leave it to ``handover-load``, which opens it after the import."""
        return self.kind == KIND_LUKS and self.locator.startswith(zvol.PREFIX)


class Slot(NamedTuple):
    kind: str
    nonce: bytes
    wrapped: bytes
    kdf: KdfParams | None = None
    salt: bytes = b""
    key_id: str = ""  # repository slots: repository_key_id of its key ("" in older files)

    def params(self) -> dict[str, Any]:
        """The slot's fields other than its ciphertext: bound into its associated data."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.key_id:
            out["key_id"] = self.key_id
        if self.kind == SLOT_RECOVERY:
            assert self.kdf is not None
            out.update(kdf="scrypt", n=self.kdf.n, r=self.kdf.r, p=self.kdf.p, salt=_b64(self.salt))
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.params(), "nonce": _b64(self.nonce), "wrapped": _b64(self.wrapped)}


# --- validation of what goes in ---------------------------------------------------------------


def is_target(name: str) -> bool:
    """A ZFS dataset name as an entry's target (and the protocol's datasets) may spell it.
    Names starting like a block entry's (``luks:``, ``loopfile:``) are not: one reading each."""
    return (
        0 < len(name) <= 255
        and _DATASET_RE.fullmatch(name) is not None
        and not name.startswith(tuple(f"{kind}:" for kind in BLOCK_KINDS))
    )


def check_target(target: str) -> str:
    if not is_target(target):
        raise InputError(f"not a valid ZFS dataset name: {target!r}")
    return target


def block_target(kind: str, locator: str) -> str:
    """The entry name of a block device or image file, checked: ``luks:UUID=...``."""
    pattern = _LOCATOR_RE.get(kind)
    parts = locator.split("/")
    if (
        pattern is None
        or len(locator) > MAX_LOCATOR
        or pattern.fullmatch(locator) is None
        or any(p in (".", "..") or p != p.strip() for p in parts[1:])
    ):
        raise InputError(f"not a valid {kind} entry: {f'{kind}:{locator}'[:120]!r}")
    return f"{kind}:{locator}"


def kind_of(target: str) -> str:
    """The kind an entry name spells (``luks:...``, ``loopfile:...``, else a zfs dataset)."""
    prefix, _, locator = target.partition(":")
    if prefix in BLOCK_KINDS:
        block_target(prefix, locator)
        return prefix
    check_target(target)
    return KIND_ZFS


def check_entry(entry: Entry) -> Entry:
    """An entry's name, kind and keyformat agree (``zfs`` entries: a dataset name)."""
    if entry.kind not in KINDS:
        raise InputError(f"unknown entry kind {entry.kind!r} ({', '.join(KINDS)})")
    if kind_of(entry.target) != entry.kind:
        raise InputError(f"{entry.target[:120]!r} is not the name of a {entry.kind} entry")
    if entry.keyformat not in KIND_KEYFORMATS[entry.kind]:
        allowed = ", ".join(KIND_KEYFORMATS[entry.kind])
        raise InputError(f"a {entry.kind} entry's keyformat is one of {allowed}")
    return entry


def check_material(keyformat: str, material: bytes) -> bytes:
    """Enforce what ``zfs load-key`` (and for keyfile, cryptsetup) accepts for each keyformat."""
    if keyformat == "keyfile":
        if not 1 <= len(material) <= MAX_KEYFILE:
            raise InvalidKeyMaterial(
                keyformat=keyformat, detail=f"a key file has 1-{MAX_KEYFILE} bytes"
            )
    elif keyformat == "raw":
        if len(material) != 32:
            raise InvalidKeyMaterial(keyformat=keyformat, detail="a raw key is exactly 32 bytes")
    elif keyformat == "hex":
        if not _HEX_RE.match(material.decode("ascii", "replace")):
            raise InvalidKeyMaterial(
                keyformat=keyformat, detail="a hex key is exactly 64 hexadecimal characters"
            )
    elif keyformat == "passphrase":
        if not 8 <= len(material) <= 512:
            raise InvalidKeyMaterial(keyformat=keyformat, detail="a passphrase has 8-512 bytes")
        if any(c in material for c in b"\n\r\0"):
            raise InvalidKeyMaterial(
                keyformat=keyformat, detail="a passphrase cannot contain newlines or NUL"
            )
    else:
        raise InputError(f"unknown keyformat {keyformat!r} ({', '.join(KEYFORMATS)})")
    return material


def parse_repository_key(text: bytes | str) -> bytes:
    """The repository key is written as 64 hex characters (as it is stored in Key Vault)."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    raw = raw.strip()
    if not _HEX_RE.match(raw):
        raise InputError("a repository key is 64 hexadecimal characters")
    return bytes.fromhex(raw)


def format_repository_key(key: bytes) -> str:
    return key.hex()


def repository_key_id(key: bytes) -> str:
    """Names a repository key without revealing it: which slot it opens, which one the gateway
    holds (``zkv rotate --repository-key``, docs/rotation.md). 64 bits of a hash of a 256-bit
    random key."""
    return hashlib.sha256(b"zkv-keystore repository key id\n" + key).hexdigest()[:16]


# --- the open (decrypted) keystore -------------------------------------------------------------


class OpenKeystore:
    def __init__(
        self,
        host_id: str,
        data_key: bytes,
        slots: list[Slot],
        entries: dict[str, Entry] | None = None,
        keys: dict[str, list[bytes]] | None = None,
    ) -> None:
        self.host_id, self.data_key, self.slots = host_id, data_key, slots
        self._entries: dict[str, Entry] = entries if entries is not None else {}
        self._keys: dict[str, list[bytes]] = keys if keys is not None else {}
        # Rotation epoch of each candidate (None: written before epochs, or never rotated).
        self._epochs: dict[str, list[int | None]] = {
            t: [None] * len(k) for t, k in self._keys.items()
        }

    def __repr__(self) -> str:  # never the keys
        return f"OpenKeystore(host_id={self.host_id!r}, entries={sorted(self._entries)!r})"

    def entries(self) -> list[Entry]:
        return [self._entries[t] for t in sorted(self._entries)]

    def entry(self, target: str) -> Entry:
        try:
            return self._entries[target]
        except KeyError:
            raise EntryNotFound(target=target) from None

    def candidates(self, target: str) -> list[bytes]:
        """The current key, then a staged one (rotation in flight). Loaders try the staged one
        first (zkv/keyload/zfs_native.py): it is the newer epoch."""
        self.entry(target)
        return list(self._keys[target])

    def epochs(self, target: str) -> list[int | None]:
        """The rotation epoch of each candidate, in the order of ``candidates``."""
        self.entry(target)
        return list(self._epochs[target])

    def put(self, entry: Entry, material: bytes, epoch: int | None = None) -> None:
        check_entry(entry)
        check_material(entry.keyformat, material)
        check_epoch(epoch)
        if len(self._entries) >= MAX_ENTRIES and entry.target not in self._entries:
            raise InputError(f"a keystore holds at most {MAX_ENTRIES} entries")
        self._entries[entry.target] = entry
        self._keys[entry.target] = [material]
        self._epochs[entry.target] = [epoch]

    def stage(
        self, target: str, material: bytes, keyformat: str | None = None, epoch: int | None = None
    ) -> None:
        """Add a second candidate key (kept until ``commit``), for crash-safe rotation.

        ``keyformat`` is the format the dataset will have after ``zfs change-key`` (which may
        change it, e.g. passphrase -> raw); the entry keeps the current one until ``commit``.
        ``epoch`` must be newer than the current key's (when both are known).
        """
        entry = self.entry(target)
        check_material(keyformat or entry.keyformat, material)
        current = self._epochs[target][0]
        check_epoch(epoch, after=current)
        self._keys[target] = [self._keys[target][0], material]
        self._epochs[target] = [current, epoch]

    def commit(
        self, target: str, material: bytes, keyformat: str | None = None, epoch: int | None = None
    ) -> None:
        """Make ``material`` (in ``keyformat``, default unchanged) the only key of ``target``."""
        entry = self.entry(target)
        fmt = keyformat or entry.keyformat
        check_material(fmt, material)
        check_epoch(epoch)
        self._entries[target] = Entry(target=target, keyformat=fmt, kind=entry.kind)
        self._keys[target] = [material]
        self._epochs[target] = [epoch]

    def remove(self, target: str) -> None:
        self.entry(target)
        del self._entries[target], self._keys[target], self._epochs[target]

    def set_recovery_passphrase(self, passphrase: bytes, kdf: KdfParams | None = None) -> None:
        """Replace every recovery slot by one for ``passphrase``."""
        check_recovery_passphrase(passphrase)
        keep = [s for s in self.slots if s.kind != SLOT_RECOVERY]
        self.slots = [*keep, _recovery_slot(self.host_id, self.data_key, passphrase, kdf)]

    def without_repository_slots(self) -> OpenKeystore:
        """The same keys and recovery slots: what a remote wipe leaves (write, destroy)."""
        slots = [s for s in self.slots if s.kind != SLOT_REPOSITORY]
        return OpenKeystore(self.host_id, self.data_key, slots, self._entries, self._keys)

    def set_repository_key(self, repository_key: bytes) -> None:
        """Replace every repository slot by one for ``repository_key``."""
        keep = [s for s in self.slots if s.kind != SLOT_REPOSITORY]
        self.slots = [_repository_slot(self.host_id, self.data_key, repository_key), *keep]

    def repository_key_ids(self) -> list[str]:
        return repository_key_ids(self.slots)

    def add_repository_key(self, repository_key: bytes) -> str:
        """A second repository slot, beside the current one, for a rotation in flight; the
        new key's id. Older slots (untagged too) stay until ``keep_repository_key``."""
        key_id = repository_key_id(repository_key)
        held = self.repository_key_ids()
        if key_id in held:
            raise InputError("the keystore already has a slot for this repository key")
        if len(held) >= MAX_REPOSITORY_SLOTS:
            raise InputError("a repository key rotation is already in flight (zkv reconcile)")
        new = _repository_slot(self.host_id, self.data_key, repository_key)
        cut = max((i + 1 for i, s in enumerate(self.slots) if s.kind == SLOT_REPOSITORY), default=0)
        self.slots = [*self.slots[:cut], new, *self.slots[cut:]]
        return key_id

    def keep_repository_key(self, held: str) -> bool:
        """Keep only the repository slot(s) that may be for ``held``, the id of the key the
        gateway holds: its tagged slot, else the untagged ones (written before key ids, so
        possibly for it). False, and nothing changes, if no slot can be for it."""
        ids = self.repository_key_ids()
        keep = held if held in ids else "" if "" in ids else None
        if keep is None:
            return False
        self.slots = [s for s in self.slots if s.kind != SLOT_REPOSITORY or s.key_id == keep]
        return True

    def drop_repository_key(self, key_id: str) -> None:
        """Remove the slot tagged ``key_id`` (a new key the gateway never received)."""
        if key_id not in self.repository_key_ids() or len(self.repository_key_ids()) < 2:
            raise InputError("no second repository slot to drop")
        self.slots = [s for s in self.slots if s.kind != SLOT_REPOSITORY or s.key_id != key_id]

    def header(self) -> dict[str, Any]:
        return {
            "aead": crypto.AEAD_NAME,
            "entries": [
                {"keyformat": e.keyformat, "kind": e.kind, "target": e.target}
                for e in self.entries()
            ],
            "format": FORMAT,
            "host_id": self.host_id,
            "slots": [s.to_json() for s in self.slots],
            "version": self.version(),
        }

    def version(self) -> int:
        return version_for(self._entries.values())

    def serialize(self) -> bytes:
        if len(self.slots) > MAX_SLOTS:
            raise InputError(f"a keystore holds at most {MAX_SLOTS} key slots")
        header = self.header()
        content: dict[str, Any] = {
            "keys": {t: [_b64(k) for k in self._keys[t]] for t in sorted(self._keys)}
        }
        epochs = {t: e for t, e in sorted(self._epochs.items()) if any(x is not None for x in e)}
        if epochs:  # absent in keystores without rotations: readers before epochs ignore it
            content["epochs"] = epochs
        plaintext = canonical(content)
        nonce, ciphertext = crypto.aead_seal(self.data_key, plaintext, aad=canonical(header))
        document = {**header, "payload": {"ciphertext": _b64(ciphertext), "nonce": _b64(nonce)}}
        return canonical(document) + b"\n"


def version_for(entries: Iterable[Entry]) -> int:
    """1 while every entry is a zfs one (readable by every zkv), else 2."""
    return VERSION_ZFS_ONLY if all(e.kind == KIND_ZFS for e in entries) else VERSION


def check_epoch(epoch: int | None, after: int | None = None) -> None:
    if epoch is None:
        return
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise InputError(f"an epoch is an integer from 0 to {MAX_EPOCH}")
    if after is not None and epoch <= after:
        raise InputError(f"a staged key's epoch must be newer than {after}")


def check_recovery_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < 8:
        raise InputError("the recovery passphrase must have at least 8 characters")
    if len(passphrase) > 1024:
        raise InputError("the recovery passphrase must have at most 1024 bytes")


def create(
    repository_key: bytes,
    recovery_passphrase: bytes,
    kdf: KdfParams | None = None,
    host_id: str | None = None,
) -> OpenKeystore:
    host = host_id or crypto.random_bytes(16).hex()
    data_key = crypto.random_bytes(crypto.KEY_SIZE)
    store = OpenKeystore(host_id=host, data_key=data_key, slots=[])
    store.set_repository_key(repository_key)
    store.set_recovery_passphrase(recovery_passphrase, kdf)
    return store


def new_repository_key() -> bytes:
    return crypto.random_bytes(crypto.KEY_SIZE)


# --- slots ------------------------------------------------------------------------------------


def _slot_aad(host_id: str, params: Mapping[str, Any]) -> bytes:
    return canonical({"format": FORMAT, "host_id": host_id, "slot": dict(params), "version": 1})


def _repository_wrapping_key(host_id: str, repository_key: bytes) -> bytes:
    if len(repository_key) != crypto.KEY_SIZE:
        raise InputError("a repository key is 32 bytes")
    info = b"zkv-keystore v1 repository slot"
    return crypto.hkdf(repository_key, info=info, salt=host_id.encode())


def _repository_slot(host_id: str, data_key: bytes, repository_key: bytes) -> Slot:
    key_id = repository_key_id(repository_key)
    slot = Slot(kind=SLOT_REPOSITORY, nonce=b"", wrapped=b"", key_id=key_id)
    key = _repository_wrapping_key(host_id, repository_key)
    nonce, wrapped = crypto.aead_seal(key, data_key, _slot_aad(host_id, slot.params()))
    return slot._replace(nonce=nonce, wrapped=wrapped)


def repository_key_ids(slots: tuple[Slot, ...] | list[Slot]) -> list[str]:
    """The key id of each repository slot, in file order ("" for an untagged one)."""
    return [s.key_id for s in slots if s.kind == SLOT_REPOSITORY]


def _recovery_slot(host_id: str, data_key: bytes, passphrase: bytes, kdf: KdfParams | None) -> Slot:
    params = kdf or default_kdf()
    params.check()
    salt = crypto.random_bytes(16)
    slot = Slot(kind=SLOT_RECOVERY, nonce=b"", wrapped=b"", kdf=params, salt=salt)
    key = crypto.scrypt(passphrase, salt, params.n, params.r, params.p)
    nonce, wrapped = crypto.aead_seal(key, data_key, _slot_aad(host_id, slot.params()))
    return Slot(kind=SLOT_RECOVERY, nonce=nonce, wrapped=wrapped, kdf=params, salt=salt)


# --- the sealed keystore (parsed, nothing decrypted) -----------------------------------------


class SealedKeystore(NamedTuple):
    host_id: str
    entries: tuple[Entry, ...]
    slots: tuple[Slot, ...]
    header_bytes: bytes
    payload_nonce: bytes
    payload: bytes

    @classmethod
    def parse(cls, data: bytes, path: str = "keystore") -> SealedKeystore:
        return _parse(data, path)

    def datasets(self) -> list[str]:
        """The zfs entries' datasets: what an unlock request names (zkv/protocol.py)."""
        return [e.target for e in self.entries if e.kind == KIND_ZFS]

    def targets(self) -> list[str]:
        """Every entry's name, block devices included."""
        return [e.target for e in self.entries]

    def open_with_repository_key(self, repository_key: bytes) -> OpenKeystore:
        """Tries the slot tagged with this key's id and every untagged one (older files)."""
        key = _repository_wrapping_key(self.host_id, repository_key)
        key_id = repository_key_id(repository_key)
        return self._open(SLOT_REPOSITORY, lambda _slot: key, key_id)

    def repository_key_ids(self) -> list[str]:
        return repository_key_ids(self.slots)

    def open_with_passphrase(self, passphrase: bytes) -> OpenKeystore:
        def derive(slot: Slot) -> bytes:
            assert slot.kdf is not None
            return crypto.scrypt(passphrase, slot.salt, slot.kdf.n, slot.kdf.r, slot.kdf.p)

        return self._open(SLOT_RECOVERY, derive)

    def _open(self, kind: str, derive: Any, key_id: str = "") -> OpenKeystore:
        for slot in self.slots:
            if slot.kind != kind or (slot.key_id and slot.key_id != key_id):
                continue
            try:
                aad = _slot_aad(self.host_id, slot.params())
                data_key = crypto.aead_open(derive(slot), slot.nonce, slot.wrapped, aad)
                plaintext = crypto.aead_open(
                    data_key, self.payload_nonce, self.payload, self.header_bytes
                )
            except crypto.DecryptionFailed:
                continue
            return self._build(data_key, plaintext)
        raise KeystoreLocked

    def _build(self, data_key: bytes, plaintext: bytes) -> OpenKeystore:
        # Authenticated by now, so a failure here means a bug in the writer: still one message.
        try:
            content = json.loads(plaintext)
            keys, all_epochs = content["keys"], content.get("epochs", {})
            store = OpenKeystore(host_id=self.host_id, data_key=data_key, slots=list(self.slots))
            if not isinstance(all_epochs, dict) or not set(all_epochs) <= set(keys):
                raise ValueError("epochs")
            if set(keys) != {e.target for e in self.entries}:
                raise ValueError("entries and keys differ")
            for entry in self.entries:
                candidates = [_unb64(k) for k in keys[entry.target]]
                if not 1 <= len(candidates) <= MAX_CANDIDATES:
                    raise ValueError("bad candidate count")
                epochs = all_epochs.get(entry.target, [None] * len(candidates))
                if not isinstance(epochs, list) or len(epochs) != len(candidates):
                    raise ValueError("bad epoch count")
                store.put(entry, candidates[0], epochs[0])
                if len(candidates) == 2:  # a staged key may be in the format it rotates to
                    fmt = _some_keyformat(entry.kind, candidates[1])
                    store.stage(entry.target, candidates[1], fmt, epochs[1])
        except (ValueError, KeyError, TypeError, InputError) as exc:
            raise KeystoreLocked from exc
        return store


def _some_keyformat(kind: str, material: bytes) -> str:
    for keyformat in KIND_KEYFORMATS[kind]:
        try:
            check_material(keyformat, material)
        except (InputError, InvalidKeyMaterial):
            continue
        return keyformat
    raise ValueError("staged key is valid in no keyformat")


def _parse(data: bytes, path: str) -> SealedKeystore:
    def corrupt(detail: str) -> KeystoreCorrupt:
        return KeystoreCorrupt(path=path, detail=detail)

    if len(data) > MAX_FILE_SIZE:
        raise corrupt(f"larger than {MAX_FILE_SIZE} bytes")
    if not data:
        raise corrupt("the file is empty")
    try:
        doc = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise corrupt("not valid JSON (truncated?)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise corrupt("missing the zkv-keystore marker")
    if type(doc.get("version")) is not int or doc["version"] not in VERSIONS:  # 1.0 == True == 1
        raise KeystoreUnsupportedVersion(path=path, version=repr(doc.get("version")))
    try:
        sealed = _from_document(doc)
        # One encoding per keystore: the version is the one its entries call for.
        if doc["version"] != version_for(sealed.entries):
            raise ValueError(f"version {doc['version']} does not fit its entries' kinds")
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt(f"malformed field ({exc.__class__.__name__}: {exc})") from None
    if canonical(doc) + b"\n" != data:
        raise corrupt("not in canonical form (edited by hand?)")
    return sealed


def _from_document(doc: dict[str, Any]) -> SealedKeystore:
    _exact_keys(doc, {"aead", "entries", "format", "host_id", "payload", "slots", "version"})
    if doc["aead"] != crypto.AEAD_NAME:
        raise ValueError(f"unknown aead {doc['aead']!r}")
    host_id = doc["host_id"]
    if not isinstance(host_id, str) or not re.fullmatch(r"[0-9a-f]{32}", host_id):
        raise ValueError("host_id")
    if not isinstance(doc["entries"], list) or len(doc["entries"]) > MAX_ENTRIES:
        raise ValueError("entries")
    if not isinstance(doc["slots"], list) or not 0 < len(doc["slots"]) <= MAX_SLOTS:
        raise ValueError("slots")
    entries = tuple(_entry_from_json(e) for e in doc["entries"])
    if [e.target for e in entries] != sorted({e.target for e in entries}):
        raise ValueError("entries not sorted or duplicated")
    slots = tuple(_slot_from_json(s) for s in doc["slots"])
    payload = doc["payload"]
    _exact_keys(payload, {"ciphertext", "nonce"})
    header = {k: v for k, v in doc.items() if k != "payload"}
    return SealedKeystore(
        host_id=host_id,
        entries=entries,
        slots=slots,
        header_bytes=canonical(header),
        payload_nonce=_unb64(payload["nonce"]),
        payload=_unb64(payload["ciphertext"]),
    )


def _entry_from_json(raw: Any) -> Entry:
    _exact_keys(raw, {"keyformat", "kind", "target"})
    if raw["kind"] not in KINDS:
        raise ValueError(f"entry kind {raw['kind']!r} is not supported by this version")
    if raw["keyformat"] not in KEYFORMATS:
        raise ValueError(f"keyformat {raw['keyformat']!r}")
    if not all(isinstance(raw[k], str) for k in ("kind", "target")):
        raise ValueError("entry target")
    try:
        return check_entry(
            Entry(target=raw["target"], keyformat=raw["keyformat"], kind=raw["kind"])
        )
    except InputError:
        raise ValueError("entry target or keyformat") from None


def _slot_from_json(raw: Any) -> Slot:
    if not isinstance(raw, dict):
        raise TypeError("slot")
    nonce, wrapped = _unb64(raw.get("nonce")), _unb64(raw.get("wrapped"))
    if raw.get("kind") == SLOT_REPOSITORY:
        if "key_id" not in raw:  # written before key ids: still read
            _exact_keys(raw, {"kind", "nonce", "wrapped"})
            return Slot(kind=SLOT_REPOSITORY, nonce=nonce, wrapped=wrapped)
        _exact_keys(raw, {"kind", "key_id", "nonce", "wrapped"})
        if not isinstance(raw["key_id"], str) or not _KEY_ID_RE.fullmatch(raw["key_id"]):
            raise ValueError("repository slot key_id")
        return Slot(SLOT_REPOSITORY, nonce, wrapped, key_id=raw["key_id"])
    if raw.get("kind") == SLOT_RECOVERY:
        _exact_keys(raw, {"kind", "kdf", "n", "r", "p", "salt", "nonce", "wrapped"})
        if raw["kdf"] != "scrypt" or not all(type(raw[k]) is int for k in "nrp"):
            raise ValueError("recovery slot kdf")
        kdf = KdfParams(n=raw["n"], r=raw["r"], p=raw["p"])
        kdf.check()
        return Slot(SLOT_RECOVERY, nonce, wrapped, kdf=kdf, salt=_unb64(raw["salt"]))
    raise ValueError(f"unknown slot kind {raw.get('kind')!r}")


def _exact_keys(raw: Any, keys: set[str]) -> None:
    if not isinstance(raw, dict) or set(raw) != keys:
        raise ValueError("unexpected or missing fields")


# --- files ------------------------------------------------------------------------------------


def resolve_path(explicit: str | None = None) -> Path:
    """--keystore PATH beats ZKV_KEYSTORE beats the default on /boot."""
    from pathlib import Path  # the admin CLI's; the boot path imports no pathlib (fsutil.py)

    return Path(explicit or os.environ.get(ENV_PATH) or DEFAULT_PATH)


def read(path: str | os.PathLike[str]) -> SealedKeystore:
    try:
        data = read_limited(path, MAX_FILE_SIZE)
    except FileNotFoundError:
        raise KeystoreNotFound(path=str(path)) from None
    except ValueError as exc:
        raise KeystoreCorrupt(path=str(path), detail=str(exc)) from None
    except OSError as exc:
        raise KeystoreCorrupt(path=str(path), detail=exc.strerror or str(exc)) from None
    return SealedKeystore.parse(data, str(path))


def write(path: str | os.PathLike[str], store: OpenKeystore) -> None:
    """The keystore and, written first, its recovery-only twin beside it.

    The payload is bound to the whole header, slots included, so removing a slot needs the
    data key, which a running host does not hold. The twin is the same keystore without its
    repository slots, sealed now while the key is at hand, so ``destroy_repository_slots``
    can later drop them by a rename. Written first, the twin is never older than the
    keystore (a crash in between leaves it one step ahead, which staged rotation allows).
    """
    twin = recovery_only_path(path)
    kinds = {slot.kind for slot in store.slots}
    if {SLOT_REPOSITORY, SLOT_RECOVERY} <= kinds:
        atomic_write(twin, store.without_repository_slots().serialize(), mode=0o600)
    elif os.path.exists(twin):  # nothing left to wipe: a stale twin must not come back
        os.unlink(twin)
    atomic_write(path, store.serialize(), mode=0o600)


def recovery_only_path(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + paths.RECOVERY_ONLY_SUFFIX


def destroy_repository_slots(path: str | os.PathLike[str]) -> bool:
    """The host's half of a remote wipe: the keystore loses its repository slots (the
    gateway's key opens nothing any more), keeps its recovery slots. False if it had none.
    Raises WipeFailed rather than put anything but a matching recovery-only twin in place."""
    current = read(path)
    if all(slot.kind != SLOT_REPOSITORY for slot in current.slots):
        return False
    twin_path = check_recovery_only(path, current)
    try:
        os.replace(twin_path, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise WipeFailed(path=os.fspath(path), detail=exc.strerror or str(exc)) from None
    return True


def check_recovery_only(path: str | os.PathLike[str], current: SealedKeystore) -> str:
    """The twin's path if it is this keystore without its repository slots; else WipeFailed."""
    twin_path = recovery_only_path(path)

    def refuse(detail: str) -> WipeFailed:
        return WipeFailed(path=os.fspath(path), detail=detail)

    try:
        twin = read(twin_path)
    except KeystoreNotFound:
        raise refuse(
            f"{twin_path} is missing (write the keystore once, e.g. 'zkv passwd')"
        ) from None
    if (
        twin.host_id != current.host_id
        or twin.targets() != current.targets()
        or {slot.kind for slot in twin.slots} != {SLOT_RECOVERY}
    ):
        raise refuse(f"{twin_path} does not match the keystore")
    return twin_path
