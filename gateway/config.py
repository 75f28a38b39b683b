"""Settings: defaults < Python file named by CONFIG_FILE < ZKV_* environment < systemd credentials.

The seed gateway's keys keep their meaning (KEY_VAULT_URI, TWILIO_TOKEN, SMS_TO, ...). Secret
settings (TWILIO_TOKEN, AAD_CLIENT_SECRET) may also come from ``$CREDENTIALS_DIRECTORY/<name>``
(systemd LoadCredential=twilio-token:..., aad-client-secret:...), which keeps them out of the
environment. Everything is checked in ``validate`` so a bad value stops the start with one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from zkv import protocol

from .errors import ConfigError
from .proxies import parse_networks

ENV_PREFIX = "ZKV_"
SECRET_KEYS = ("TWILIO_TOKEN", "AAD_CLIENT_SECRET")
# Seed keys that no longer mean anything here but must not break an old config file.
# RATE_IP_PER_HOUR: signed calls are limited per host now, unsigned ones by the lockout.
IGNORED_KEYS = {
    "DEBUG",
    "SQLALCHEMY_TRACK_MODIFICATIONS",
    "AAD_RESOURCE",
    "ENV_PREFIX",
    "RATE_IP_PER_HOUR",
}
# Matched with fullmatch: "$" would also match before a trailing newline.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
DISABLED_SUFFIX = ".disabled"  # a file secret disabled by a remote wipe (secrets_source.py)


def _default_database() -> str:
    state = os.environ.get("STATE_DIRECTORY", ".").split(":")[0]
    return f"sqlite:///{Path(state).resolve() / 'zkv-gateway.sqlite'}"


@dataclass(frozen=True)
class Settings:
    SQLALCHEMY_DATABASE_URI: str = field(default_factory=_default_database)
    # where the released secret comes from
    SECRET_SOURCE: str = "azure"  # noqa: S105 (a backend name: azure | file)
    SECRET_FILE: str = ""
    KEY_VAULT_URI: str = ""
    KEY_VAULT_SECRET: str = ""
    KEY_VAULT_TIMEOUT: float = 10.0
    KEY_VAULT_RETRIES: int = 2
    AAD_CREDENTIAL: str = ""  # managed-identity | client-secret; empty: by AAD_CLIENT_SECRET
    AAD_CLIENT_ID: str = ""
    AAD_CLIENT_SECRET: str = field(default="", repr=False)
    AAD_TENANT_ID: str = ""
    AAD_AUTHORITY_HOST_URI: str = "https://login.microsoftonline.com"
    # who approves
    APPROVER: str = "twilio"  # twilio | console | auto
    # page: approving needs an owner's passkey (or TOTP code) on the approval page, or this
    # host's CLI; an SMS reply can only deny. sms+totp: also an SMS reply with the PIN and an
    # owner's TOTP code. sms-pin: the PIN, which the booting host shows, approves by SMS reply
    # alone (the seed's lower-security way; explicit only).
    APPROVAL_POLICY: str = "page"
    APPROVAL_QUORUM: int = 1  # distinct owners who must approve (per host: `quorum HOST M`)
    APPROVAL_URL: str = ""  # the approval pages' base as owners' browsers reach it: https://...
    ALLOW_AUTO_APPROVER: bool = False
    TWILIO_ACCOUNT_ID: str = ""
    TWILIO_TOKEN: str = field(default="", repr=False)
    TWILIO_TIMEOUT: float = 10.0
    SMS_TO: str = ""
    SMS_FROM: str = ""
    PUBLIC_URL: str = ""  # e.g. https://gw.example.org; used to check Twilio signatures
    # Reverse proxies whose X-Forwarded-* we believe: IPs or networks, comma-separated.
    TRUSTED_PROXY_ADDRESSES: str = ""
    TRUSTED_PROXIES: int = 0  # the old count of proxies: refused unless 0 (validate says why)
    # the approval policy
    PIN_LENGTH: int = 6
    REQUEST_TTL: int = 600
    MAX_WAIT: int = protocol.MAX_WAIT
    POLL_INTERVAL: float = 0.5
    MAX_WRONG_PINS: int = 3
    # Boot flags (protocol.BOOT_FLAGS, comma-separated) whose unlock requests are refused, as
    # every refusal is (401); a request that does not report its flags (a version 1 client)
    # is refused too once this is set. Empty: every boot is shown to the owners, none refused.
    REFUSE_BOOT_FLAGS: str = ""
    # What the boot console says after "approve at" (bounded, control characters dropped);
    # empty: "the link sent to the owner" when the page links go out, else APPROVAL_URL's host.
    APPROVE_AT: str = ""
    # Seconds a request's notification waits for others (a power cut: many hosts at once),
    # all then told in one message with one page; 0: each request is told at once.
    NOTIFY_COALESCE: float = 0.0
    # rate limits, counted in the database so they hold across workers and instances
    RATE_PER_SECOND: int = 1
    RATE_HOST_PER_HOUR: int = 10  # an approved host's requests, and so its notifications
    SMS_PER_HOUR: int = 30  # the fleet's notifications; only approved hosts spend them
    AUTH_FAILURES_PER_HOUR: int = 20  # per source; refused calls only
    # database hygiene (service.housekeep, run every HOUSEKEEPING_INTERVAL by housekeeping.py)
    REFUSAL_INTERVAL: float = 300.0  # refused calls are counted, and audited, per interval
    MAX_REFUSAL_SOURCES: int = 1000  # sources counted apart per interval; the rest as one
    HOUSEKEEPING_INTERVAL: float = 60.0
    PENDING_HOST_TTL: int = 86400  # hosts left pending from before invites are dropped
    # what slow clients and long-poll floods may hold (per gunicorn worker: front.py, polls.py)
    READ_TIMEOUT: int = 10  # seconds to send a whole request; also the idle keep-alive
    MAX_POLLS_PER_REQUEST: int = 3  # one poll, plus retries while a dropped one still waits
    MAX_POLLS_PER_SOURCE: int = 8  # an address, or an IPv6 /64: hosts behind one NAT
    # the dead-man switch (liveness.py): seconds a host may be silent; 0 = only per host
    DEADMAN_WINDOW: float = 0.0
    # host keys held by a TPM (attestation.py): the CAs that certify TPMs' endorsement keys
    TPM_CA_BUNDLE: str = ""  # a PEM file; empty: TPM enrolments are refused
    REQUIRE_TPM: bool = False  # refuse file-key hosts: their enrolment and their unlocks
    LOG_LEVEL: str = "INFO"

    @property
    def credential_kind(self) -> str:
        if self.AAD_CREDENTIAL:
            return self.AAD_CREDENTIAL
        return "client-secret" if self.AAD_CLIENT_SECRET else "managed-identity"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build and validate the settings; raises ConfigError with a one-line message."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if env.get("CONFIG_FILE"):
        values.update(_from_file(env["CONFIG_FILE"]))
    values.update(_from_env(env))
    values.update(_from_credentials(env.get("CREDENTIALS_DIRECTORY", "")))
    values.update(overrides or {})
    settings = Settings(**{k: _coerce(k, v) for k, v in values.items() if k not in IGNORED_KEYS})
    validate(settings)
    return settings


_TYPES = {f.name: f.type for f in fields(Settings)}


def _from_file(path: str) -> dict[str, Any]:
    try:
        namespace = runpy.run_path(path)
    except OSError as exc:
        raise ConfigError(f"cannot read CONFIG_FILE {path}: {exc.strerror}") from None
    except Exception as exc:  # a config file is code; any error in it is a config error
        raise ConfigError(f"CONFIG_FILE {path}: {type(exc).__name__}") from None
    out = {k: v for k, v in namespace.items() if k.isupper()}
    unknown = sorted(set(out) - set(_TYPES) - IGNORED_KEYS)
    if unknown:
        raise ConfigError(f"CONFIG_FILE {path}: unknown setting {unknown[0]}")
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    # Other zkv tools use ZKV_* too, so unknown names are not an error here.
    return {k[len(ENV_PREFIX) :]: v for k, v in env.items() if k[len(ENV_PREFIX) :] in _TYPES}


def _from_credentials(directory: str) -> dict[str, str]:
    out = {}
    for key in SECRET_KEYS if directory else ():
        path = Path(directory) / key.lower().replace("_", "-")
        # Empty counts as unset: the package makes both files empty (LoadCredential= needs them).
        if path.is_file() and (value := path.read_text().strip()):
            out[key] = value
    return out


def _coerce(key: str, value: Any) -> Any:
    if key not in _TYPES:
        raise ConfigError(f"unknown setting {key}")
    kind = _TYPES[key]
    if not isinstance(value, str) or kind == "str":
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string")
        if kind in ("int", "float") and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise ConfigError(f"{key} must be a number")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false")
        return int(value) if kind == "int" and value == int(value) else value
    text = value.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be a number, not {text[:20]!r}") from None
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be true or false")


def _require(settings: Settings, *keys: str, why: str) -> None:
    for key in keys:
        if not getattr(settings, key):
            raise ConfigError(f"{key} is required {why}")


def _range(settings: Settings, key: str, low: float, high: float) -> None:
    value = getattr(settings, key)
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low:g} and {high:g}")


def validate(s: Settings) -> None:
    try:
        make_url(s.SQLALCHEMY_DATABASE_URI)
    except ArgumentError:
        raise ConfigError("SQLALCHEMY_DATABASE_URI is not a database URL") from None
    _validate_secret_source(s)
    _validate_approver(s)
    _validate_proxies(s)
    for key, low, high in (
        ("PIN_LENGTH", 4, 12),
        ("REQUEST_TTL", 5, 86400),
        ("MAX_WAIT", 0, protocol.MAX_WAIT),
        ("POLL_INTERVAL", 0.05, 5),
        ("MAX_WRONG_PINS", 1, 100),
        ("NOTIFY_COALESCE", 0, 300),
        ("APPROVAL_QUORUM", 1, 20),
        ("KEY_VAULT_TIMEOUT", 0.1, 120),
        ("KEY_VAULT_RETRIES", 0, 10),
        ("TWILIO_TIMEOUT", 0.1, 120),
        ("RATE_PER_SECOND", 1, 10**6),
        ("RATE_HOST_PER_HOUR", 1, 10**6),
        ("REFUSAL_INTERVAL", 1, 3600),
        ("MAX_REFUSAL_SOURCES", 1, 10**6),
        ("HOUSEKEEPING_INTERVAL", 0.1, 3600),
        ("PENDING_HOST_TTL", 60, 10**7),
        ("SMS_PER_HOUR", 1, 10**7),
        ("AUTH_FAILURES_PER_HOUR", 1, 10**7),
        ("READ_TIMEOUT", 1, 300),
        ("MAX_POLLS_PER_REQUEST", 1, 100),
        ("MAX_POLLS_PER_SOURCE", 1, 10**5),
        ("DEADMAN_WINDOW", 0, 366 * 86400),
    ):
        _range(s, key, low, high)
    if s.LOG_LEVEL.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")


def _validate_proxies(s: Settings) -> None:
    try:
        proxies = parse_networks(s.TRUSTED_PROXY_ADDRESSES)
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXY_ADDRESSES: {exc}") from None
    if s.TRUSTED_PROXIES:
        raise ConfigError(
            "TRUSTED_PROXIES (a count) is no longer read: name the proxies in "
            "TRUSTED_PROXY_ADDRESSES instead, since X-Forwarded-For is believed only from them"
        )
    if s.PUBLIC_URL and (
        urlsplit(s.PUBLIC_URL).scheme != "https" or not urlsplit(s.PUBLIC_URL).netloc
    ):
        raise ConfigError("PUBLIC_URL must be https://<the name Twilio calls>")
    if s.PUBLIC_URL and not proxies:
        raise ConfigError(
            "PUBLIC_URL means a TLS proxy is in front, so TRUSTED_PROXY_ADDRESSES must name it: "
            "else every client has the proxy's address and one client's failures lock out all"
        )


def _validate_secret_source(s: Settings) -> None:
    if s.SECRET_SOURCE == "file":  # noqa: S105
        _require(s, "SECRET_FILE", why="with SECRET_SOURCE=file")
        wiped = Path(s.SECRET_FILE + DISABLED_SUFFIX).is_file()  # `hosts wipe` renamed it
        if not Path(s.SECRET_FILE).is_file() and not wiped:
            raise ConfigError(f"SECRET_FILE {s.SECRET_FILE} is not a readable file")
        return
    if s.SECRET_SOURCE != "azure":  # noqa: S105
        raise ConfigError("SECRET_SOURCE must be azure or file")
    _require(s, "KEY_VAULT_URI", "KEY_VAULT_SECRET", why="with SECRET_SOURCE=azure")
    if urlsplit(s.KEY_VAULT_URI).scheme != "https" or "YOUR_KV_NAME" in s.KEY_VAULT_URI:
        raise ConfigError("KEY_VAULT_URI must be https://<vault-name>.vault.azure.net")
    if not _SECRET_NAME.fullmatch(s.KEY_VAULT_SECRET):
        raise ConfigError("KEY_VAULT_SECRET must be a Key Vault secret name (letters, digits, -)")
    if s.credential_kind == "client-secret":
        _require(s, "AAD_TENANT_ID", "AAD_CLIENT_ID", "AAD_CLIENT_SECRET", why="for client-secret")
    elif s.credential_kind != "managed-identity":
        raise ConfigError("AAD_CREDENTIAL must be managed-identity or client-secret")
    if urlsplit(s.AAD_AUTHORITY_HOST_URI).scheme != "https":
        raise ConfigError("AAD_AUTHORITY_HOST_URI must be an https URL")


def refused_boot_flags(s: Settings) -> frozenset[str]:
    return frozenset(s.REFUSE_BOOT_FLAGS.replace(",", " ").split())


def _validate_approver(s: Settings) -> None:
    if s.APPROVAL_POLICY not in ("page", "sms+totp", "sms-pin"):
        raise ConfigError("APPROVAL_POLICY must be page, sms+totp or sms-pin")
    unknown = sorted(refused_boot_flags(s) - set(protocol.BOOT_FLAGS))
    if unknown:
        raise ConfigError(
            f"REFUSE_BOOT_FLAGS: unknown boot flag {unknown[0][:40]!r} "
            f"(known: {', '.join(protocol.BOOT_FLAGS)})"
        )
    if len(s.APPROVE_AT) > protocol.MAX_WHERE or not s.APPROVE_AT.isprintable():
        raise ConfigError(f"APPROVE_AT must be printable, at most {protocol.MAX_WHERE} characters")
    url = urlsplit(s.APPROVAL_URL)
    loopback = url.scheme == "http" and url.hostname == "localhost"  # a browser's secure context
    if s.APPROVAL_URL and (not url.hostname or not (url.scheme == "https" or loopback)):
        raise ConfigError("APPROVAL_URL must be https://<the name owners' browsers open>")
    if s.APPROVER == "twilio":
        _require(
            s, "TWILIO_ACCOUNT_ID", "TWILIO_TOKEN", "SMS_TO", "SMS_FROM", why="with APPROVER=twilio"
        )
        for key in ("SMS_TO", "SMS_FROM"):
            if not _E164.fullmatch(getattr(s, key)):
                raise ConfigError(f"{key} must be an E.164 number such as +15551234567")
    elif s.APPROVER == "auto":
        if not s.ALLOW_AUTO_APPROVER:
            raise ConfigError(
                "APPROVER=auto releases secrets without a human; it also needs "
                "ALLOW_AUTO_APPROVER=true and is meant for tests only"
            )
    elif s.APPROVER != "console":
        raise ConfigError("APPROVER must be twilio, console or auto")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.fullmatch(name))
