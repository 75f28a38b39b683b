"""One-time enrolment invites (pure): the token's stored form and a new host's secret name.

The owner runs ``zkv-gateway hosts invite HOSTNAME``; the token it prints is the only thing that
admits a host (``zkv enroll``), once, before it expires, under that host name. The database keeps
only a hash: the token is 256 random bits, so a plain SHA-256 is as good as a slow hash and
lets the gateway look it up.
"""

from __future__ import annotations

import hashlib
import re
import secrets

SECRET_NAME_MAX = 127  # Key Vault's limit
_NOT_IN_SECRET_NAME = re.compile(r"[^0-9A-Za-z-]")


def token_hash(token: str) -> str:
    return hashlib.sha256(b"zkv-v1 invite\n" + token.encode("ascii")).hexdigest()


def new_invite_id() -> str:
    return secrets.token_hex(4)


def secret_name_for(hostname: str, invite_id: str) -> str:
    """``zkv-<hostname>-<invite id>``: the host's own Key Vault secret, never a shared one. The
    invite id makes it new for every invite, so a re-admitted host never gets a revoked
    host's secret."""
    room = SECRET_NAME_MAX - len("zkv--") - len(invite_id)
    name = _NOT_IN_SECRET_NAME.sub("-", hostname)[:room]
    return f"zkv-{name}-{invite_id}"


def parse_ttl(text: str) -> int:
    """``24h``, ``90m``, ``3600s`` or ``3600`` -> seconds (1 minute to 30 days)."""
    match = re.fullmatch(r"([0-9]{1,7})([smhd]?)", text)
    if not match:
        raise ValueError("--ttl must be a number with s, m, h or d, e.g. 24h")
    seconds = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    if not 60 <= seconds <= 30 * 86400:
        raise ValueError("--ttl must be between 1 minute and 30 days")
    return seconds
