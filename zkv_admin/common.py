"""What most commands share: locating, opening and saving the keystore, and talking to people.

Data a script may consume goes to stdout; notices and reminders go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zkv import keystore
from zkv.errors import SecretOnCommandLine
from zkv_admin import secret_input

REBUILD_HINT = (
    "the boot image holds a copy of the keystore: rebuild it now "
    "('update-initramfs -u -k all' or 'dracut -f --regenerate-all')"
)
PIPE_HINT = (
    "pipe it instead, e.g. 'cat KEYFILE | zkv add DATASET' or "
    "'az keyvault secret show ... --query value -o tsv | zkv ... --repository-key-file -'"
)


def say(message: str) -> None:
    print(f"zkv: {message}", file=sys.stderr)


def refuse_secrets_in_argv(args: argparse.Namespace) -> None:
    """The seed tool took keys as arguments (visible in ps and shell history): refuse them."""
    if getattr(args, "secret_option", None) is not None:
        raise SecretOnCommandLine(detail=f"a key was given with -k/--repository-key; {PIPE_HINT}")
    if getattr(args, "secret_positional", None) is not None:
        raise SecretOnCommandLine(detail=f"a key was given as an argument; {PIPE_HINT}")


def path_of(args: argparse.Namespace) -> Path:
    return keystore.resolve_path(args.keystore)


def open_store(args: argparse.Namespace, sealed: keystore.SealedKeystore) -> keystore.OpenKeystore:
    """Open with the repository key if a file was given, else with the recovery passphrase."""
    if args.repository_key_file is not None:
        text = secret_input.read_secret(args.repository_key_file, "repository key")
        return sealed.open_with_repository_key(keystore.parse_repository_key(text))
    if args.recovery_passphrase_file is not None:
        passphrase = secret_input.read_secret(args.recovery_passphrase_file, "recovery passphrase")
    else:
        passphrase = secret_input.ask(
            "Recovery passphrase: ", "recovery passphrase", "--recovery-passphrase-file"
        )
    return sealed.open_with_passphrase(passphrase)


def read_and_open(args: argparse.Namespace) -> tuple[Path, keystore.OpenKeystore]:
    path = path_of(args)
    return path, open_store(args, keystore.read(path))


def save(path: Path, store: keystore.OpenKeystore, remind: bool = True) -> None:
    keystore.write(path, store)
    if remind:
        say(REBUILD_HINT)
