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
   ``zfs set``; ``NAME:pending`` cleared; the keystore holds only the winner; images rebuilt.

A power cut anywhere leaves ZFS with one of the two keys, and the keystore and every boot
image hold it (the boot loader tries the newer key first); the next ``zkv rotate`` or
``zkv reconcile`` settles the property and the keystore. tests/cli/test_cli_rotate.py cuts
the power at every call.
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
from typing import NamedTuple

from zkv import keystore
from zkv.errors import (
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
    if keyformat == "raw":
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


def finish(
    zfs: Zfs,
    path: Path,
    store: keystore.OpenKeystore,
    dataset: str,
    prop: Names,
    now: Callable[[], float] = time.time,
) -> int | None:
    """Settle ``dataset``'s rotation, if one is in flight; return the epoch in force.

    Idempotent: a crash inside it leaves a state that it settles the same way next time."""
    keys, epochs = store.candidates(dataset), store.epochs(dataset)
    found = zfs.local_properties(dataset, list(prop))
    in_zfs = _property_epoch(dataset, prop.epoch, found.get(prop.epoch))
    # Newest first, as the boot loader tries them.
    winner = next((i for i in reversed(range(len(keys))) if accepted(zfs, dataset, keys[i])), None)
    if winner is None:
        raise RotationFailed(
            dataset=dataset, detail="zfs accepts no key the keystore holds for it (all kept)"
        )
    epoch = epochs[winner]
    if epoch is not None and epoch != in_zfs:
        zfs.set_properties(dataset, {prop.epoch: str(epoch), prop.time: _stamp(now())})
    if prop.pending in found:
        zfs.clear_property(dataset, prop.pending)
    if len(keys) > 1:
        store.commit(dataset, keys[winner], zfs.key_info(dataset).keyformat, epoch)
        save(path, store, remind=False)
        bootimage.rebuild()
    return epoch if epoch is not None else in_zfs


def rotate(
    zfs: Zfs,
    path: Path,
    store: keystore.OpenKeystore,
    dataset: str,
    keyformat: str,
    prop: Names,
    now: Callable[[], float] = time.time,
) -> int:
    """Give ``dataset`` a new random key in ``keyformat``; return its epoch. ``store`` must
    have an entry for it whose current key zfs accepts (finish() proves it)."""
    info = zfs.require_encryption_root(dataset)
    if info.keystatus != "available":
        raise ZfsKeyNotLoaded(dataset=dataset)
    if len(store.candidates(dataset)) > 1:
        say(f"{dataset}: settling the rotation a crash interrupted first")
    epoch = (finish(zfs, path, store, dataset, prop, now) or 0) + 1
    new = generate_key(keyformat)
    store.stage(dataset, new, keyformat, epoch)
    save(path, store, remind=False)
    bootimage.rebuild()  # before change-key: every image holds the key zfs is about to get
    zfs.set_properties(dataset, {prop.pending: str(epoch)})
    try:
        zfs.change_key(dataset, new, keyformat)
        failure = ""
    except ZfsError as exc:  # zfs may still have changed it (e.g. a timeout): look, don't guess
        failure = exc.message
    finish(zfs, path, store, dataset, prop, now)
    if store.candidates(dataset) != [new]:
        raise RotationFailed(dataset=dataset, detail=failure or "zfs kept the old key")
    if failure:
        say(f"zfs reported '{failure}' but the new key is in place")
    return epoch


def cmd_rotate(args: argparse.Namespace) -> int:
    if args.repository_key:
        return repokey.cmd_rotate_repository_key(args)
    if args.dataset is None:
        raise UsageError("name the DATASET to rotate, or give --repository-key")
    dataset = keystore.check_target(args.dataset)
    prop = names(args.epoch_property)
    path = path_of(args)
    keyformat = "raw" if args.raw else "passphrase"
    with exclusive(path):
        sealed = keystore.read(path)
        if dataset not in sealed.datasets():
            raise EntryNotFound(target=dataset)
        store = open_store(args, sealed)
        epoch = rotate(Zfs(), path, store, dataset, keyformat, prop)
    say(f"{dataset} has a new {keyformat} key, epoch {epoch} ({prop.epoch}); the keystore and the")
    say("rebuilt boot images hold it")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    prop = names(args.epoch_property)
    path = path_of(args)
    with exclusive(path):
        sealed = keystore.read(path)
        targets = [keystore.check_target(t) for t in args.datasets] or sealed.datasets()
        store = open_store(args, sealed)
        _reconcile(Zfs(), path, store, targets, prop, bool(args.datasets))
        if not args.datasets:  # and a repository key rotation the gateway settles
            repokey.reconcile(args, path, store)
    return 0


def _reconcile(
    zfs: Zfs,
    path: Path,
    store: keystore.OpenKeystore,
    targets: list[str],
    prop: Names,
    named: bool,
) -> None:
    for target in targets:
        try:
            epoch = finish(zfs, path, store, target, prop)
        except ZfsDatasetNotFound:
            if named:
                raise
            print(f"{target}: absent (pool not imported)", flush=True)
            continue
        print(f"{target}: epoch {'-' if epoch is None else epoch}", flush=True)
