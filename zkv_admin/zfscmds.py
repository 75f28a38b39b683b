"""Commands that talk to zfs: add (with --generate: add, then rotate), verify, unlock."""

from __future__ import annotations

import argparse
from pathlib import Path

from zkv import keystore
from zkv.errors import (
    EntryExists,
    UnlockFailed,
    UsageError,
    VerifyFailed,
    ZfsKeyNotLoaded,
)
from zkv.keyload import Outcome, UnlockReport, load_entries
from zkv.zfs import KeyInfo, Zfs
from zkv_admin import lukscmds, rotation, secret_input
from zkv_admin.common import open_store, path_of, read_and_open, save, say


def cmd_add(args: argparse.Namespace) -> int:
    if (args.dataset is None) == (args.luks is None):
        raise UsageError("name either a DATASET or a LUKS device or file (--luks)")
    if args.luks is not None:
        return lukscmds.cmd_add(args)
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
        return _add_generated(args, path, zfs, info, key_source)
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
    zfs: Zfs,
    info: KeyInfo,
    key_source: str,
) -> int:
    """Add the entry with the current key if it is new, then rotate (zkv_admin/rotation.py)."""
    dataset = args.dataset
    new_format = "raw" if args.raw else args.keyformat or "passphrase"
    prop = rotation.names(args.epoch_property)
    if info.keystatus != "available":
        raise ZfsKeyNotLoaded(dataset=dataset)
    with rotation.exclusive(path):
        sealed = keystore.read(path)  # under the lock: another rotation may have written it
        store = open_store(args, sealed)
        if dataset not in sealed.datasets():
            current = _read_current_key(key_source, dataset, info.keyformat)
            zfs.load_key(dataset, current, verify_only=True)
            store.put(keystore.Entry(dataset, info.keyformat), current)
        epoch = rotation.rotate(zfs, path, store, dataset, new_format, prop)
    say(f"{dataset} now has a new {new_format} key (epoch {epoch}), held only in the keystore")
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
