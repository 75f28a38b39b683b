"""Key rotation with an epoch property, safe at every crash point: ``zkv rotate``, ``reconcile``.

OpenZFS 2.1 to 2.3 cannot change a key and a property in one transaction: their channel
programs have no ``zfs.sync.change_key`` (only illumos has it; a key in a ``zfs program``
script would land in ``zpool history -i`` anyway), and ``zfs change-key -o user:prop=`` came
after 2.4. So the rotation has two phases, and the key that ZFS accepts tells which one won:

1. prepare: the keystore holds [current @E, new @E+1] (written, then every boot image rebuilt
   from it), and ``NAME:pending=E+1`` marks the rotation on the dataset;
2. ``zfs change-key`` with the new key on stdin;
3. finish (``finish``; also ``zkv reconcile`` and the start of every rotation): the newest key
   that ``zfs load-key -n`` accepts wins; ``NAME=<its epoch>`` and ``NAME:time``, in one
   ``zfs set``; ``NAME:pending`` cleared; the keystore holds only the winner; images rebuilt
   (a marker beside the keystore says so until they are: bootimage.mark_stale).

``ZKV_TESTONLY_CRASH_AT=STEP`` stops the command dead (a marker line, then SIGKILL) at
``staged``, ``rebuilt``, ``begun``, ``changed`` and, in a finish with two keys, ``settled`` and
``committed``: tests/e2e/test_rotation_boot.py cuts the VM's power there.

A power cut anywhere leaves ZFS with one of the two keys, and the keystore and every boot
image hold it (the boot loader tries the newer key first); the next ``zkv rotate`` or
``zkv reconcile`` settles the property and the keystore. tests/cli/test_cli_rotate.py cuts
the power at every call.

The phases are written once (``settle``, ``rotate_key``) over a ``Rotatable``: ``ZfsRotatable``
here, ``zkv_admin.lukscmds.LuksRotatable`` for LUKS entries, where step 2 is ``luksAddKey``
(the device takes both keys) and finishing removes the old key's keyslot (``luksRemoveKey``)
before the keystore drops it; no epoch property (LUKS has none), the epochs live in the keystore.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from zkv import keystore
from zkv.errors import (
    CryptDeviceNotFound,
    EntryNotFound,
    EpochPropertyInvalid,
    FileWriteError,
    RotationBusy,
    RotationFailed,
    UsageError,
    ZfsDatasetNotFound,
    ZfsError,
    ZfsKeyNotLoaded,
    ZfsNotEncryptionRoot,
    ZfsUnavailable,
    ZkvError,
)
from zkv.zfs import Zfs, check_user_property
from zkv_admin import bootimage, repokey
from zkv_admin.common import open_store, path_of, save, say

DEFAULT_PROPERTY = "zkv:epoch"
_EPOCH_RE = re.compile(r"[0-9]{1,15}")
# Typeable at OpenZFS's own prompt: no look-alikes (l/1, o/0), groups of four.
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols: 5 bits each
_GROUPS = 13  # 52 symbols, 260 bits


class Names(NamedTuple):
    epoch: str  # the epoch of the key ZFS holds
    pending: str  # the epoch a rotation in flight moves to
    time: str  # when the epoch last changed (UTC, ISO 8601)


def names(base: str) -> Names:
    found = Names(base, f"{base}:pending", f"{base}:time")
    for name in found:
        check_user_property(name)
    return found


def generate_key(keyformat: str) -> bytes:
    if keyformat in ("raw", "keyfile"):
        return secrets.token_bytes(32)
    if keyformat == "hex":
        return secrets.token_hex(32).encode()
    symbols = "".join(secrets.choice(_ALPHABET) for _ in range(4 * _GROUPS))
    return "-".join(symbols[i : i + 4] for i in range(0, len(symbols), 4)).encode()


def accepted(zfs: Zfs, dataset: str, key: bytes) -> bool:
    """Dry-run check. Only a missing dataset or zfs is fatal: a staged key in another format
    ("Raw key too short") or a timeout means "not this key", which keeps both in the keystore."""
    try:
        zfs.load_key(dataset, key, verify_only=True)
    except (ZfsDatasetNotFound, ZfsNotEncryptionRoot, ZfsUnavailable):
        raise
    except ZfsError:
        return False
    return True


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """One rotation at a time per keystore: two would each write a keystore without the
    other's key. Take it before reading the keystore."""
    lock = path.with_name(f".{path.name}.rotate-lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise FileWriteError(path=str(lock), detail=exc.strerror or str(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RotationBusy(path=str(path)) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _property_epoch(dataset: str, name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if _EPOCH_RE.fullmatch(value) is None:
        raise EpochPropertyInvalid(dataset=dataset, name=name, value=value[:40])
    return int(value)


class Rotatable(Protocol):
    """What the two phases need of the thing whose key rotates (a dataset, a LUKS device)."""

    tool: str  # who accepts the keys, for messages
    failure: type[ZkvError]  # its errors: the change may have happened anyway, so look

    def ready(self) -> None:
        """Raise if its key cannot be changed now (not loaded, not there)."""

    def look(self) -> None:
        """Read what settling needs, before the keys are tried."""

    def accepts(self, key: bytes) -> bool: ...

    def begin(self, epoch: int) -> None:
        """Mark the rotation to ``epoch`` as in flight (before the change)."""

    def change(self, old: bytes, new: bytes, keyformat: str) -> None: ...

    def settle(self, keys: list[bytes], winner: int, epoch: int | None) -> int | None:
        """``keys[winner]`` won: make the thing agree; return the epoch in force."""

    def keyformat(self, key: bytes) -> str:
        """The keyformat the winning ``key`` is stored with."""


class ZfsRotatable:
    tool: str = "zfs"
    failure: type[ZkvError] = ZfsError

    def __init__(
        self, zfs: Zfs, dataset: str, prop: Names, now: Callable[[], float] = time.time
    ) -> None:
        self.zfs, self.dataset, self.prop, self.now = zfs, dataset, prop, now
        self.found: dict[str, str] = {}

    def ready(self) -> None:
        if self.zfs.require_encryption_root(self.dataset).keystatus != "available":
            raise ZfsKeyNotLoaded(dataset=self.dataset)

    def look(self) -> None:
        self.found = self.zfs.local_properties(self.dataset, list(self.prop))

    def accepts(self, key: bytes) -> bool:
        return accepted(self.zfs, self.dataset, key)

    def begin(self, epoch: int) -> None:
        self.zfs.set_properties(self.dataset, {self.prop.pending: str(epoch)})

    def change(self, old: bytes, new: bytes, keyformat: str) -> None:
        self.zfs.change_key(self.dataset, new, keyformat)

    def settle(self, keys: list[bytes], winner: int, epoch: int | None) -> int | None:
        dataset, prop, found = self.dataset, self.prop, self.found
        in_zfs = _property_epoch(dataset, prop.epoch, found.get(prop.epoch))
        if epoch is not None and epoch != in_zfs:
            self.zfs.set_properties(
                dataset, {prop.epoch: str(epoch), prop.time: _stamp(self.now())}
            )
        if prop.pending in found:
            self.zfs.clear_property(dataset, prop.pending)
        return epoch if epoch is not None else in_zfs

    def keyformat(self, key: bytes) -> str:
        return self.zfs.key_info(self.dataset).keyformat


def settle(thing: Rotatable, path: Path, store: keystore.OpenKeystore, target: str) -> int | None:
    """Settle ``target``'s rotation, if one is in flight; return the epoch in force.

    Idempotent: a crash inside it leaves a state that it settles the same way next time."""
    keys, epochs = store.candidates(target), store.epochs(target)
    thing.look()
    # Newest first, as the boot loader tries them.
    winner = next((i for i in reversed(range(len(keys))) if thing.accepts(keys[i])), None)
    if winner is None:
        raise RotationFailed(
            dataset=target, detail=f"{thing.tool} accepts no key the keystore holds (all kept)"
        )
    epoch = thing.settle(keys, winner, epochs[winner])
    if len(keys) > 1:
        repokey.crash_point("settled")  # the property agrees, the keystore holds both
        store.commit(target, keys[winner], thing.keyformat(keys[winner]), epochs[winner])
        bootimage.mark_stale(path)  # before the keystore forgets that the images hold both
        save(path, store, remind=False)
        repokey.crash_point("committed")  # the keystore holds the winner, the images both
        bootimage.refresh(path)
    return epoch


def rotate_key(
    thing: Rotatable, path: Path, store: keystore.OpenKeystore, target: str, keyformat: str
) -> int:
    """Give ``target`` a new random key in ``keyformat``; return its epoch. ``store`` must
    have an entry for it whose current key is accepted (settle() proves it)."""
    thing.ready()
    if len(store.candidates(target)) > 1:
        say(f"{target}: settling the rotation a crash interrupted first")
    epoch = (settle(thing, path, store, target) or 0) + 1
    old, new = store.candidates(target)[0], generate_key(keyformat)
    store.stage(target, new, keyformat, epoch)
    save(path, store, remind=False)
    repokey.crash_point("staged")  # the keystore holds both keys, the images the old one
    bootimage.refresh(path)  # before the change: every image holds the key about to be valid
    repokey.crash_point("rebuilt")
    thing.begin(epoch)
    repokey.crash_point("begun")  # the pending property is set
    try:
        thing.change(old, new, keyformat)
        failure = ""
    except thing.failure as exc:  # it may still have changed (e.g. a timeout): look, don't guess
        failure = exc.message
    repokey.crash_point("changed")  # the new key is in force, nothing settled
    settle(thing, path, store, target)
    if store.candidates(target) != [new]:
        raise RotationFailed(dataset=target, detail=failure or f"{thing.tool} kept the old key")
    if failure:
        say(f"{thing.tool} reported '{failure}' but the new key is in place")
    return epoch


def finish(
    zfs: Zfs,
    path: Path,
    store: keystore.OpenKeystore,
    dataset: str,
    prop: Names,
    now: Callable[[], float] = time.time,
) -> int | None:
    """``settle`` for a dataset."""
    return settle(ZfsRotatable(zfs, dataset, prop, now), path, store, dataset)


def rotate(
    zfs: Zfs,
    path: Path,
    store: keystore.OpenKeystore,
    dataset: str,
    keyformat: str,
    prop: Names,
    now: Callable[[], float] = time.time,
) -> int:
    """``rotate_key`` for a dataset."""
    return rotate_key(ZfsRotatable(zfs, dataset, prop, now), path, store, dataset, keyformat)


def rotatable(entry: keystore.Entry, prop: Names) -> Rotatable:
    if entry.kind == keystore.KIND_ZFS:
        return ZfsRotatable(Zfs(), entry.target, prop)
    from zkv_admin.lukscmds import LuksRotatable  # it imports this module (generate_key)

    return LuksRotatable.of(entry)


def cmd_rotate(args: argparse.Namespace) -> int:
    if args.repository_key:
        return repokey.cmd_rotate_repository_key(args)
    if args.dataset is None:
        raise UsageError("name the DATASET to rotate, or give --repository-key")
    target = args.dataset
    keystore.kind_of(target)
    prop = names(args.epoch_property)
    path = path_of(args)
    with exclusive(path):
        sealed = keystore.read(path)
        if target not in sealed.targets():
            raise EntryNotFound(target=target)
        store = open_store(args, sealed)
        entry = store.entry(target)
        raw = "raw" if entry.kind == keystore.KIND_ZFS else "keyfile"
        keyformat = raw if args.raw else "passphrase"
        epoch = rotate_key(rotatable(entry, prop), path, store, target, keyformat)
    where = f" ({prop.epoch})" if entry.kind == keystore.KIND_ZFS else ""
    say(f"{target} has a new {keyformat} key, epoch {epoch}{where}; the keystore and the")
    say("rebuilt boot images hold it")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    prop = names(args.epoch_property)
    path = path_of(args)
    with exclusive(path):
        sealed = keystore.read(path)
        for target in args.datasets:
            keystore.kind_of(target)
        targets = args.datasets or sealed.targets()
        store = open_store(args, sealed)
        _reconcile(path, store, targets, prop, bool(args.datasets))
        if not args.datasets:  # and a repository key rotation the gateway settles
            repokey.reconcile(args, path, store)
        if bootimage.is_stale(path):  # a cut after a keystore write, before its rebuild
            bootimage.refresh(path)
    return 0


def _reconcile(
    path: Path,
    store: keystore.OpenKeystore,
    targets: list[str],
    prop: Names,
    named: bool,
) -> None:
    for target in targets:
        try:
            epoch = settle(rotatable(store.entry(target), prop), path, store, target)
        except (ZfsDatasetNotFound, CryptDeviceNotFound):
            if named:
                raise
            print(f"{target}: absent (pool not imported)", flush=True)
            continue
        print(f"{target}: epoch {'-' if epoch is None else epoch}", flush=True)
