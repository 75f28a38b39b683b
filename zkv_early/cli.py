"""Command line of the boot client (``zkv-early.pyz``) and its one top-level error handler."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from zkv import __version__, errors
from zkv.errors import (
    ADMIN_CODES,
    SIGNAL_CODES,
    Interrupted,
    KeysDropped,
    KeysNotLoaded,
    UsageError,
    ZkvError,
)
from zkv.keyload import Outcome
from zkv.zfs import Zfs
from zkv_early import cmdline, handover
from zkv_early import config as configmod
from zkv_early.args import Command, Help, Option, Parser
from zkv_early.console import Console

DESCRIPTION = """\
Unlock ZFS native encryption at boot: ask the zkv gateway for approval (the owner confirms the
PIN by SMS) while the console asks for the recovery passphrase; the first answer wins. Key
material never appears on the command line, in the environment or on the console.
"""

EPILOG = f"""\
kernel command line: zkv.gateway=URL  zkv.timeout=SECONDS  zkv.debug  (rd.zkv... too)
                     zkv=off is the hooks': they then start nothing (docs/boot-client.md)

exit status (docs/exit-codes.md):
  0    the keys needed are loaded (or there was nothing to do)
{errors.exit_code_help(lambda code: code < ADMIN_CODES or code >= SIGNAL_CODES)}
Any non-zero status: the hooks fall back to OpenZFS's own passphrase prompt.
"""


def build_parser() -> Parser:
    unlock = Command(
        "unlock",
        "load the keys of the encryption roots (in the initramfs)",
        "Exit 0 once the key of every --root (default: every keystore entry whose pool is "
        "imported) is loaded; keys of other pools go to --handover.",
        [
            Option(
                "--root",
                "DATASET",
                "a dataset that must be unlocked (its encryption root is used); repeatable",
                repeat=True,
            ),
            Option(
                "--prompt",
                "MODE",
                "how to ask for the recovery passphrase: auto = systemd-ask-password in a "
                "systemd initrd, else the terminal",
                "auto",
                ("auto", "console", "ask-password", "none"),
            ),
            Option("--tty", "DEVICE", "terminal for the prompt", "/dev/console"),
            Option(
                "--after",
                "FILE",
                "start before the pools are imported: get the keystore open at once, look at "
                "the pools and load the keys only once FILE exists (the boot hook creates it)",
            ),
            Option(
                "--handover",
                "PATH",
                "where keys for later pools go, on a tmpfs",
                handover.DEFAULT_PATH,
            ),
        ],
    )
    load = Command(
        "handover-load",
        "in the real root: load the keys handed over, then wipe the file",
        "First the LUKS devices still closed (those on zvols, one that came late) and the "
        "pools on them (zpool import), then the ZFS keys. Exit 0 when nothing was handed over, "
        "or those pools imported and every key for an imported pool loaded; the file is wiped "
        "in every case.",
        [Option("--handover", "PATH", "the handover file", handover.DEFAULT_PATH)],
    )
    devices = Command(
        "handover-open",
        "in the real root, before the pool import: open the LUKS devices and loop files handed "
        "over",
        "LUKS devices on zvols are left to handover-load (their pool is not imported yet). Exit "
        "0 when every handed-over device is open or not there (handover-load then says so); "
        "the file stays for handover-load.",
        [Option("--handover", "PATH", "the handover file", handover.DEFAULT_PATH)],
    )
    return Parser(
        "zkv-early.pyz",
        DESCRIPTION,
        EPILOG,
        [
            Option("--config", "PATH", "settings file", configmod.DEFAULT_PATH),
            Option("--cmdline", "PATH", "kernel command line", cmdline.DEFAULT_PATH),
        ],
        [unlock, devices, load],
    )


class Arguments:
    """What the parser found, as attributes (args.handover, args.root ...)."""

    def __init__(self, command: str, values: dict[str, object]) -> None:
        self.command = command
        self.config = str(values["config"])
        self.cmdline = str(values["cmdline"])
        self.handover = str(values["handover"])
        self.root: list[str] = list(values.get("root", []))  # type: ignore[call-overload]
        self.prompt = str(values.get("prompt"))
        self.tty = str(values.get("tty"))
        after = values.get("after")
        self.after = None if after is None else str(after)


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["--version"]:
        print(f"zkv-early {__version__}")
        return 0
    try:
        command, values = build_parser().parse(words)
    except Help as wanted:
        print(wanted.text)
        return 0
    except UsageError as exc:
        print(f"zkv-early.pyz: {exc.message}", file=sys.stderr)
        return exc.exit_code
    args = Arguments(command, values)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    console = Console(sys.stderr)
    try:
        if args.command == "handover-load":
            return handover_load(args.handover, console)
        if args.command == "handover-open":
            return handover_open(args.handover, console)
        # Imported here: handover-load (zkv-load-keys.service in the real root) needs no gateway
        # client, TLS or prompt, and under TCG each import costs a multiple in CPU time.
        from zkv_early.boot_unlock import Options, unlock

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

            for line in traceback.format_exc().splitlines():  # say() prints one line each
                console.say(line)
        return 1
    finally:
        console.close()
        signal.signal(signal.SIGTERM, previous)


def handover_load(path: str, console: Console) -> int:
    report = handover.load(path, Zfs())
    if report.loaded:
        console.say(f"keys loaded: {', '.join(r.target for r in report.loaded)}")
    # Said on its own line: the keys' errors below, a consequence, take the exit code first; a
    # pool without native keys (ZFS on LUKS) has only this one to show for it.
    if report.not_imported is not None:
        console.say(report.not_imported.message)
    # The key is gone for this boot (the file is wiped whatever happens): fail the unit, so
    # that `systemctl --failed` and monitoring see a pool left locked, and say what to run.
    absent = [r.target for r in report.results if r.outcome is Outcome.ABSENT]
    if report.failed:
        # Each its own reason (a rejected key, a missing device): the exit line names only
        # the entries, and the keys dropped with them (their pool sat on such a device).
        for result in report.failed:
            console.say(f"{result.target}: {result.detail or result.outcome}")
        if absent:
            console.say(KeysDropped(datasets=" ".join(absent)).message)
        raise KeysNotLoaded(datasets=", ".join(r.target for r in report.failed))
    if absent:
        raise KeysDropped(datasets=" ".join(absent))
    return 0 if report.not_imported is None else report.not_imported.exit_code


def handover_open(path: str, console: Console) -> int:
    report = handover.open_devices(path, Zfs())
    if report.loaded:
        console.say(f"devices opened: {', '.join(r.target for r in report.loaded)}")
    for result in report.results:
        if not result.ok:
            console.say(f"{result.target}: {result.detail}")
    if report.failed:
        raise KeysNotLoaded(datasets=", ".join(r.target for r in report.failed))
    return 0


def _systemd_initrd() -> bool:
    return os.path.isdir("/run/systemd/system")


if __name__ == "__main__":
    sys.exit(main())
