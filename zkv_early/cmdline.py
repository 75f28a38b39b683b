"""Kernel command-line switches for the boot client (read from /proc/cmdline).

    zkv.gateway=URL              use another gateway for this boot
    zkv.timeout=SECONDS          overall time limit of ``unlock``
    zkv.debug                    more console output (never key material)

The ``rd.`` prefix is accepted for every switch, as dracut users expect it. ``zkv=off`` is not
the client's: the hooks decide it (zkv_disabled in zkv-lib.sh) and then never start it.

The same reading finds the options that give whoever is at the console a shell or another init
(``rd.break``, ``init=``, ``single``, ``emergency``, ...): ``boot_flags`` maps them to the names
of protocol.BOOT_FLAGS, which the unlock request reports, signed, with the command line's
SHA-256, so the owner sees a tampered boot before approving it (docs/boot-client.md).
"""

from __future__ import annotations

from typing import NamedTuple

from zkv import paths
from zkv.errors import ConfigError
from zkv.protocol import BootContext

DEFAULT_PATH = paths.CMDLINE
_OFF = ("off", "0", "no", "false")
MAX_READ = 64 * 1024

# Words without "=" that the kernel hands to init as arguments: runlevels and targets.
_INIT_WORDS = {
    "single": "single",
    "s": "single",
    "S": "single",
    "1": "single",
    "-s": "single",
    "emergency": "emergency",
    "-b": "emergency",
    "rescue": "rescue",
}
_UNITS = {"emergency": "emergency", "rescue": "rescue"}  # systemd.unit=<this>[.target]
# Switches on unless their value is off: the kernel command line name -> the flag.
_SWITCHES = {
    "rd.break": "rd.break",  # rd.break, rd.break=pre-mount: dracut's shell at a hook
    "break": "break",  # initramfs-tools' shell at a stage
    "rd.shell": "rd.shell",
    "rd.debug": "rd.debug",
    "debug": "debug",
    "systemd.debug_shell": "debug-shell",
    "systemd.debug-shell": "debug-shell",
    "zkv.debug": "zkv.debug",
    "rd.zkv.debug": "zkv.debug",
}
_USUAL_INIT = ("/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd", "/init")


class Overrides(NamedTuple):
    gateway: str | None = None
    timeout: float | None = None
    debug: bool = False
    boot: BootContext = BootContext.of((), b"")


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


def boot_flags(words: list[str]) -> set[str]:
    """The BOOT_FLAGS names of the debug, break and other-init options among ``words``."""
    flags = set()
    for word in words:
        name, has_value, value = word.partition("=")
        on = not has_value or value.lower() not in _OFF
        if not has_value and word in _INIT_WORDS:
            flags.add(_INIT_WORDS[word])
        elif name in _SWITCHES and on:
            flags.add(_SWITCHES[name])
        elif name in ("init", "rdinit") and has_value and value not in _USUAL_INIT:
            flags.add(name)
        elif name in ("systemd.unit", "rd.systemd.unit"):
            unit = value.removesuffix(".target")
            if unit in _UNITS:
                flags.add(_UNITS[unit])
    return flags


def parse(text: str, raw: bytes | None = None) -> Overrides:
    """``raw``: the bytes ``text`` was decoded from, which the digest covers."""
    gateway, timeout, debug = None, None, False
    words = split(text)
    for word in words:
        name, has_value, value = word.partition("=")
        name = name.removeprefix("rd.")
        if name == "zkv.gateway" and value:
            gateway = value
        elif name == "zkv.timeout":
            timeout = _seconds(value)
        elif name == "zkv.debug":
            debug = not has_value or value.lower() not in _OFF
    boot = BootContext.of(boot_flags(words), text.encode() if raw is None else raw)
    return Overrides(gateway=gateway, timeout=timeout, debug=debug, boot=boot)


def read(path: str = DEFAULT_PATH) -> Overrides:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_READ)
        return parse(raw.decode("utf-8", errors="replace"), raw)
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
