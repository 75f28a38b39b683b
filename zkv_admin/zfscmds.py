"""Commands that talk to zfs: add (and rotate with --generate), verify, unlock."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from zkv import keystore
from zkv.errors import (
    EntryExists,
    RotationFailed,
    UnlockFailed,
    UsageError,
    VerifyFailed,
    ZfsDatasetNotFound,
    ZfsError,
    ZfsKeyNotLoaded,
    ZfsNotEncryptionRoot,
    ZfsUnavailable,
)
from zkv.keyload import Outcome, UnlockReport, load_entries
from zkv.zfs import KeyInfo, Zfs
from zkv_admin import secret_input
from zkv_admin.common import open_store, path_of, read_and_open, save, say


def generate_key(keyformat: str) -> bytes:
    if keyformat == "raw":
        return os.urandom(32)
    if keyformat == "hex":
        return os.urandom(32).hex().encode()
    return secrets.token_urlsafe(32).encode()  # 43 characters, about 256 bits


def _works(zfs: Zfs, dataset: str, key: bytes) -> bool:
    """Dry-run check. Only a missing dataset or zfs is fatal: a staged key in another format
    ("Raw key too short") or a timeout means "not this key", which keeps both in the keystore."""
    try:
        zfs.load_key(dataset, key, verify_only=True)
    except (ZfsDatasetNotFound, ZfsNotEncryptionRoot, ZfsUnavailable):
        raise
    except ZfsError:
        return False
    return True


def cmd_add(args: argparse.Namespace) -> int:
    key_source = args.key_file or secret_input.STDIN
    secret_input.check_one_stdin(
        key_source, args.repository_key_file, args.recovery_passphrase_file
    )
    keystore.check_target(args.dataset)
    path = path_of(args)
    sealed = keystore.read(path)  # fail before asking for anything if there is no keystore
    zfs = Zfs()
    info = zfs.require_encryption_root(args.dataset)
    if args.generate:
        return _add_generated(args, path, sealed, zfs, info, key_source)
    keyformat = args.keyformat or info.keyformat
    if keyformat != info.keyformat:
        raise UsageError(
            f"{args.dataset} has keyformat {info.keyformat}, not {keyformat} "
            "(use --generate to give it a new key in another format)"
        )
    material = _read_current_key(key_source, args.dataset, keyformat)
    zfs.load_key(args.dataset, material, verify_only=True)
    store = open_store(args, sealed)
    if args.dataset in sealed.datasets() and not args.force:
        raise EntryExists(target=args.dataset)
    store.put(keystore.Entry(args.dataset, keyformat), material)
    save(path, store)
    say(f"added {args.dataset} ({keyformat}); zfs accepted the key")
    return 0


def _read_current_key(source: str, dataset: str, keyformat: str) -> bytes:
    material = secret_input.read_key(source, keyformat, f"current key of {dataset}")
    return keystore.check_material(keyformat, material)


def _add_generated(
    args: argparse.Namespace,
    path: Path,
    sealed: keystore.SealedKeystore,
    zfs: Zfs,
    info: KeyInfo,
    key_source: str,
) -> int:
    """Rotate to a fresh key so that a crash at any step leaves a keystore that still opens.

    1. keystore holds [current, new] and is written; 2. zfs change-key; 3. zfs load-key -n
    with the new key; 4. keystore holds [new] and is written. The boot client tries the
    candidates in order, so after a crash between 1 and 4 one of them works.
    """
    dataset, new_format = args.dataset, args.keyformat or "raw"
    if info.keystatus != "available":
        raise ZfsKeyNotLoaded(dataset=dataset)
    store = open_store(args, sealed)
    if dataset in sealed.datasets():
        current = next((k for k in store.candidates(dataset) if _works(zfs, dataset, k)), None)
        if current is None:
            raise RotationFailed(dataset=dataset, detail="no key in the keystore opens it now")
    else:
        current = _read_current_key(key_source, dataset, info.keyformat)
        zfs.load_key(dataset, current, verify_only=True)
    new = generate_key(new_format)
    store.put(keystore.Entry(dataset, info.keyformat), current)
    store.stage(dataset, new, new_format)
    save(path, store, remind=False)
    try:
        zfs.change_key(dataset, new, new_format)
        failure = ""
    except ZfsError as exc:  # zfs may still have changed it (e.g. a timeout): look, don't guess
        failure = exc.message
    if _works(zfs, dataset, new):
        store.commit(dataset, new, new_format)
    elif _works(zfs, dataset, current):
        store.put(keystore.Entry(dataset, info.keyformat), current)
        save(path, store, remind=False)
        raise RotationFailed(dataset=dataset, detail=failure or "zfs kept the old key")
    else:
        raise RotationFailed(
            dataset=dataset, detail="neither key verifies; the keystore keeps both"
        )
    save(path, store)
    say(f"{dataset} now has a new {new_format} key, held only in the keystore")
    if failure:
        say(f"zfs reported '{failure}' but the new key is in place")
    return 0


def _print_report(report: UnlockReport) -> None:
    for result in report.results:
        line = f"{result.target}: {result.outcome}"
        if result.candidate:
            line += " (with the staged key of an interrupted rotation)"
        print(f"{line}: {result.detail}" if result.detail else line, flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    secret_input.check_one_stdin(args.repository_key_file, args.recovery_passphrase_file)
    _, store = read_and_open(args)
    report = load_entries(store, Zfs(), args.datasets or None, verify_only=True)
    _print_report(report)
    bad = [r for r in report.results if r.outcome is not Outcome.VERIFIED]
    if bad:
        raise VerifyFailed(count=len(bad), total=len(report.results))
    if not report.results:
        say("the keystore has no entries")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    secret_input.check_one_stdin(args.repository_key_file, args.recovery_passphrase_file)
    _, store = read_and_open(args)
    report = load_entries(store, Zfs(), args.datasets or None)
    _print_report(report)
    # A pool that is not imported is fine for "unlock everything", not when it was named.
    bad = [r for r in report.results if not r.ok and (args.datasets or r in report.failed)]
    if bad:
        raise UnlockFailed(count=len(bad), total=len(report.results))
    return 0
