"""Where secrets come from: a file, stdin ("-") or the terminal; never argv or the environment.

Prompts go to /dev/tty, not stdin, so a key can be piped in while a passphrase is typed. If
there is no terminal we refuse rather than let getpass fall back to reading stdin with echo.
"""

from __future__ import annotations

import getpass
import os
import sys

from zkv.errors import InputError, NoTerminal, UsageError

STDIN = "-"
MAX_SECRET = 4096


def read_secret(source: str, what: str) -> bytes:
    """A secret from a file or stdin, without one trailing newline (as zfs reads a line)."""
    data = _read(source, what)
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise InputError(f"the {what} is empty ({_describe(source)})")
    return data


def read_key(source: str, keyformat: str, what: str) -> bytes:
    """Key material for ``keyformat``; a raw key keeps its bytes except one final newline."""
    if source == STDIN and sys.stdin.isatty():
        if keyformat in ("raw", "keyfile"):
            raise UsageError(f"a {keyformat} key cannot be typed: pipe it in or use --key-file")
        return ask(f"{what}: ", "key", "--key-file")
    data = _read(source, what)
    if keyformat == "keyfile":  # cryptsetup --key-file reads every byte, a newline included
        pass
    elif keyformat != "raw" or len(data) == 33:  # 33 = 32 bytes plus a newline from echo/cat
        data = data[:-1] if data.endswith(b"\n") else data
    if not data:
        raise InputError(f"no {what} given ({_describe(source)} is empty)")
    return data


def ask(prompt: str, what: str, option: str) -> bytes:
    _require_tty(what, option)
    return getpass.getpass(prompt).encode()


def ask_new(prompt: str, what: str, option: str) -> bytes:
    """Ask twice, as passwd does, so a typo cannot lock the owner out."""
    first = ask(prompt, what, option)
    if ask("Repeat to confirm: ", what, option) != first:
        raise InputError(f"the two {what}s differ")
    return first


def check_one_stdin(*sources: str | None) -> None:
    """Two secrets cannot share stdin: refuse instead of guessing which comes first."""
    if sum(1 for s in sources if s == STDIN) > 1:
        raise UsageError("only one secret can be read from stdin ('-'); use a file for the other")


def _require_tty(what: str, option: str) -> None:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise NoTerminal(what=what, option=option) from None


def _read(source: str, what: str) -> bytes:
    try:
        if source == STDIN:
            data = sys.stdin.buffer.read(MAX_SECRET + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(MAX_SECRET + 1)
    except OSError as exc:
        raise InputError(f"cannot read the {what} from {source}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET:
        raise InputError(f"the {what} is longer than {MAX_SECRET} bytes ({_describe(source)})")
    return data


def _describe(source: str) -> str:
    return "stdin" if source == STDIN else source
