"""Commands that only touch the keystore file: init, list, remove, passwd."""

from __future__ import annotations

import argparse
import json

from zkv import keystore
from zkv.errors import EntryNotFound, KeystoreExists, UsageError
from zkv.fsutil import atomic_write
from zkv_admin import secret_input
from zkv_admin.common import open_store, path_of, read_and_open, save, say

NEW_PASSPHRASE = "New recovery passphrase: "  # noqa: S105 (a prompt)


def _new_passphrase(source: str | None, option: str) -> bytes:
    if source is not None:
        passphrase = secret_input.read_secret(source, "recovery passphrase")
    else:
        passphrase = secret_input.ask_new(NEW_PASSPHRASE, "recovery passphrase", option)
    keystore.check_recovery_passphrase(passphrase)
    return passphrase


def cmd_init(args: argparse.Namespace) -> int:
    path = path_of(args)
    key_out = "-" if args.machine_readable else args.repository_key_file
    if path.exists() and not args.force:
        raise KeystoreExists(path=str(path))
    passphrase = _new_passphrase(args.recovery_passphrase_file, "--recovery-passphrase-file")
    repository_key = keystore.new_repository_key()
    store = keystore.create(repository_key, passphrase)
    text = keystore.format_repository_key(repository_key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key_out not in (None, secret_input.STDIN):
        # Before the keystore, so a keystore never exists whose repository key was not kept.
        atomic_write(key_out, f"{text}\n".encode(), mode=0o600)
    save(path, store)
    say(f"created {path} (host id {store.host_id})")
    if key_out == secret_input.STDIN:
        print(text, flush=True)
    elif key_out is None:
        print("Repository key (shown only this once; store it in Azure Key Vault):")
        print(f"    {text}", flush=True)
    else:
        say(
            f"repository key written to {key_out} (mode 0600): move it to Key Vault, then delete it"
        )
    say("next: 'zkv add DATASET' for each encryption root, then 'zkv enroll --gateway URL'")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.plaintext:
        raise UsageError("zkv never prints keys; 'zkv verify' checks them against zfs")
    path = path_of(args)
    sealed = keystore.read(path)
    if args.json:
        document = {
            "keystore": str(path),
            "host_id": sealed.host_id,
            "entries": [
                {"target": e.target, "keyformat": e.keyformat, "kind": e.kind}
                for e in sealed.entries
            ],
            "slots": [s.kind for s in sealed.slots],
        }
        print(json.dumps(document, indent=2))
        return 0
    for entry in sealed.entries:
        print(f"{entry.target}\t{entry.keyformat}")
    if not sealed.entries:
        say("the keystore has no entries yet (add one with 'zkv add DATASET')")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    secret_input.check_one_stdin(args.repository_key_file, args.recovery_passphrase_file)
    path = path_of(args)
    sealed = keystore.read(path)
    if args.dataset not in sealed.targets():
        if args.force:
            say(f"{args.dataset} is not in the keystore; nothing to do")
            return 0
        raise EntryNotFound(target=args.dataset)
    store = open_store(args, sealed)
    kind = store.entry(args.dataset).kind
    store.remove(args.dataset)
    save(path, store)
    where = "in zfs" if kind == keystore.KIND_ZFS else "in its LUKS keyslot"
    say(f"removed {args.dataset} (its key stays valid {where}; change it if it leaked)")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    secret_input.check_one_stdin(
        args.repository_key_file, args.recovery_passphrase_file, args.new_passphrase_file
    )
    path, store = read_and_open(args)
    store.set_recovery_passphrase(
        _new_passphrase(args.new_passphrase_file, "--new-passphrase-file")
    )
    save(path, store)
    say("recovery passphrase changed")
    return 0
