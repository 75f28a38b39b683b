"""Wire protocol v1 between the boot client (and ``zkv enroll``) and the gateway.

Defined once here and imported by both sides; gateway/openapi.yaml describes the same shapes.
JSON over HTTPS. Requests that prove a host's identity are signed with its Ed25519 key over
``CONTEXT + canonical(body without "signature")``; the context strings keep a signature for one
message type from being replayed as another.

Freshness does not depend on the host's clock (an initramfs has no NTP): every signed request
carries a challenge the gateway issued moments before, which the gateway can check without
having stored it (gateway/challenges.py) and accepts once. The answer also carries the gateway's
time, so the client can tell how far off its own clock is.

    POST /v1/challenges                                 -> 201 Challenge
    POST /v1/hosts                       EnrollRequest  -> 202 EnrollAccepted
    POST /v1/unlock-requests             UnlockRequest  -> 201 UnlockCreated
    GET  /v1/unlock-requests/<id>?wait=N                -> 200 PollResult (long-poll, N <= 25 s)
    POST /v1/ahead-approvals             AheadRequest   -> 201 UnlockCreated (poll it as above;
                                                           its answer never carries a release)
    POST /v1/heartbeats                  Heartbeat      -> 200 HeartbeatAnswer (dead-man switch)
    GET  /healthz                                       -> 200 {"status": "ok"}

Errors are ``{"error": <code>}`` with the status in ERROR_STATUS. Every authentication failure
(unknown host, revoked, bad signature, forged, expired or reused challenge, unknown request id) is
the same ``401 {"error": "unauthorized"}``.

The request id is a 128-bit random capability; the released secret is sealed to the boot's
ephemeral X25519 key, so whoever reads a poll answer without that key learns nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any, NamedTuple

from zkv import crypto
from zkv.encoding import b64, canonical, unb64
from zkv.keystore import is_target

VERSION = 1
PATH_CHALLENGES = "/v1/challenges"
PATH_HOSTS = "/v1/hosts"
PATH_UNLOCK = "/v1/unlock-requests"
PATH_HEARTBEAT = "/v1/heartbeats"
PATH_AHEAD = "/v1/ahead-approvals"
PATH_HEALTH = "/healthz"
MAX_BODY = 16 * 1024
MAX_WAIT = 25  # seconds one long-poll call may be held open
REPLAY_WINDOW = 120  # seconds a challenge stays acceptable (either side of its issue time)
MAX_DATASETS = 64
MAX_SECRET = 4096
AHEAD_DEFAULT = 30 * 60  # seconds an approval asked ahead of a planned reboot is good for
AHEAD_MAX = 24 * 3600

CONTEXT_ENROLL = b"zkv-v1 enroll\n"
CONTEXT_UNLOCK = b"zkv-v1 unlock-request\n"
CONTEXT_HEARTBEAT = b"zkv-v1 heartbeat\n"
CONTEXT_AHEAD = b"zkv-v1 ahead-approval\n"

ACTION_NONE = "none"
ACTION_WIPE = "wipe"  # destroy the keystore's repository slot (never the recovery slot)

STATE_PENDING = "pending"
STATE_APPROVED = "approved"
STATE_DENIED = "denied"
STATE_EXPIRED = "expired"
STATE_FAILED = "failed"
STATES = (STATE_PENDING, STATE_APPROVED, STATE_DENIED, STATE_EXPIRED, STATE_FAILED)

ERROR_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "rate_limited": 429,
    "approver_unavailable": 503,
    "secret_unavailable": 503,
}

# Matched with fullmatch: "$" would also match before a trailing newline.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_CHALLENGE_RE = re.compile(r"[0-9a-f]{80}")  # opaque to the client; gateway/challenges.py
_PIN_RE = re.compile(r"[0-9]{4,12}")  # ASCII only: str.isdigit() takes other scripts' digits
_INVITE_TOKEN_RE = re.compile(r"zkv1-[A-Za-z0-9_-]{43}")  # 32 random bytes, base64url


class ProtocolViolation(ValueError):
    """A message does not have the v1 shape. The gateway answers 400, the client gives up."""


def host_id_of(public_key: bytes) -> str:
    """A host's id is derived from its public key, so it cannot be claimed by another key."""
    return hashlib.sha256(b"zkv-v1 host\n" + public_key).hexdigest()[:32]


def release_info(request_id: str) -> bytes:
    """Binds a sealed release to one request id."""
    return b"zkv-v1 release\n" + request_id.encode("ascii")


def new_invite_token() -> str:
    """The one-time enrolment credential the owner hands to a host (``hosts invite``)."""
    return "zkv1-" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def is_invite_token(value: str) -> bool:
    return bool(_INVITE_TOKEN_RE.fullmatch(value))


def is_hostname(value: str) -> bool:
    return bool(_HOSTNAME_RE.fullmatch(value))


# --- field checks -----------------------------------------------------------------------------


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if type(value) is not kind:
        raise ProtocolViolation(f"field {name!r} must be {kind.__name__}")
    return value


def _exact(body: Any, names: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) != names:
        raise ProtocolViolation(f"expected exactly the fields {sorted(names)}")
    return body


def _signed_body(raw: Any, names: set[str]) -> dict[str, Any]:
    """A signed message's fields: exactly ``names`` plus "v" and "signature", this version."""
    body = _exact(raw, {"v", "signature", *names})
    if body["v"] != VERSION:
        raise ProtocolViolation("unsupported protocol version")
    return body


def _verify_host(
    public_key: bytes, host_id: str, signature: bytes, context: bytes, body: dict[str, Any]
) -> None:
    """A host's signature: by the key its id derives from; raises crypto.BadSignature."""
    if host_id_of(public_key) != host_id:
        raise crypto.BadSignature
    crypto.ed25519_verify(public_key, signature, context + canonical(body))


def _sign(private_key: bytes, context: bytes, body: dict[str, Any]) -> bytes:
    """Ed25519 over the context string and the canonical JSON of the body (no signature)."""
    return crypto.ed25519_sign(private_key, context + canonical(body))


def check_hostname(value: str) -> str:
    if not is_hostname(value):
        raise ProtocolViolation("invalid hostname")
    return value


def _hex32(value: str, name: str) -> str:
    if not _HEX32_RE.fullmatch(value):
        raise ProtocolViolation(f"{name} must be 32 lowercase hex characters")
    return value


def _key32(value: str, name: str) -> bytes:
    try:
        raw = unb64(value)
    except ValueError:
        raise ProtocolViolation(f"{name} is not base64") from None
    if len(raw) != 32:
        raise ProtocolViolation(f"{name} must be 32 bytes")
    return raw


def _challenge(value: str) -> str:
    if not _CHALLENGE_RE.fullmatch(value):
        raise ProtocolViolation("invalid challenge")
    return value


# --- challenge --------------------------------------------------------------------------------


class Challenge(NamedTuple):
    """What the next signed request must carry, and the gateway's clock when it was issued."""

    challenge: str
    now: int  # the gateway's time: the client compares its own clock, never signs it

    def to_json(self) -> dict[str, Any]:
        return {"challenge": self.challenge, "now": self.now}

    @classmethod
    def from_json(cls, raw: Any) -> Challenge:
        body = _exact(raw, {"challenge", "now"})
        return cls(_challenge(_field(body, "challenge", str)), _field(body, "now", int))


# --- enrolment --------------------------------------------------------------------------------


class EnrollRequest(NamedTuple):
    """Signed by the new host key (proof of possession) and carrying the owner's one-time
    invite token: the token, not the key, is what admits the host."""

    hostname: str
    public_key: bytes
    token: str
    challenge: str
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "hostname": self.hostname,
            "public_key": b64(self.public_key),
            "token": self.token,
            "challenge": self.challenge,
        }

    @property
    def host_id(self) -> str:
        return host_id_of(self.public_key)

    @classmethod
    def create(cls, hostname: str, private_key: bytes, token: str, challenge: str) -> EnrollRequest:
        public = crypto.ed25519_public(private_key)
        unsigned = cls(hostname, public, token, _challenge(challenge))
        return unsigned._replace(signature=_sign(private_key, CONTEXT_ENROLL, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> EnrollRequest:
        body = _signed_body(raw, {"hostname", "public_key", "token", "challenge"})
        if not is_invite_token(_field(body, "token", str)):
            raise ProtocolViolation("token is not an invite token")
        return cls(
            hostname=check_hostname(_field(body, "hostname", str)),
            public_key=_key32(_field(body, "public_key", str), "public_key"),
            token=body["token"],
            challenge=_challenge(_field(body, "challenge", str)),
            signature=_signature(_field(body, "signature", str)),
        )

    def verify(self) -> None:
        """Proof of possession of the private key; raises crypto.BadSignature."""
        crypto.ed25519_verify(
            self.public_key, self.signature, CONTEXT_ENROLL + canonical(self.body())
        )


class EnrollAccepted(NamedTuple):
    host_id: str
    status: str  # "approved" (the invite is the owner's approval); "pending", "revoked" of old

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "status": self.status}

    @classmethod
    def from_json(cls, raw: Any) -> EnrollAccepted:
        body = _exact(raw, {"host_id", "status"})
        status = _field(body, "status", str)
        if status not in ("pending", "approved", "revoked"):
            raise ProtocolViolation("unknown host status")
        return cls(_hex32(_field(body, "host_id", str), "host_id"), status)


# --- unlock request ---------------------------------------------------------------------------


class UnlockRequest(NamedTuple):
    host_id: str
    hostname: str
    datasets: tuple[str, ...]
    ephemeral_key: bytes
    challenge: str
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "host_id": self.host_id,
            "hostname": self.hostname,
            "datasets": list(self.datasets),
            "ephemeral_key": b64(self.ephemeral_key),
            "challenge": self.challenge,
        }

    @classmethod
    def create(
        cls,
        private_key: bytes,
        hostname: str,
        datasets: list[str] | tuple[str, ...],
        ephemeral_key: bytes,
        challenge: str,
    ) -> UnlockRequest:
        host_id = host_id_of(crypto.ed25519_public(private_key))
        unsigned = cls(host_id, hostname, tuple(datasets), ephemeral_key, _challenge(challenge))
        return unsigned._replace(signature=_sign(private_key, CONTEXT_UNLOCK, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> UnlockRequest:
        names = {"host_id", "hostname", "datasets", "ephemeral_key", "challenge"}
        body = _signed_body(raw, names)
        datasets = _field(body, "datasets", list)
        if len(datasets) > MAX_DATASETS or not all(
            isinstance(d, str) and is_target(d) for d in datasets
        ):
            raise ProtocolViolation("invalid datasets")
        return cls(
            host_id=_hex32(_field(body, "host_id", str), "host_id"),
            hostname=check_hostname(_field(body, "hostname", str)),
            datasets=tuple(datasets),
            ephemeral_key=_key32(_field(body, "ephemeral_key", str), "ephemeral_key"),
            challenge=_challenge(_field(body, "challenge", str)),
            signature=_signature(_field(body, "signature", str)),
        )

    def verify(self, public_key: bytes) -> None:
        """Raises crypto.BadSignature unless signed by ``public_key`` (the enrolled host key)."""
        _verify_host(public_key, self.host_id, self.signature, CONTEXT_UNLOCK, self.body())


class UnlockCreated(NamedTuple):
    request_id: str
    pin: str
    expires_at: int
    approved_ahead: bool = False  # an owner approved ahead of this (planned) reboot

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "pin": self.pin,
            "expires_at": self.expires_at,
        }
        if self.approved_ahead:
            out["approved_ahead"] = True
        return out

    @classmethod
    def from_json(cls, raw: Any) -> UnlockCreated:
        names = {"request_id", "pin", "expires_at"}
        ahead = isinstance(raw, dict) and "approved_ahead" in raw
        body = _exact(raw, names | {"approved_ahead"} if ahead else names)
        if ahead and body["approved_ahead"] is not True:
            raise ProtocolViolation("approved_ahead is true when present")
        pin = _field(body, "pin", str)
        if not _PIN_RE.fullmatch(pin):
            raise ProtocolViolation("invalid pin")
        return cls(
            _hex32(_field(body, "request_id", str), "request_id"),
            pin,
            _field(body, "expires_at", int),
            ahead,
        )


# --- approval ahead of a planned reboot -------------------------------------------------------


class AheadRequest(NamedTuple):
    """A running host asks the owners, before a planned reboot, to approve its next boot within
    ``within`` seconds; signed and fresh like an unlock request. The approval stays at the
    gateway: the boot that uses it still signs its unlock request and gets the secret sealed
    to its own ephemeral key."""

    host_id: str
    hostname: str
    within: int
    challenge: str
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "host_id": self.host_id,
            "hostname": self.hostname,
            "within": self.within,
            "challenge": self.challenge,
        }

    @classmethod
    def create(cls, private_key: bytes, hostname: str, within: int, challenge: str) -> AheadRequest:
        host_id = host_id_of(crypto.ed25519_public(private_key))
        unsigned = cls(host_id, hostname, _within(within), _challenge(challenge))
        return unsigned._replace(signature=_sign(private_key, CONTEXT_AHEAD, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> AheadRequest:
        body = _signed_body(raw, {"host_id", "hostname", "within", "challenge"})
        return cls(
            host_id=_hex32(_field(body, "host_id", str), "host_id"),
            hostname=check_hostname(_field(body, "hostname", str)),
            within=_within(_field(body, "within", int)),
            challenge=_challenge(_field(body, "challenge", str)),
            signature=_signature(_field(body, "signature", str)),
        )

    def verify(self, public_key: bytes) -> None:
        """Raises crypto.BadSignature unless signed by ``public_key`` (the enrolled host key)."""
        _verify_host(public_key, self.host_id, self.signature, CONTEXT_AHEAD, self.body())


def _within(value: int) -> int:
    if not 1 <= value <= AHEAD_MAX:
        raise ProtocolViolation(f"within must be 1 to {AHEAD_MAX} seconds")
    return value


# --- heartbeat (dead-man switch) --------------------------------------------------------------


class Heartbeat(NamedTuple):
    """A running host says it is alive; signed, and fresh by a gateway challenge, like an
    unlock request."""

    host_id: str
    challenge: str
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "host_id": self.host_id, "challenge": self.challenge}

    @classmethod
    def create(cls, private_key: bytes, challenge: str) -> Heartbeat:
        host_id = host_id_of(crypto.ed25519_public(private_key))
        unsigned = cls(host_id, _challenge(challenge))
        return unsigned._replace(signature=_sign(private_key, CONTEXT_HEARTBEAT, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> Heartbeat:
        body = _signed_body(raw, {"host_id", "challenge"})
        return cls(
            host_id=_hex32(_field(body, "host_id", str), "host_id"),
            challenge=_challenge(_field(body, "challenge", str)),
            signature=_signature(_field(body, "signature", str)),
        )

    def verify(self, public_key: bytes) -> None:
        """Raises crypto.BadSignature unless signed by ``public_key`` (the enrolled host key)."""
        _verify_host(public_key, self.host_id, self.signature, CONTEXT_HEARTBEAT, self.body())


class HeartbeatAnswer(NamedTuple):
    """What the host is to do. Not signed: only TLS to the pinned gateway vouches for it, so
    the worst a forged "wipe" may do is destroy the repository slot (docs/threat-model.md)."""

    action: str

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action}

    @classmethod
    def from_json(cls, raw: Any) -> HeartbeatAnswer:
        action = _field(_exact(raw, {"action"}), "action", str)
        if action not in (ACTION_NONE, ACTION_WIPE):
            raise ProtocolViolation("unknown heartbeat action")
        return cls(action)


# --- polling and release ----------------------------------------------------------------------


class PollResult(NamedTuple):
    state: str
    release: crypto.Sealed | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.release is not None:
            out["release"] = {
                "ephemeral_key": b64(self.release.ephemeral_public),
                "nonce": b64(self.release.nonce),
                "ciphertext": b64(self.release.ciphertext),
            }
        return out

    @classmethod
    def from_json(cls, raw: Any) -> PollResult:
        if not isinstance(raw, dict) or raw.get("state") not in STATES:
            raise ProtocolViolation("unknown state")
        state = raw["state"]
        if state != STATE_APPROVED or "release" not in raw:  # approved ahead: nothing released
            _exact(raw, {"state"})
            return cls(state)
        body = _exact(raw, {"state", "release"})
        release = _exact(body["release"], {"ephemeral_key", "nonce", "ciphertext"})
        try:
            nonce, ciphertext = unb64(release["nonce"]), unb64(release["ciphertext"])
        except ValueError:
            raise ProtocolViolation("release is not base64") from None
        if len(ciphertext) > MAX_SECRET + 16:
            raise ProtocolViolation("release too large")
        return cls(
            state,
            crypto.Sealed(_key32(release["ephemeral_key"], "ephemeral_key"), nonce, ciphertext),
        )


def seal_release(request_id: str, ephemeral_key: bytes, secret: bytes) -> crypto.Sealed:
    """Gateway side: encrypt the secret to the boot's ephemeral key, bound to the request id."""
    return crypto.seal_to(ephemeral_key, secret, release_info(request_id))


def open_release(request_id: str, ephemeral_private: bytes, sealed: crypto.Sealed) -> bytes:
    """Client side; raises crypto.DecryptionFailed."""
    return crypto.open_sealed(ephemeral_private, sealed, release_info(request_id))


def error_body(code: str) -> dict[str, str]:
    if code not in ERROR_STATUS:
        raise ValueError(code)
    return {"error": code}


def _signature(value: str) -> bytes:
    try:
        raw = unb64(value)
    except ValueError:
        raise ProtocolViolation("signature is not base64") from None
    if len(raw) != 64:
        raise ProtocolViolation("signature must be 64 bytes")
    return raw
