"""Command line of the boot client (``zkv-early.pyz``) and its one top-level error handler."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from . import __version__, cmdline, handover
from . import config as configmod
from .console import Console
from .errors import Interrupted, KeysNotLoaded, ZkvError
from .unlock import Outcome
from .zfs import Zfs

DESCRIPTION = """\
Unlock ZFS native encryption at boot: ask the zkv gateway for approval (the owner confirms the
PIN by SMS) while the console asks for the recovery passphrase; the first answer wins. Key
material never appears on the command line, in the environment or on the console.
"""

EPILOG = """\
kernel command line: zkv=off  zkv.gateway=URL  zkv.timeout=SECONDS  zkv.debug
                     (rd.zkv... is accepted too)

exit status (docs/exit-codes.md):
  0   the keys needed are loaded (or there was nothing to do)
  2   usage error            3  configuration error     13 keystore damaged
  15  keystore did not open with the released key or passphrase
  16  --root has no keystore entry                       19 host key missing or bad
  2x  zfs errors             31 gateway unreachable     32 refused (host not enrolled)
  33  denied                 34 request expired         36 unexpected gateway answer
  40  network did not come up                            41 too many wrong passphrases
  42  disabled by zkv=off    43 overall timeout         44 keys not loaded
  45  no way to prompt       46 handover file problem   47 pools not imported (--after)
  130 interrupted
Any non-zero status: the hooks fall back to OpenZFS's own passphrase prompt.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zkv-early.pyz",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zkv-early {__version__}")
    parser.add_argument(
        "--config", default=configmod.DEFAULT_PATH, help="settings file (default: %(default)s)"
    )
    parser.add_argument(
        "--cmdline", default=cmdline.DEFAULT_PATH, help="kernel command line (default: %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "unlock",
        help="load the keys of the encryption roots (in the initramfs)",
        description="Exit 0 once the key of every --root (default: every keystore entry whose "
        "pool is imported) is loaded; keys of pools not imported yet go to --handover.",
    )
    run.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DATASET",
        help="a dataset that must be unlocked (its encryption root is used); repeatable",
    )
    run.add_argument(
        "--prompt",
        choices=("auto", "console", "ask-password", "none"),
        default="auto",
        help="how to ask for the recovery passphrase: auto = systemd-ask-password in a "
        "systemd initrd, else the terminal (default: %(default)s)",
    )
    run.add_argument(
        "--tty", default="/dev/console", help="terminal for the prompt (default: %(default)s)"
    )
    run.add_argument(
        "--after",
        metavar="FILE",
        help="start before the pools are imported: get the keystore open at once, look at the "
        "pools and load the keys only once FILE exists (the boot hook creates it)",
    )
    run.add_argument(
        "--handover",
        default=handover.DEFAULT_PATH,
        help="where keys for later pools go, on a tmpfs (default: %(default)s)",
    )
    load = commands.add_parser(
        "handover-load",
        help="in the real root: load the keys handed over, then wipe the file",
        description="Exit 0 when nothing was handed over or every key for an imported pool "
        "loaded; the file is wiped in every case.",
    )
    load.add_argument("--handover", default=handover.DEFAULT_PATH, help="default: %(default)s")
    return parser


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    console = Console(sys.stderr)
    try:
        if args.command == "handover-load":
            return handover_load(args.handover, console)
        # Imported here: handover-load (zkv-load-keys.service in the real root) needs no gateway
        # client, TLS or prompt, and under TCG each import costs a multiple in CPU time.
        from .boot import Options, unlock

        config = configmod.load(args.config, args.cmdline)
        console.debugging = config.debug
        tty_console = args.prompt == "console" or (args.prompt == "auto" and not _systemd_initrd())
        if tty_console:
            console = Console.open(args.tty, config.debug)
        options = Options(args.root, args.prompt, args.tty, args.handover, args.after)
        unlock(config, options, console)
        return 0
    except ZkvError as exc:
        console.say(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        console.say(Interrupted().message)
        return Interrupted.exit_code
    except Exception:
        # A bug: the hooks fall back to OpenZFS's prompt. Tracebacks show code, not values.
        console.say("internal error (please report it)")
        if console.debugging:
            import traceback  # only here: 3 ms of import on every boot otherwise

            console.say(traceback.format_exc())
        return 1
    finally:
        console.close()
        signal.signal(signal.SIGTERM, previous)


def handover_load(path: str, console: Console) -> int:
    report = handover.load(path, Zfs())
    if report.loaded:
        console.say(f"keys loaded: {', '.join(r.target for r in report.loaded)}")
    absent = [r.target for r in report.results if r.outcome is Outcome.ABSENT]
    if absent:
        console.say(f"pools not imported, their keys were dropped: {', '.join(absent)}")
    if report.failed:
        raise KeysNotLoaded(datasets=", ".join(r.target for r in report.failed))
    return 0


def _systemd_initrd() -> bool:
    return os.path.isdir("/run/systemd/system")


if __name__ == "__main__":
    sys.exit(main())
