"""Wire protocol v1 between the boot client (and ``zkv enroll``) and the gateway.

Defined once here and imported by both sides; gateway/openapi.yaml describes the same shapes.
JSON over HTTPS. Requests that prove a host's identity are signed with its host key over
``CONTEXT + canonical(body without "signature")``; the context strings keep a signature for one
message type from being replayed as another. A host key is an Ed25519 file key (32-byte public
key) or an ECC P-256 key held by the host's TPM (33-byte compressed point, ECDSA-SHA256, r||s),
admitted only with the TPM's evidence (TpmEvidence); the key's length says which.

Freshness does not depend on the host's clock (an initramfs has no NTP): every signed request
carries a challenge the gateway issued moments before, which the gateway can check without
having stored it (gateway/challenges.py) and accepts once. The answer also carries the gateway's
time, so the client can tell how far off its own clock is.

    POST /v1/challenges                                 -> 201 Challenge
    POST /v1/tpm-credentials             TpmCredentialRequest -> 201 TpmCredential
    POST /v1/hosts                       EnrollRequest  -> 202 EnrollAccepted
    POST /v1/unlock-requests             UnlockRequest  -> 201 UnlockCreated
    GET  /v1/unlock-requests/<id>?wait=N                -> 200 PollResult (long-poll, N <= 25 s)
    POST /v1/ahead-approvals             AheadRequest   -> 201 UnlockCreated (poll it as above;
                                                           its answer never carries a release)
    POST /v1/heartbeats                  Heartbeat      -> 200 HeartbeatAnswer (dead-man switch)
    POST /v1/repository-key              RepositoryKeyQuery -> 200 RepositoryKeyStatus
    POST /v1/repository-key-rotations    RotationRequest    -> 201 UnlockCreated (owner approves)
    GET  /v1/repository-key-rotations/<id>?wait=N          -> 200 PollResult (state only)
    POST /v1/repository-key-rotations/<id>/key  RepositoryKeyDelivery -> 200 RepositoryKeyStatus
    GET  /healthz                                       -> 200 {"status": "ok"}

Errors are ``{"error": <code>}`` with the status in ERROR_STATUS. Every authentication failure
(unknown host, revoked, bad signature, forged, expired or reused challenge, unknown request id) is
the same ``401 {"error": "unauthorized"}``.

An unlock request of version 2 (VERSION_BOOT) also carries the boot's context, signed: the
debug or break options on the kernel command line (BOOT_FLAGS, names only) and the command
line's SHA-256; the gateway answers it with what the console should call the code (a request
code to match, or under the sms-pin policy a PIN) and where the owner approves. Version 1
requests (older clients) are still accepted and answered in the version 1 shape.

The request id is a 128-bit random capability; the released secret is sealed to the boot's
ephemeral X25519 key, so whoever reads a poll answer without that key learns nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any, NamedTuple, Protocol, Self

from zkv import crypto
from zkv.encoding import b64, canonical, unb64
from zkv.keystore import is_target, repository_key_id

VERSION = 1
VERSION_BOOT = 2  # an unlock request that reports its boot context (boot_flags, cmdline_sha256)
PATH_CHALLENGES = "/v1/challenges"
PATH_HOSTS = "/v1/hosts"
PATH_TPM_CREDENTIALS = "/v1/tpm-credentials"
PATH_UNLOCK = "/v1/unlock-requests"
PATH_HEARTBEAT = "/v1/heartbeats"
PATH_REPOSITORY_KEY = "/v1/repository-key"
PATH_ROTATIONS = "/v1/repository-key-rotations"
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
CONTEXT_KEY_QUERY = b"zkv-v1 repository-key-query\n"
CONTEXT_ROTATION = b"zkv-v1 repository-key-rotation\n"
CONTEXT_KEY_DELIVERY = b"zkv-v1 repository-key-delivery\n"
CONTEXT_CERTIFY = b"zkv-v1 tpm certify\n"

ALG_ED25519 = "ed25519"  # a file key in /boot
ALG_P256_TPM = "p256-tpm"  # a key that never leaves the host's TPM
CONTEXT_AHEAD = b"zkv-v1 ahead-approval\n"

ACTION_NONE = "none"
ACTION_WIPE = "wipe"  # destroy the keystore's repository slot (never the recovery slot)

STATE_PENDING = "pending"
STATE_APPROVED = "approved"
STATE_DENIED = "denied"
STATE_EXPIRED = "expired"
STATE_FAILED = "failed"
STATES = (STATE_PENDING, STATE_APPROVED, STATE_DENIED, STATE_EXPIRED, STATE_FAILED)

# Debug or break options a boot client recognises on the kernel command line, reported by name
# only (zkv_early/cmdline.py maps the options to these). WARN_FLAGS hand whoever is at the
# console a shell or another init before the root is mounted: the page warns loudly about them.
BOOT_FLAGS = (
    "break",  # initramfs-tools break=
    "debug",  # initramfs-tools debug
    "debug-shell",  # systemd.debug_shell
    "emergency",  # emergency, systemd.unit=emergency.target
    "init",  # init= other than the usual /sbin/init or systemd
    "rd.break",
    "rd.debug",
    "rd.shell",
    "rdinit",
    "rescue",  # rescue, systemd.unit=rescue.target
    "single",  # single, s, S, 1, -s
    "zkv.debug",
)
WARN_FLAGS = frozenset(BOOT_FLAGS) - {"debug", "rd.debug", "zkv.debug"}
CODE_REQUEST, CODE_PIN = "request-code", "pin"  # what the console calls UnlockCreated.pin
MAX_WHERE = 80  # characters of UnlockCreated.approve_at
# C0 (ESC, CR, LF...), DEL and C1 (0x9B is a one-character CSI): for str.translate, which drops
# them from text one side wrote and the other shows on a console.
CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])

ERROR_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "secret_shared": 409,  # a repository key rotation of a secret another host uses too
    "rate_limited": 429,
    "approver_unavailable": 503,
    "secret_unavailable": 503,
}

# Matched with fullmatch: "$" would also match before a trailing newline.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHALLENGE_RE = re.compile(r"[0-9a-f]{80}")  # opaque to the client; gateway/challenges.py
_PIN_RE = re.compile(r"[0-9]{4,12}")  # ASCII only: str.isdigit() takes other scripts' digits
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")  # zkv/keystore.py repository_key_id
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


def _signed_body(
    raw: Any, names: set[str], versions: dict[int, set[str]] | None = None
) -> dict[str, Any]:
    """A signed message's fields: exactly ``names`` plus "v" and "signature" (and, for a later
    version in ``versions``, its extra fields)."""
    extra = versions or {}
    v = raw.get("v") if isinstance(raw, dict) else VERSION  # not a dict: _exact says so
    if type(v) is not int or (v != VERSION and v not in extra):
        raise ProtocolViolation("unsupported protocol version")
    return _exact(raw, {"v", "signature", *names, *extra.get(v, set())})


class Signer(Protocol):
    """A host key that signs where it lives (zkv/hostkey.py's TpmKey)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


HostKey = bytes | Signer  # bytes: an Ed25519 private key


def public_of(key: HostKey) -> bytes:
    return crypto.ed25519_public(key) if isinstance(key, bytes) else key.public_key


def _sign(key: HostKey, context: bytes, body: dict[str, Any]) -> bytes:
    """The host key's signature over the context string and the canonical JSON of the body
    (without signature)."""
    message = context + canonical(body)
    return crypto.ed25519_sign(key, message) if isinstance(key, bytes) else key.sign(message)


def key_in_tpm(public_key: bytes) -> bool:
    """A P-256 host key: admitted only with its TPM's evidence (gateway/attestation.py)."""
    return len(public_key) == crypto.P256_POINT


def certify_nonce(challenge: str) -> bytes:
    """The qualifying data of the enrolment's TPM2_Certify: binds it to one gateway challenge."""
    return hashlib.sha256(CONTEXT_CERTIFY + challenge.encode("ascii")).digest()


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
    tpm: TpmEvidence | None = None  # present for a TPM-held key (ALG_P256_TPM), signed too

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": VERSION,
            "hostname": self.hostname,
            "public_key": b64(self.public_key),
            "token": self.token,
            "challenge": self.challenge,
        }
        if self.tpm is not None:  # an Ed25519 enrolment stays what older gateways know
            body |= {"algorithm": ALG_P256_TPM, "tpm": self.tpm.to_json()}
        return body

    @property
    def host_id(self) -> str:
        return host_id_of(self.public_key)

    @classmethod
    def create(
        cls,
        hostname: str,
        private_key: HostKey,
        token: str,
        challenge: str,
        tpm: TpmEvidence | None = None,
    ) -> EnrollRequest:
        unsigned = cls(hostname, public_of(private_key), token, _challenge(challenge), tpm=tpm)
        return unsigned._replace(signature=_sign(private_key, CONTEXT_ENROLL, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> EnrollRequest:
        names = {"hostname", "public_key", "token", "challenge"}
        tpm_held = isinstance(raw, dict) and "algorithm" in raw
        body = _signed_body(raw, names | {"algorithm", "tpm"} if tpm_held else names)
        if not is_invite_token(_field(body, "token", str)):
            raise ProtocolViolation("token is not an invite token")
        if tpm_held and body["algorithm"] != ALG_P256_TPM:
            raise ProtocolViolation("unknown host key algorithm")
        public = _b64_field(body, "public_key")
        if len(public) != (crypto.P256_POINT if tpm_held else 32):
            raise ProtocolViolation("public_key has the wrong length for its algorithm")
        return cls(
            hostname=check_hostname(_field(body, "hostname", str)),
            public_key=public,
            token=body["token"],
            challenge=_challenge(_field(body, "challenge", str)),
            signature=_signature(_field(body, "signature", str)),
            tpm=TpmEvidence.from_json(body["tpm"]) if tpm_held else None,
        )

    def verify(self) -> None:
        """Proof of possession of the private key; raises crypto.BadSignature."""
        crypto.host_verify(self.public_key, self.signature, CONTEXT_ENROLL + canonical(self.body()))


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


class BootContext(NamedTuple):
    """What the boot client reports about its own boot: recognised flags and the digest."""

    flags: tuple[str, ...]  # sorted, unique, each in BOOT_FLAGS
    cmdline_sha256: str  # hex SHA-256 of /proc/cmdline as read

    @classmethod
    def of(cls, flags: list[str] | tuple[str, ...] | set[str], cmdline: bytes) -> BootContext:
        return cls(tuple(sorted(set(flags))), hashlib.sha256(cmdline).hexdigest())

    @classmethod
    def checked(cls, flags: Any, digest: Any) -> BootContext:
        if type(flags) is not list or not all(isinstance(f, str) for f in flags):
            raise ProtocolViolation("boot_flags must be a list of names")
        if any(f not in BOOT_FLAGS for f in flags) or flags != sorted(set(flags)):
            raise ProtocolViolation("boot_flags must be known names, sorted, once each")
        if type(digest) is not str or not _SHA256_RE.fullmatch(digest):
            raise ProtocolViolation("cmdline_sha256 must be 64 lowercase hex characters")
        return cls(tuple(flags), digest)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f for f in self.flags if f in WARN_FLAGS)


_BOOT_FIELDS = {"boot_flags", "cmdline_sha256"}


class UnlockRequest(NamedTuple):
    host_id: str
    hostname: str
    datasets: tuple[str, ...]
    ephemeral_key: bytes
    challenge: str
    signature: bytes = b""
    boot: BootContext | None = None  # None: a version 1 client, which does not report it

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": VERSION if self.boot is None else VERSION_BOOT,
            "host_id": self.host_id,
            "hostname": self.hostname,
            "datasets": list(self.datasets),
            "ephemeral_key": b64(self.ephemeral_key),
            "challenge": self.challenge,
        }
        if self.boot is not None:
            out["boot_flags"] = list(self.boot.flags)
            out["cmdline_sha256"] = self.boot.cmdline_sha256
        return out

    @classmethod
    def create(
        cls,
        private_key: HostKey,
        hostname: str,
        datasets: list[str] | tuple[str, ...],
        ephemeral_key: bytes,
        challenge: str,
        boot: BootContext | None = None,
    ) -> UnlockRequest:
        host_id = host_id_of(public_of(private_key))
        unsigned = cls(
            host_id, hostname, tuple(datasets), ephemeral_key, _challenge(challenge), boot=boot
        )
        return unsigned._replace(signature=_sign(private_key, CONTEXT_UNLOCK, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> UnlockRequest:
        names = {"host_id", "hostname", "datasets", "ephemeral_key", "challenge"}
        body = _signed_body(raw, names, {VERSION_BOOT: _BOOT_FIELDS})
        datasets = _field(body, "datasets", list)
        if len(datasets) > MAX_DATASETS or not all(
            isinstance(d, str) and is_target(d) for d in datasets
        ):
            raise ProtocolViolation("invalid datasets")
        boot = None
        if body["v"] == VERSION_BOOT:
            boot = BootContext.checked(body["boot_flags"], body["cmdline_sha256"])
        return cls(
            host_id=_hex32(_field(body, "host_id", str), "host_id"),
            hostname=check_hostname(_field(body, "hostname", str)),
            datasets=tuple(datasets),
            ephemeral_key=_key32(_field(body, "ephemeral_key", str), "ephemeral_key"),
            challenge=_challenge(_field(body, "challenge", str)),
            signature=_signature(_field(body, "signature", str)),
            boot=boot,
        )

    def verify(self, public_key: bytes) -> None:
        """Raises crypto.BadSignature unless signed by ``public_key`` (the enrolled host key)."""
        _verify_host(public_key, self.host_id, self.signature, CONTEXT_UNLOCK, self.body())


class UnlockCreated(NamedTuple):
    """``pin`` is the code the console shows. ``code_kind`` says what it is: a request code
    the owner matches (CODE_REQUEST: it approves nothing) or, under the sms-pin policy, the
    PIN whose SMS reply approves; ``approve_at`` says where the owner approves. Both are sent
    only to a version 2 request (a version 1 client takes exactly the first three fields)."""

    request_id: str
    pin: str
    expires_at: int
    code_kind: str | None = None
    approve_at: str = ""
    approved_ahead: bool = False  # an owner approved ahead of this (planned) reboot

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "pin": self.pin,
            "expires_at": self.expires_at,
        }
        if self.code_kind is not None:
            out["code_kind"], out["approve_at"] = self.code_kind, self.approve_at
        if self.approved_ahead:
            out["approved_ahead"] = True
        return out

    @classmethod
    def from_json(cls, raw: Any) -> UnlockCreated:
        names = {"request_id", "pin", "expires_at"}
        extended = isinstance(raw, dict) and "code_kind" in raw
        ahead = isinstance(raw, dict) and "approved_ahead" in raw
        wanted = names | ({"code_kind", "approve_at"} if extended else set())
        body = _exact(raw, wanted | ({"approved_ahead"} if ahead else set()))
        if ahead and body["approved_ahead"] is not True:
            raise ProtocolViolation("approved_ahead is true when present")
        pin = _field(body, "pin", str)
        if not _PIN_RE.fullmatch(pin):
            raise ProtocolViolation("invalid pin")
        kind, where = None, ""
        if extended:
            kind, where = _field(body, "code_kind", str), _field(body, "approve_at", str)
            if kind not in (CODE_REQUEST, CODE_PIN) or len(where) > MAX_WHERE:
                raise ProtocolViolation("invalid code_kind or approve_at")
        return cls(
            _hex32(_field(body, "request_id", str), "request_id"),
            pin,
            _field(body, "expires_at", int),
            kind,
            where,
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
    def create(
        cls, private_key: HostKey, hostname: str, within: int, challenge: str
    ) -> AheadRequest:
        host_id = _host_id(private_key)
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

    @staticmethod
    def context() -> bytes:
        """What the signature covers besides the body: a subclass signs for another purpose."""
        return CONTEXT_HEARTBEAT

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "host_id": self.host_id, "challenge": self.challenge}

    @classmethod
    def create(cls, private_key: HostKey, challenge: str) -> Self:
        unsigned = cls(_host_id(private_key), _challenge(challenge))
        return unsigned._replace(signature=_sign(private_key, cls.context(), unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> Self:
        body = _signed_body(raw, {"host_id", "challenge"})
        return cls(_hex32(_field(body, "host_id", str), "host_id"), *_challenge_and_signature(body))

    def verify(self, public_key: bytes) -> None:
        """Raises crypto.BadSignature unless signed by ``public_key`` (the enrolled host key)."""
        _verify_host(public_key, self.host_id, self.signature, self.context(), self.body())


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


def decision_from_json(raw: Any) -> PollResult:
    """A rotation's poll answer: its state only, approved included (nothing is released)."""
    if not isinstance(raw, dict) or raw.get("state") not in STATES:
        raise ProtocolViolation("unknown state")
    return PollResult(_exact(raw, {"state"})["state"])


def seal_release(request_id: str, ephemeral_key: bytes, secret: bytes) -> crypto.Sealed:
    """Gateway side: encrypt the secret to the boot's ephemeral key, bound to the request id."""
    return crypto.seal_to(ephemeral_key, secret, release_info(request_id))


def open_release(request_id: str, ephemeral_private: bytes, sealed: crypto.Sealed) -> bytes:
    """Client side; raises crypto.DecryptionFailed."""
    return crypto.open_sealed(ephemeral_private, sealed, release_info(request_id))


# --- repository key rotation (zkv rotate --repository-key, gateway/rotations.py) -------------


class RepositoryKeyQuery(Heartbeat):
    """Which repository key does the gateway hold for me? (``zkv reconcile``): a heartbeat's
    shape, signed for this purpose only."""

    @staticmethod
    def context() -> bytes:
        return CONTEXT_KEY_QUERY


class RotationRequest(NamedTuple):
    """Asks the owner to approve a new repository key for this host, exactly as a boot asks
    for an unlock; the key itself follows only after the approval (RepositoryKeyDelivery)."""

    host_id: str
    hostname: str
    challenge: str
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "host_id": self.host_id,
            "hostname": self.hostname,
            "challenge": self.challenge,
        }

    @classmethod
    def create(cls, private_key: HostKey, hostname: str, challenge: str) -> RotationRequest:
        unsigned = cls(_host_id(private_key), check_hostname(hostname), _challenge(challenge))
        return unsigned._replace(signature=_sign(private_key, CONTEXT_ROTATION, unsigned.body()))

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> RotationRequest:
        body = _signed_body(raw, {"host_id", "hostname", "challenge"})
        return cls(
            _hex32(_field(body, "host_id", str), "host_id"),
            check_hostname(_field(body, "hostname", str)),
            *_challenge_and_signature(body),
        )

    def verify(self, public_key: bytes) -> None:
        _verify_host(public_key, self.host_id, self.signature, CONTEXT_ROTATION, self.body())


class RepositoryKeyDelivery(NamedTuple):
    """The new repository key for an approved rotation, once. TLS to the pinned gateway is its
    only protection in transit (docs/threat-model.md); signed, so only the host that asked can
    deliver, and bound to the rotation's request id."""

    host_id: str
    request_id: str
    key: bytes = b""
    challenge: str = ""
    signature: bytes = b""

    def __repr__(self) -> str:  # never the key
        return f"RepositoryKeyDelivery(host_id={self.host_id!r}, request_id={self.request_id!r})"

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "host_id": self.host_id,
            "request_id": self.request_id,
            "key": b64(self.key),
            "challenge": self.challenge,
        }

    @classmethod
    def create(
        cls, private_key: HostKey, request_id: str, key: bytes, challenge: str
    ) -> RepositoryKeyDelivery:
        if len(key) != 32:
            raise ProtocolViolation("a repository key is 32 bytes")
        unsigned = cls(
            _host_id(private_key), _hex32(request_id, "request_id"), key, _challenge(challenge)
        )
        return unsigned._replace(
            signature=_sign(private_key, CONTEXT_KEY_DELIVERY, unsigned.body())
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, raw: Any) -> RepositoryKeyDelivery:
        body = _signed_body(raw, {"host_id", "request_id", "key", "challenge"})
        return cls(
            _hex32(_field(body, "host_id", str), "host_id"),
            _hex32(_field(body, "request_id", str), "request_id"),
            _key32(_field(body, "key", str), "key"),
            *_challenge_and_signature(body),
        )

    def verify(self, public_key: bytes) -> None:
        _verify_host(public_key, self.host_id, self.signature, CONTEXT_KEY_DELIVERY, self.body())

    @property
    def key_id(self) -> str:
        return repository_key_id(self.key)


class RepositoryKeyStatus(NamedTuple):
    """The id (zkv/keystore.py repository_key_id) of the repository key the gateway holds for
    the host: after a delivery, the gateway's confirmation that it holds the new one."""

    key_id: str

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id}

    @classmethod
    def from_json(cls, raw: Any) -> RepositoryKeyStatus:
        key_id = _field(_exact(raw, {"key_id"}), "key_id", str)
        if not _KEY_ID_RE.fullmatch(key_id):
            raise ProtocolViolation("key_id must be 16 lowercase hex characters")
        return cls(key_id)


def _host_id(private_key: HostKey) -> str:
    return host_id_of(public_of(private_key))


def _challenge_and_signature(body: dict[str, Any]) -> tuple[str, bytes]:
    return _challenge(_field(body, "challenge", str)), _signature(_field(body, "signature", str))


def _verify_host(
    public_key: bytes, host_id: str, signature: bytes, context: bytes, body: dict[str, Any]
) -> None:
    """Raises crypto.BadSignature unless signed by ``public_key`` (the enrolled host key)."""
    if host_id_of(public_key) != host_id:
        raise crypto.BadSignature
    crypto.host_verify(public_key, signature, context + canonical(body))


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


def _b64_field(body: dict[str, Any], name: str, limit: int = 4096) -> bytes:
    value = _field(body, name, str)
    if len(value) > limit * 4 // 3 + 4:
        raise ProtocolViolation(f"{name} too large")
    try:
        return unb64(value)
    except ValueError:
        raise ProtocolViolation(f"{name} is not base64") from None


# --- TPM enrolment evidence (zkv/tpm.py makes it, gateway/attestation.py checks it) ------------


class TpmCredentialRequest(NamedTuple):
    """First round trip of a TPM enrolment: the TPM's endorsement key certificate and a fresh
    attestation key (TPM2B_PUBLIC), for the gateway to encrypt a credential to that pair."""

    challenge: str
    ek_cert: bytes  # DER, as the manufacturer stored it in the TPM's NV
    ak_public: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "challenge": self.challenge,
            "ek_cert": b64(self.ek_cert),
            "ak_public": b64(self.ak_public),
        }

    @classmethod
    def from_json(cls, raw: Any) -> TpmCredentialRequest:
        body = _exact(raw, {"v", "challenge", "ek_cert", "ak_public"})
        if body["v"] != VERSION:
            raise ProtocolViolation("unsupported protocol version")
        return cls(
            _challenge(_field(body, "challenge", str)),
            _b64_field(body, "ek_cert"),
            _b64_field(body, "ak_public", 512),
        )


class TpmCredential(NamedTuple):
    """TPM2_MakeCredential's output: only the TPM holding that EK, with that AK loaded, can
    recover the secret (TPM2_ActivateCredential)."""

    credential_blob: bytes  # TPM2B_ID_OBJECT's contents
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET's contents

    def to_json(self) -> dict[str, Any]:
        return {"credential_blob": b64(self.credential_blob), "secret": b64(self.encrypted_secret)}

    @classmethod
    def from_json(cls, raw: Any) -> TpmCredential:
        body = _exact(raw, {"credential_blob", "secret"})
        return cls(_b64_field(body, "credential_blob", 512), _b64_field(body, "secret", 1024))


class TpmEvidence(NamedTuple):
    """What makes the gateway believe a host key lives in a TPM: the EK certificate (chains to
    a CA it trusts), the AK that activated the credential (so it sits in that TPM), and the
    AK's TPM2_Certify of the host key over certify_nonce(challenge)."""

    ek_cert: bytes
    ak_public: bytes
    credential: bytes  # the activated secret
    key_public: bytes  # the host key's TPM2B_PUBLIC (attributes: never left the TPM)
    attest: bytes  # TPMS_ATTEST
    attest_signature: bytes  # TPMT_SIGNATURE by the AK

    def to_json(self) -> dict[str, Any]:
        return {name: b64(value) for name, value in self._asdict().items()}

    @classmethod
    def from_json(cls, raw: Any) -> TpmEvidence:
        body = _exact(raw, set(cls._fields))
        return cls(*(_b64_field(body, name) for name in cls._fields))
