"""Kernel command-line switches for the boot client (read from /proc/cmdline).

    zkv.gateway=URL              use another gateway for this boot
    zkv.timeout=SECONDS          overall time limit of ``unlock``
    zkv.debug                    more console output (never key material)

The ``rd.`` prefix is accepted for every switch, as dracut users expect it. ``zkv=off`` is not
the client's: the hooks decide it (zkv_disabled in zkv-lib.sh) and then never start it.
"""

from __future__ import annotations

from typing import NamedTuple

from zkv import paths
from zkv.errors import ConfigError

DEFAULT_PATH = paths.CMDLINE
_OFF = ("off", "0", "no", "false")


class Overrides(NamedTuple):
    gateway: str | None = None
    timeout: float | None = None
    debug: bool = False


def split(text: str) -> list[str]:
    """Split like the kernel's next_arg(): whitespace separates, double quotes group (and are
    dropped), an unbalanced quote runs to the end; quotes ' and backslashes are plain text."""
    words: list[str] = []
    word: list[str] = []
    quoted = started = False
    for char in text:
        if char == '"':
            quoted, started = not quoted, True
        elif char.isspace() and not quoted:
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(char)
            started = True
    if started:
        words.append("".join(word))
    return words


def parse(text: str) -> Overrides:
    gateway, timeout, debug = None, None, False
    for word in split(text):
        name, has_value, value = word.partition("=")
        name = name.removeprefix("rd.")
        if name == "zkv.gateway" and value:
            gateway = value
        elif name == "zkv.timeout":
            timeout = _seconds(value)
        elif name == "zkv.debug":
            debug = not has_value or value.lower() not in _OFF
    return Overrides(gateway=gateway, timeout=timeout, debug=debug)


def read(path: str = DEFAULT_PATH) -> Overrides:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse(handle.read(64 * 1024))
    except FileNotFoundError:
        return Overrides()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"zkv.timeout={value!r} is not a number of seconds") from None
    if not 0 < seconds <= 24 * 3600:
        raise ConfigError(f"zkv.timeout={value!r} must be between 0 and 86400 seconds")
    return seconds
