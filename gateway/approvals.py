"""The approval state machine: pure, no I/O, the clock is an argument.

    pending --owner replies PIN (sms-pin policy)-> approved --released once--> (released)
    pending --owners' passkeys (quorum M of N)---> approved   (any owner's deny: denied)
    pending --owner replies NO PIN---------------> denied
    pending --MAX_WRONG_PINS wrong replies-------> denied
    pending --now >= expires_at------------------> expired
    pending|approved (unreleased) --error--------> failed   (SMS or secret source down)

An "ahead" request (a planned reboot) runs the same machine; its expiry is the end of its
window, and "released" means that the next boot inside the window used it up (once).

Default deny: nothing but an explicit matching reply approves, and an approval is good for one
release before the request's own expiry. Every function returns a new value or raises
``NotAllowed``; the store persists what comes back.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, replace

from zkv.protocol import (
    STATE_APPROVED,
    STATE_DENIED,
    STATE_EXPIRED,
    STATE_FAILED,
    STATE_PENDING,
)

KIND_UNLOCK = "unlock"
KIND_ENROLL = "enroll"
KIND_REPOKEY = "repokey"  # a repository key rotation (rotations.py): approved like an unlock
KIND_AHEAD = "ahead"  # asked by a running host before a planned reboot; its next boot uses it

# fullmatch; the second number is the owner's TOTP code (policy sms+totp)
_REPLY = re.compile(
    r"(?:(?P<verb>yes|y|ok|no|n|deny) ?)?(?P<pin>[0-9]{4,12})(?: (?P<otp>[0-9]{6}))?"
)
DENY_WORDS = ("no", "n", "deny")


class NotAllowed(Exception):
    """This transition is not allowed from the request's current state."""


@dataclass(frozen=True)
class Approval:
    request_id: str
    kind: str
    pin: str
    created_at: float
    expires_at: float
    state: str = STATE_PENDING
    wrong_pins: int = 0
    released: bool = False
    reason: str = ""
    decided_at: float | None = None

    @property
    def is_open(self) -> bool:
        """Still waiting for the owner."""
        return self.state == STATE_PENDING


@dataclass(frozen=True)
class Reply:
    approve: bool
    pin: str
    otp: str | None = None


def new(request_id: str, kind: str, pin: str, now: float, ttl: float) -> Approval:
    return Approval(request_id, kind, pin, created_at=now, expires_at=now + ttl)


def observe(a: Approval, now: float) -> Approval:
    """The request as of ``now``: a pending request past its deadline is expired.

    An approved but unreleased request expires too, so an approval cannot be banked for later.
    """
    unreleased = a.state == STATE_APPROVED and not a.released
    if now >= a.expires_at and (a.state == STATE_PENDING or unreleased):
        return _decide(a, STATE_EXPIRED, now, "timeout")
    return a


def pin_matches(a: Approval, pin: str) -> bool:
    return hmac.compare_digest(a.pin.encode(), pin.encode())


def answer(a: Approval, reply: Reply, now: float) -> Approval:
    """The owner's reply naming this request's PIN."""
    a = _pending(a, now)
    if not pin_matches(a, reply.pin):
        raise NotAllowed("pin does not match")
    return _decide(a, STATE_APPROVED if reply.approve else STATE_DENIED, now, "owner")


def strike(a: Approval, now: float, max_wrong: int) -> Approval:
    """A reply that matched no request counts against this one; enough of them deny it."""
    a = _pending(a, now)
    a = replace(a, wrong_pins=a.wrong_pins + 1)
    return _decide(a, STATE_DENIED, now, "wrong-pins") if a.wrong_pins >= max_wrong else a


def owner_decides(
    a: Approval, approve: bool, now: float, reason: str, approvals: int = 1, quorum: int = 1
) -> Approval:
    """A decision from an owner proven by a factor the host cannot know (a passkey on the
    approval page, a TOTP code): it names the request by its own link or the owner's code,
    not by the PIN the host shows. Any owner's denial denies; an approval counts towards the
    quorum: ``approvals`` distinct owners have approved so far, this one included."""
    a = _pending(a, now)
    if not approve:
        return _decide(a, STATE_DENIED, now, reason)
    return _decide(a, STATE_APPROVED, now, reason) if approvals >= quorum else a


def deny(a: Approval, now: float, reason: str) -> Approval:
    """An explicit refusal that names the request (CLI) rather than its PIN."""
    return _decide(_pending(a, now), STATE_DENIED, now, reason)


def fail(a: Approval, now: float, reason: str) -> Approval:
    a = observe(a, now)
    if a.state not in (STATE_PENDING, STATE_APPROVED):
        raise NotAllowed(f"cannot fail a {a.state} request")
    return _decide(a, STATE_FAILED, now, reason)


def release(a: Approval, now: float) -> Approval:
    """Consume the approval: allowed exactly once, only while approved and unexpired."""
    a = observe(a, now)
    if a.state != STATE_APPROVED or a.released:
        raise NotAllowed("nothing to release")
    return replace(a, released=True)


def parse_reply(body: str) -> Reply | None:
    """'123456' or 'yes 123456' approves, 'no 123456' denies, a TOTP code may follow the PIN
    ('123456 654321'); anything else is not a reply."""
    match = _REPLY.fullmatch(" ".join(body.lower().split()))
    if match is None:
        return None
    return Reply(approve=match["verb"] not in DENY_WORDS, pin=match["pin"], otp=match["otp"])


def _pending(a: Approval, now: float) -> Approval:
    a = observe(a, now)
    if a.state != STATE_PENDING:
        raise NotAllowed(f"request is {a.state}")
    return a


def _decide(a: Approval, state: str, now: float, reason: str) -> Approval:
    return replace(a, state=state, decided_at=now, reason=reason)
