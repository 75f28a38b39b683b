"""The boot client's settings: /etc/zkv/early.conf (INI) inside the initramfs, then the kernel
command line on top (see cmdline.py). Unknown sections or options are errors, so a typo is
found when the image is built and tested, not silently ignored at boot.

    [gateway]
    url = https://zkv.example.net:8443     # required
    ca_file = /etc/zkv/gateway-ca.pem       # the CA that signs the gateway's certificate, or
                                            # "system": any CA of the system bundle (weaker)
    pin_sha256 = base64                     # and/or: the gateway's public key (SPKI SHA-256,
                                            # several for a rotation); an https url needs one
    request_timeout = 15                    # seconds for one HTTP exchange (plus the long-poll)

    [host]
    keystore = /etc/zkv/keystore
    host_key = /etc/zkv/host.key
    name =                                  # default: /etc/hostname, then the kernel's

    [timeouts]
    network = 60                            # wait for link, address, route, DNS
    total = 300                             # the whole unlock, approval included
    fallback = 120                          # recovery prompt kept open after the gateway gave
                                            # up (denied, expired, bad release); 0 = exit at once
    zfs = 30                                # one zfs call (a passphrase key's PBKDF2 included)

    [network]
    interfaces = eth0 enp1s0                # only these count as "link up" (default: any)

    [prompt]
    attempts = 3                            # wrong recovery passphrases before giving up
"""

from __future__ import annotations

import configparser
import socket
from typing import NamedTuple

from zkv import paths
from zkv.encoding import unb64
from zkv.errors import ConfigError
from zkv.protocol import BootContext
from zkv_early import cmdline
from zkv_early.http11 import Url

DEFAULT_PATH = paths.EARLY_CONF
SYSTEM_CA = "system"  # ca_file = system: the system bundle, only when asked for

_OPTIONS: dict[str, set[str]] = {
    "gateway": {"url", "ca_file", "pin_sha256", "request_timeout"},
    "host": {"keystore", "host_key", "name"},
    "timeouts": {"network", "total", "fallback", "zfs"},
    "network": {"interfaces"},
    "prompt": {"attempts"},
}
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class Config(NamedTuple):
    gateway_url: str
    ca_file: str = ""  # none: then the pins are the only trust
    pins: tuple[str, ...] = ()  # base64 SHA-256 of the gateway's SubjectPublicKeyInfo
    request_timeout: float = 15.0
    keystore: str = paths.IMAGE_KEYSTORE
    host_key: str = paths.IMAGE_HOST_KEY
    hostname: str = ""
    network_timeout: float = 60.0
    total_timeout: float = 300.0
    fallback_timeout: float = 120.0
    zfs_timeout: float = 30.0
    interfaces: tuple[str, ...] = ()
    attempts: int = 3
    debug: bool = False
    boot: BootContext | None = None  # this boot's flags and command-line digest (cmdline.py)

    @property
    def gateway_host(self) -> str:
        return Url(self.gateway_url).host

    @property
    def gateway_is_loopback(self) -> bool:
        host = self.gateway_host
        return host in _LOOPBACK or host.startswith("127.")


_DEFAULTS = Config._field_defaults


def parse(text: str, source: str = DEFAULT_PATH) -> Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    for section in parser.sections():
        if section not in _OPTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]")
        unknown = set(parser[section]) - _OPTIONS[section]
        if unknown:
            raise ConfigError(f"{source}: unknown option {sorted(unknown)[0]!r} in [{section}]")

    def get(section: str, option: str, default: str) -> str:
        return parser.get(section, option, fallback=default).strip() or default

    def number(section: str, option: str, default: float, low: float, high: float) -> float:
        raw = get(section, option, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{source}: [{section}] {option} = {raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{source}: [{section}] {option} must be in {low:g}..{high:g}")
        return value

    interfaces = get("network", "interfaces", "").replace(",", " ").split()
    ca_file = get("gateway", "ca_file", "")
    pins = tuple(get("gateway", "pin_sha256", "").replace(",", " ").split())
    for pin in pins:
        if not _is_pin(pin):
            raise ConfigError(f"{source}: [gateway] pin_sha256 {pin!r} is not a base64 SHA-256")
    return Config(
        gateway_url=get("gateway", "url", ""),
        ca_file=paths.SYSTEM_CA_BUNDLE if ca_file == SYSTEM_CA else ca_file,
        pins=pins,
        request_timeout=number("gateway", "request_timeout", 15.0, 1, 300),
        keystore=get("host", "keystore", _DEFAULTS["keystore"]),
        host_key=get("host", "host_key", _DEFAULTS["host_key"]),
        hostname=get("host", "name", ""),
        network_timeout=number("timeouts", "network", 60.0, 0, 3600),
        total_timeout=number("timeouts", "total", 300.0, 1, 86400),
        fallback_timeout=number("timeouts", "fallback", 120.0, 0, 86400),
        zfs_timeout=number("timeouts", "zfs", 30.0, 1, 3600),
        interfaces=tuple(interfaces),
        attempts=int(number("prompt", "attempts", 3, 1, 10)),
    )


def apply(config: Config, overrides: cmdline.Overrides) -> Config:
    """The kernel command line wins over the file: it is what the person at the console set."""
    result = config._replace(
        debug=config.debug or overrides.debug,
        gateway_url=overrides.gateway or config.gateway_url,
        total_timeout=overrides.timeout or config.total_timeout,
        boot=overrides.boot,
    )
    return validate(result)


def validate(config: Config) -> Config:
    url = Url(config.gateway_url)
    if not config.gateway_url:
        raise ConfigError("no gateway url ([gateway] url or zkv.gateway=)")
    if not url.valid:
        raise ConfigError(f"gateway url {config.gateway_url!r} is not an http(s) URL")
    if url.scheme == "http" and not config.gateway_is_loopback:
        # The release is sealed, but the PIN and the request would travel in the clear.
        raise ConfigError("the gateway url must use https (http is accepted for loopback only)")
    if url.scheme == "https" and not config.ca_file and not config.pins:
        raise ConfigError(
            "early.conf must name the gateway's CA ([gateway] ca_file = PATH, or ca_file = system "
            "for the system bundle) or pin its key ([gateway] pin_sha256)"
        )
    return config


def _is_pin(value: str) -> bool:
    try:
        return len(unb64(value)) == 32
    except ValueError:
        return False


def load(path: str = DEFAULT_PATH, cmdline_path: str = cmdline.DEFAULT_PATH) -> Config:
    overrides = cmdline.read(cmdline_path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(256 * 1024)
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return apply(parse(text, path), overrides)


def hostname(config: Config, etc_hostname: str = "/etc/hostname") -> str:
    """The name shown to the approver: configured, else the image's, else the kernel's."""
    if config.hostname:
        return config.hostname
    try:
        with open(etc_hostname, encoding="utf-8") as handle:
            name = handle.readline().strip()
    except OSError:
        name = ""
    name = name or socket.gethostname()
    return name if name and name != "(none)" else "localhost"
