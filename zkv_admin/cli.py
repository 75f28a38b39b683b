"""``zkv``: the argparse tree, dispatch, and the one place errors become exit codes.

Every failure a person can cause is a ZkvError: one line ``zkv: error: <message>`` on stderr
and the exit code listed in docs/exit-codes.md. Anything else is a bug: one line "internal
error" (a traceback only with --debug), exit 1. The seed tool's ``zkv fs ...`` spellings are
aliases; its key-on-the-command-line options still parse, but only to be refused.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from zkv import __version__, keystore, paths
from zkv.errors import Interrupted, UsageError, ZkvError
from zkv.zpool import LAYOUTS
from zkv_admin import (
    common,
    doctor,
    enroll,
    filepool,
    heartbeat,
    keycmds,
    reboot,
    rotation,
    zfscmds,
)

Handler = Callable[[argparse.Namespace], int]
KEYFORMATS = keystore.KEYFORMATS


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse echoes unrecognized arguments, which may be a pasted key: never repeat them.
        if message.startswith("unrecognized arguments"):
            message = "unexpected extra arguments; keys are never accepted on the command line"
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parents(seed_spellings: bool = True) -> dict[str, Parser]:
    """``seed_spellings``: also parse (to refuse) the seed tool's key options."""
    store = Parser(add_help=False)
    store.add_argument(
        "--keystore",
        metavar="PATH",
        help=f"keystore file (default: ${keystore.ENV_PATH} or {paths.KEYSTORE})",
    )
    store.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="")
    # Seed-tool spellings that carried a key in argv: parsed only so they can be refused.
    store.add_argument(
        "-k",
        "--repository-key" if seed_spellings else "--repository_key",
        *(("--repository_key",) if seed_spellings else ()),
        dest="secret_option",
        metavar="KEY",
        help=argparse.SUPPRESS,
    )
    opener = Parser(add_help=False)
    group = opener.add_argument_group("opening the keystore (default: ask for the passphrase)")
    group.add_argument(
        "--repository-key-file", metavar="PATH|-", help="read the repository key (hex) from here"
    )
    group.add_argument(
        "--recovery-passphrase-file", metavar="PATH|-", help="read the recovery passphrase here"
    )
    return {"store": store, "opener": opener}


def _add_commands(sub: argparse._SubParsersAction[Parser], seed: bool) -> None:
    """The commands; ``seed`` adds the seed tool's short options to the ``fs`` aliases."""
    p = _parents()
    both = [p["store"], p["opener"]]

    def command(name: str, handler: Handler, help_: str, parents: list[Parser]) -> Parser:
        parser = sub.add_parser(name, help=help_, description=help_, parents=parents)
        parser.set_defaults(handler=handler)
        return parser

    init = command("init", keycmds.cmd_init, "create a keystore", [p["store"]])
    init.add_argument("-f", "--force", action="store_true", help="overwrite an existing keystore")
    init.add_argument(
        "--repository-key-file",
        metavar="PATH|-",
        help="write the new repository key here (0600), or only it to stdout with '-'",
    )
    init.add_argument(
        "--recovery-passphrase-file", metavar="PATH|-", help="read the recovery passphrase here"
    )
    init.add_argument(
        "-m", "--machine-readable", action="store_true", help="same as --repository-key-file -"
    )

    add = command(
        "add", zfscmds.cmd_add, "add the key of an encryption root or a LUKS device", both
    )
    add.add_argument("dataset", metavar="DATASET", nargs="?")
    add.add_argument("secret_positional", nargs="?", help=argparse.SUPPRESS)
    add.add_argument(
        "--luks",
        metavar="DEVICE|FILE",
        help="a LUKS device (UUID=..., PARTUUID=..., /dev/...) or LUKS image file instead",
    )
    add.add_argument("--key-file", metavar="PATH|-", help="read the key here (default: stdin)")
    add.add_argument(
        "--keyformat",
        choices=KEYFORMATS,
        help="default: the dataset's (passphrase with --generate or --luks; keyfile: LUKS only)",
    )
    add.add_argument(
        "--generate",
        action="store_true",
        help="then give the dataset a new random key, as 'zkv rotate' does (--luks: a new "
        "keyslot with a new random key)",
    )
    add.add_argument("-f", "--force", action="store_true", help="replace an existing entry")
    _rotation_options(add)

    listing = command("list", keycmds.cmd_list, "list entries (needs no key)", [p["store"]])
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("-p", "--plaintext", action="store_true", help=argparse.SUPPRESS)

    remove = command("remove", keycmds.cmd_remove, "remove an entry", both)
    remove.add_argument("dataset", metavar="DATASET")
    remove.add_argument("-f", "--force", action="store_true", help="a missing entry is fine")
    if seed:
        return

    for name, handler, help_ in (
        ("verify", zfscmds.cmd_verify, "check every key with a dry-run zfs load-key -n"),
        ("unlock", zfscmds.cmd_unlock, "load the keys now (all, or the named datasets)"),
    ):
        command(name, handler, help_, both).add_argument("datasets", metavar="DATASET", nargs="*")

    passwd = command("passwd", keycmds.cmd_passwd, "change the recovery passphrase", both)
    passwd.add_argument(
        "--new-passphrase-file", metavar="PATH|-", help="read the new passphrase here"
    )

    enrol = command("enroll", enroll.cmd_enroll, "register this host with the gateway", both)
    enrol.add_argument("--gateway", metavar="URL", required=True, help="https://gateway.example")
    enrol.add_argument("--ca", metavar="FILE", help="CA bundle that signed the gateway's cert")
    enrol.add_argument(
        "--hostname", help="the name the invite was issued for (default: this host's)"
    )
    enrol.add_argument(
        "--token-file", metavar="PATH|-", help="read the invite token here (default: stdin/ask)"
    )
    enrol.add_argument(
        "--token", action="store_true", help="ask for the invite token (the default)"
    )
    enrol.add_argument(
        "--tpm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the host key in the TPM 2.0 (default: when /dev/tpmrm0 exists)",
    )
    enrol.add_argument(
        "--tcti", default=enroll.TCTI, help=f"how tpm2-tools reach the TPM ({enroll.TCTI})"
    )

    plain = _parents(seed_spellings=False)  # rotate's --repository-key is a flag
    rotate = command(
        "rotate",
        rotation.cmd_rotate,
        "give a dataset a new random key and epoch, or (--repository-key) the host a new "
        "repository key through the gateway; safe against a power cut at any step",
        [plain["store"], plain["opener"]],
    )
    rotate.add_argument("dataset", metavar="DATASET", nargs="?")
    rotate.add_argument(
        "--repository-key",
        action="store_true",
        help="a new repository key, approved by the owner, written by the gateway",
    )
    _rotation_options(rotate)
    _config_option(rotate)
    reconcile = command(
        "reconcile",
        rotation.cmd_reconcile,
        "settle rotations a crash interrupted: keystore and epoch property follow zfs's key",
        both,
    )
    reconcile.add_argument("datasets", metavar="DATASET", nargs="*")
    _epoch_option(reconcile)
    _config_option(reconcile)

    command("doctor", doctor.cmd_doctor, "check the installation", [p["store"]])

    create = command(
        "filepool",
        filepool.cmd_create,
        "create: sparse files, each a LUKS2 image with its own key (kept in the keystore) on a "
        "loop device, and a pool over them, imported at boot",
        both,
    )
    create.add_argument("action", choices=("create",), help="what to do (create)")
    create.add_argument("name", metavar="NAME", help="the pool's name")
    create.add_argument("dir", metavar="DIR", help="where the files go (NAME-0.img ...)")
    create.add_argument("--files", type=int, required=True, metavar="N", help="how many files")
    create.add_argument("--size", required=True, metavar="S", help="each file's size: 1G, 512M")
    layout = create.add_mutually_exclusive_group()
    layout.add_argument(
        "--raidz2",
        dest="layout",
        action="store_const",
        const="raidz2",
        help="RAID-Z2 over the files (any two may be lost)",
    )
    layout.add_argument("--layout", choices=LAYOUTS, help="the vdev layout (default: raidz2)")
    create.set_defaults(layout="raidz2")

    beat = command(
        "heartbeat",
        heartbeat.cmd_heartbeat,
        "tell the gateway this host runs (dead-man switch); carry out a remote wipe",
        [p["store"]],
    )
    _config_option(beat)
    planned = command(
        "reboot",
        reboot.cmd_reboot,
        "before a planned reboot: ask the owners to approve its boot ahead, then reboot",
        [p["store"]],
    )
    planned.add_argument(
        "--approve-ahead", action="store_true", help="ask now; the next boot does not wait"
    )
    planned.add_argument(
        "--within",
        metavar="DURATION",
        default="30m",
        help="the window for that boot: 90s, 30m, 2h; at most 24h (default %(default)s)",
    )
    planned.add_argument(
        "--no-reboot", action="store_true", help="only obtain the approval; reboot yourself"
    )
    _config_option(planned)


def _config_option(parser: Parser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", default=paths.EARLY_CONF, help="gateway settings (%(default)s)"
    )


def _epoch_option(parser: Parser) -> None:
    parser.add_argument(
        "--epoch-property",
        metavar="NAME",
        default=rotation.DEFAULT_PROPERTY,
        help="user property for the key's epoch; NAME:time and NAME:pending go with it "
        f"(default {rotation.DEFAULT_PROPERTY})",
    )


def _rotation_options(parser: Parser) -> None:
    _epoch_option(parser)
    parser.add_argument(
        "--raw",
        action="store_true",
        help="a raw key (default: a passphrase, which OpenZFS's own prompt can still take)",
    )


def build_parser() -> Parser:
    parser = Parser(prog="zkv", description="Manage the zkv keystore of ZFS keys.")
    parser.add_argument("--version", action="version", version=f"zkv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_commands(sub, seed=False)
    fs = sub.add_parser("fs", help="the seed tool's spellings of init/add/list/remove")
    _add_commands(fs.add_subparsers(dest="fs_command", metavar="COMMAND", required=True), True)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.refuse_secrets_in_argv(args)
    handler: Handler = args.handler
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(arguments)
    except ZkvError as exc:
        return _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        return _fail(Interrupted().message, Interrupted.exit_code)
    except Exception:
        if "--debug" in arguments:
            traceback.print_exc()
        return _fail("internal error (run again with --debug for details)", 1)


def _fail(message: str, code: int) -> int:
    print(f"zkv: error: {message}", file=sys.stderr)
    return code
