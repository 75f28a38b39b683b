"""Challenges: freshness for signed requests without trusting the host's clock.

A challenge is ``issued (8 bytes) | random (16) | HMAC-SHA256(key, context | issued | random)
(first 16)`` in hex. The gateway checks it by recomputing the MAC, so issuing one writes nothing
and an unauthenticated flood of challenge requests costs no database row; single use is
enforced when a signed request consumes it (the random part goes into the nonce table, which
keeps entries for 2 * REPLAY_WINDOW + 60 s, longer than a challenge is accepted). The key is
shared by every process on one database (store.challenge_key), so a challenge issued by one
worker or instance is good at another, and no good at a gateway with another database.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from zkv.protocol import REPLAY_WINDOW

CONTEXT = b"zkv-v1 challenge\n"
_MAC_LEN = 16


class BadChallenge(Exception):
    """Not ours, expired or malformed; the caller sees only ``unauthorized``."""


def issue(key: bytes, now: float) -> str:
    body = int(now).to_bytes(8, "big") + os.urandom(16)
    return (body + _mac(key, body)).hex()


def check(key: bytes, challenge: str, now: float, window: int = REPLAY_WINDOW) -> str:
    """The challenge's single-use nonce (32 hex), if ``key`` issued it within ``window`` s of
    ``now`` (either side: instances on one database may not share a clock exactly)."""
    try:
        raw = bytes.fromhex(challenge)
    except ValueError:
        raise BadChallenge("not hex") from None
    body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    if len(body) != 24 or not hmac.compare_digest(mac, _mac(key, body)):
        raise BadChallenge("not issued by this gateway")
    issued = int.from_bytes(body[:8], "big")
    if abs(now - issued) > window:
        raise BadChallenge(f"issued {int(now - issued)} s ago")
    return body[8:].hex()


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, CONTEXT + body, hashlib.sha256).digest()[:_MAC_LEN]
