"""The gateway's operations, shared by the HTTP API, the Twilio webhook and the CLI.

Each operation is one short database transaction around a pure transition from approvals.py,
with its audit entry in the same transaction. Slow calls (SMS, Key Vault) happen outside
transactions. Authentication failures are recorded (for the lockout and the audit log) and then
all look the same to the caller.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zkv import crypto, protocol
from zkv.encoding import b64, unb64
from zkv.protocol import (
    STATE_APPROVED,
    STATE_PENDING,
    EnrollAccepted,
    EnrollRequest,
    PollResult,
    UnlockCreated,
    UnlockRequest,
)

from . import approvals, audit, owner_store, ratelimit
from .approvals import KIND_ENROLL, KIND_UNLOCK, Approval, NotAllowed, Reply
from .config import Settings
from .errors import ApiError, GatewayCliError, NotifyFailed, SecretUnavailable
from .notify import Notifier, enroll_text, unlock_text
from .owner_store import Owner
from .ratelimit import HOUR, Limit
from .secrets_source import SecretSource
from .store import Host, RequestRow, Store, Tx

log = logging.getLogger("zkv.gateway")

HOST_PENDING, HOST_APPROVED, HOST_REVOKED = "pending", "approved", "revoked"


class _Unauthorized(Exception):
    """Internal: why a caller was refused; only the audit log sees the reason."""


class _Limited(Exception):
    pass


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        source: SecretSource,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.store, self.source, self.notifier = settings, store, source, notifier
        self.clock = clock
        self._changed = threading.Condition()  # wakes this process's long-polls early
        from .owners import Owners  # owners.py builds on this class

        self.owners = Owners(self)

    # --- enrolment ----------------------------------------------------------------------------

    def enroll(self, req: EnrollRequest, ip: str) -> EnrollAccepted:
        now = self.clock()
        with self._refusals(ip, req.host_id):
            self._check_signed(req.timestamp, now, req.verify)
            with self.store.write() as conn:
                self._use_nonce(conn, req.host_id, req.nonce, now)
                host = self.store.host(conn, req.host_id)
                if host is not None:
                    return EnrollAccepted(req.host_id, host.status)
                self._limit(conn, now, ip, None)
                self.store.add_host(
                    conn,
                    Host(
                        req.host_id,
                        req.hostname,
                        b64(req.public_key),
                        HOST_PENDING,
                        None,
                        ip,
                        now,
                        None,
                    ),
                )
                row = self._new_request(conn, KIND_ENROLL, req.host_id, req.hostname, ip, (), None)
        text = enroll_text(ip, req.hostname, req.host_id, now, row.approval.pin)
        self._notify(row, text)
        with self.store.read() as conn:
            host = self.store.host(conn, req.host_id)
        return EnrollAccepted(req.host_id, host.status if host else HOST_PENDING)

    # --- unlock requests ----------------------------------------------------------------------

    def create_unlock(self, req: UnlockRequest, ip: str) -> UnlockCreated:
        now = self.clock()
        with self._refusals(ip, req.host_id):
            with self.store.read() as conn:
                host = self.store.host(conn, req.host_id)
            if host is None or host.status != HOST_APPROVED:
                raise _Unauthorized(f"host is {host.status if host else 'unknown'}")
            self._check_signed(req.timestamp, now, lambda: req.verify(unb64(host.public_key)))
            with self.store.write() as conn:
                self._use_nonce(conn, req.host_id, req.nonce, now)
                self._limit(conn, now, ip, req.host_id)
                row = self._new_request(
                    conn,
                    KIND_UNLOCK,
                    req.host_id,
                    req.hostname,
                    ip,
                    req.datasets,
                    b64(req.ephemeral_key),
                )
                # The owners' links go into the notification only, never to the requester.
                links = self.owners.decision_links(
                    conn, row.approval.request_id, row.approval.expires_at
                )
        a = row.approval
        ttl = self.settings.REQUEST_TTL
        sms_pin = self.settings.APPROVAL_POLICY == "sms-pin"
        text = unlock_text(
            ip, req.hostname, host.hostname, req.datasets, now, a.pin, ttl, links, sms_pin
        )
        self._notify(row, text)
        return UnlockCreated(a.request_id, a.pin, int(a.expires_at))

    def poll(self, request_id: str, wait: float, ip: str) -> PollResult:
        deadline = self.clock() + min(wait, self.settings.MAX_WAIT)
        while True:
            result = self._poll_once(request_id, ip)
            remaining = deadline - self.clock()
            if result is not None and (result.state != STATE_PENDING or remaining <= 0):
                return result
            with self._changed:
                self._changed.wait(max(0.0, min(self.settings.POLL_INTERVAL, remaining)))

    def _poll_once(self, request_id: str, ip: str) -> PollResult | None:
        now = self.clock()
        with self.store.read() as conn:
            row = self.store.request(conn, request_id)
        if (
            row is None
            or row.approval.kind != KIND_UNLOCK
            or (row.approval.released and row.approval.state == STATE_APPROVED)
        ):
            # Unknown, or already released: either way this id opens nothing any more.
            with self._refusals(ip, None):
                raise _Unauthorized("unknown or consumed request id")
        a = approvals.observe(row.approval, now)
        if a != row.approval:
            self._observe_expiry(request_id)
        if a.state == STATE_APPROVED:
            return self._release(request_id)
        return PollResult(a.state)

    def _release(self, request_id: str) -> PollResult | None:
        """Release once; None means another poll got there first (the caller re-reads)."""
        now = self.clock()
        with self.store.write() as conn:
            row = self.store.request(conn, request_id, lock=True)
            host = self.store.host(conn, row.host_id) if row else None
            if row is None or host is None or row.ephemeral_key is None:
                return None
            try:
                a = approvals.release(row.approval, now)
            except NotAllowed:
                return None
            if host.status != HOST_APPROVED:
                self._update(conn, row, approvals.fail(a, now, "host revoked"))
                return PollResult(protocol.STATE_FAILED)
            self.store.save(conn, a, ephemeral_key=None)  # consumed before the secret is read
            audit.record(
                conn,
                "released",
                now,
                request_id=request_id,
                host_id=row.host_id,
                source_ip=row.source_ip,
                detail="sealed to the boot's ephemeral key",
            )
        try:
            secret = self.source.get(host.secret_name)
            sealed = protocol.seal_release(request_id, unb64(row.ephemeral_key), secret)
            del secret
        except (SecretUnavailable, crypto.DecryptionFailed) as exc:
            with self.store.write() as conn:
                self._update(conn, row, approvals.fail(a, self.clock(), f"secret source: {exc}"))
            raise ApiError("secret_unavailable") from None
        return PollResult(STATE_APPROVED, sealed)

    def _observe_expiry(self, request_id: str) -> None:
        with self.store.write() as conn:
            row = self.store.request(conn, request_id, lock=True)
            if row is not None:
                a = approvals.observe(row.approval, self.clock())
                if a != row.approval:
                    self._update(conn, row, a)

    # --- the owner's decisions ----------------------------------------------------------------

    def owner_message(self, sid: str, sender: str, body: str) -> None:
        """An inbound SMS, already known to come from Twilio. Same outcome for the sender
        whatever happens; the audit log says what did."""
        now = self.clock()
        with self.store.write() as conn:
            if not self.store.first_sight_of_message(conn, sid, now):
                audit.record(conn, "sms_duplicate", now, detail=f"sid={sid[:64]}")
            elif sender != self.settings.SMS_TO:
                audit.record(conn, "sms_rejected", now, detail="sender is not the owner")
            else:
                self._owner_reply(conn, approvals.parse_reply(body), now, by_sms=True)
        self._wake()

    def message_refused(self, problem: str) -> None:
        """A signed webhook that is not shaped as Twilio sends one: audited, nothing decided."""
        with self.store.write() as conn:
            audit.record(conn, "sms_rejected", self.clock(), detail=f"not Twilio's: {problem}")

    def _owner_reply(self, conn: Tx, reply: Reply | None, now: float, by_sms: bool = False) -> None:
        """A reply naming an open request's PIN decides it. Any other reply from the owner
        counts one strike against every open request (the owner has one phone, so a wrong
        PIN cannot be attributed more precisely); MAX_WRONG_PINS strikes deny a request.
        The PIN is shown on the booting host's console, so whoever holds the host knows it:
        under the page policy an SMS reply can deny but never approve, and under sms+totp an
        approving reply must also carry an owner's TOTP code (one that fails is a strike)."""
        policy, owner = self.settings.APPROVAL_POLICY, None
        if by_sms and reply is not None and reply.approve and policy != "sms-pin":
            if policy == "sms+totp" and reply.otp is not None:
                owner = self.owners.totp_owner(conn, reply.otp, now)
            if owner is None and policy == "page":
                audit.record(conn, "sms_approval_refused", now, detail="policy page")
                return
            if owner is None:
                audit.record(conn, "sms_approval_refused", now, detail="no valid TOTP code")
                reply = None  # counts as a wrong reply
        live = []
        for row in self.store.open_requests(conn):
            a = approvals.observe(row.approval, now)
            if a != row.approval:
                self._update(conn, row, a)
            else:
                live.append(row)
        for row in live:
            if reply is not None and approvals.pin_matches(row.approval, reply.pin):
                if owner is not None:  # sms+totp: one owner's vote
                    self.decide_as_owner(conn, row.approval.request_id, owner, True, "sms+totp")
                else:
                    self._update(conn, row, approvals.answer(row.approval, reply, now), "via sms")
                return
        audit.record(conn, "wrong_pin", now, detail=f"strikes {len(live)} open requests")
        for row in live:
            struck = approvals.strike(row.approval, now, self.settings.MAX_WRONG_PINS)
            self._update(conn, row, struck, f"strike {struck.wrong_pins}")

    def decide(self, request_id: str, pin: str | None, approve: bool) -> str:
        """`zkv-gateway approve ID PIN` / `deny ID`; returns the new state."""
        now = self.clock()
        problem = ""
        with self.store.write() as conn:
            row = self.store.request(conn, request_id, lock=True)
            if row is None:
                raise GatewayCliError(f"no request {request_id}")
            a = approvals.observe(row.approval, now)
            try:
                if not approve:
                    a = approvals.deny(a, now, "owner")
                elif pin is not None and approvals.pin_matches(a, pin):
                    a = approvals.answer(a, Reply(True, pin), now)
                else:
                    a = approvals.strike(a, now, self.settings.MAX_WRONG_PINS)
                    problem = f"wrong PIN (strike {a.wrong_pins} of {self.settings.MAX_WRONG_PINS})"
            except NotAllowed:
                problem = f"request {request_id} is {a.state}; nothing to decide"
            self._update(conn, row, a, "via cli")
        self._wake()
        if problem:
            raise GatewayCliError(problem)
        return a.state

    def decide_as_owner(
        self, conn: Tx, request_id: str, owner: Owner, approve: bool, factor: str
    ) -> str:
        """An owner's vote (owners.py checked who and how), inside the caller's transaction:
        a denial denies, approvals approve once the host's quorum of distinct owners is met
        (APPROVAL_QUORUM, or `zkv-gateway quorum HOST M`). Returns the request's state."""
        row = self.store.request(conn, request_id, lock=True)
        if row is None:
            raise NotAllowed("no such request")
        now = self.clock()
        ayes = owner_store.add_vote(conn, request_id, owner.owner_id, approve, factor, now)
        quorum = owner_store.quorum_of(conn, row.host_id) or self.settings.APPROVAL_QUORUM
        reason = f"{owner.name} with {factor}"
        decided = approvals.owner_decides(row.approval, approve, now, reason, ayes, quorum)
        if decided == row.approval:
            audit.record(
                conn, "approval_vote", now, request_id=request_id, host_id=row.host_id,
                detail=f"{reason}: {ayes} of {quorum}",
            )  # fmt: skip
        self._update(conn, row, decided, f"({ayes} of {quorum})" if quorum > 1 else "")
        return decided.state

    def set_quorum(self, host_id: str, quorum: int) -> None:
        if not 1 <= quorum <= 20:
            raise GatewayCliError("a quorum is 1 to 20 owners")
        with self.store.write() as conn:
            if self.store.host(conn, host_id) is None:
                raise GatewayCliError(f"no host {host_id}")
            owner_store.set_quorum(conn, host_id, quorum)
            audit.record(conn, "host_quorum", self.clock(), host_id=host_id, detail=f"{quorum}")

    def still_open(self, row: RequestRow) -> bool:
        return approvals.observe(row.approval, self.clock()).is_open

    def wake(self) -> None:
        """Long-polls of this process look again at once (after a decision made elsewhere)."""
        self._wake()

    # --- hosts --------------------------------------------------------------------------------

    def set_host_status(self, host_id: str, status: str, secret_name: str | None = None) -> Host:
        now = self.clock()
        with self.store.write() as conn:
            host = self.store.host(conn, host_id)
            if host is None:
                raise GatewayCliError(f"no host {host_id}")
            values: dict[str, object] = {"status": status, "decided_at": now}
            if secret_name is not None:
                values["secret_name"] = secret_name
            self.store.set_host(conn, host_id, **values)
            audit.record(
                conn,
                f"host_{status}",
                now,
                host_id=host_id,
                detail=f"secret={secret_name}" if secret_name else "",
            )
            for row in self.store.open_requests(conn, host_id):
                a = approvals.observe(row.approval, now)
                if a.is_open and row.approval.kind == KIND_ENROLL and status == HOST_APPROVED:
                    a = approvals.answer(a, Reply(True, a.pin), now)
                elif a.is_open and status == HOST_REVOKED:
                    a = approvals.deny(a, now, "host revoked")
                self._update(conn, row, a, "via cli")
            host = self.store.host(conn, host_id)
        self._wake()
        assert host is not None
        return host

    def hosts(self) -> list[Host]:
        with self.store.read() as conn:
            return self.store.all_hosts(conn)

    # --- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _refusals(self, ip: str, host_id: str | None) -> Iterator[None]:
        """Turn internal refusals into the uniform API errors, recording them first."""
        with self.store.read() as conn:
            lockout = Limit(f"authfail:{ip}", self.settings.AUTH_FAILURES_PER_HOUR, HOUR)
            locked = ratelimit.exceeded(conn, self.clock(), lockout)
        if locked:
            raise ApiError("rate_limited")
        try:
            yield
        except _Unauthorized as exc:
            self._refused("auth_failed", ip, host_id, str(exc), count_failure=True)
            raise ApiError("unauthorized") from None
        except _Limited as exc:
            self._refused("rate_limited", ip, host_id, str(exc), count_failure=False)
            raise ApiError("rate_limited") from None

    def _refused(
        self, event: str, ip: str, host_id: str | None, detail: str, count_failure: bool
    ) -> None:
        """Audit a refusal; authentication failures also count towards the IP's lockout."""
        with self.store.write() as conn:
            if count_failure:
                ratelimit.record(conn, self.clock(), f"authfail:{ip}")
            audit.record(conn, event, self.clock(), host_id=host_id, source_ip=ip, detail=detail)

    def _check_signed(self, timestamp: int, now: float, verify: Callable[[], None]) -> None:
        if not protocol.check_fresh(timestamp, int(now)):
            raise _Unauthorized("timestamp outside the replay window")
        try:
            verify()
        except crypto.BadSignature:
            raise _Unauthorized("bad signature") from None

    def _use_nonce(self, conn: Tx, host_id: str, nonce: str, now: float) -> None:
        if not self.store.use_nonce(conn, host_id, nonce, now):
            raise _Unauthorized("replayed nonce")

    def _limit(self, conn: Tx, now: float, ip: str, host_id: str | None) -> None:
        s = self.settings
        limits = [
            Limit(f"ip:{ip}", s.RATE_PER_SECOND, 1.0),
            Limit(f"ip:{ip}", s.RATE_IP_PER_HOUR, HOUR),
            Limit("notifications", s.SMS_PER_HOUR, HOUR),
        ]
        if host_id is not None:
            limits += [
                Limit(f"host:{host_id}", s.RATE_PER_SECOND, 1.0),
                Limit(f"host:{host_id}", s.RATE_HOST_PER_HOUR, HOUR),
            ]
        hit = ratelimit.hit(conn, now, *limits)
        if hit is not None:
            raise _Limited(f"{hit.key} over {hit.limit} per {hit.window:g}s")
        if secrets.randbelow(32) == 0:  # keep the replay and rate tables small
            self.store.purge(conn, now, 2 * protocol.REPLAY_WINDOW + 60, HOUR)

    def _new_request(
        self,
        conn: Tx,
        kind: str,
        host_id: str,
        hostname: str,
        ip: str,
        datasets: tuple[str, ...],
        ephemeral_key: str | None,
    ) -> RequestRow:
        now = self.clock()
        taken = self.store.open_pins(conn)
        n = self.settings.PIN_LENGTH
        pin = f"{secrets.randbelow(10**n):0{n}d}"
        while pin in taken:  # a PIN names one open request, so it must be unique among them
            pin = f"{secrets.randbelow(10**n):0{n}d}"
        a = approvals.new(secrets.token_hex(16), kind, pin, now, self.settings.REQUEST_TTL)
        row = RequestRow(a, host_id, hostname, ip, datasets, ephemeral_key)
        self.store.add_request(conn, row)
        audit.record(
            conn,
            f"{kind}_requested",
            now,
            request_id=a.request_id,
            host_id=host_id,
            source_ip=ip,
            detail=f"hostname={hostname} datasets={len(datasets)}",
        )
        return row

    def _notify(self, row: RequestRow, text: str) -> None:
        try:
            reply = self.notifier.notify(text, row.approval.pin)
        except NotifyFailed as exc:
            with self.store.write() as conn:
                fresh = self.store.request(conn, row.approval.request_id, lock=True)
                if fresh is not None:
                    failed = approvals.fail(fresh.approval, self.clock(), f"approver: {exc}")
                    self._update(conn, fresh, failed)
            raise ApiError("approver_unavailable") from None
        if reply is not None:
            with self.store.write() as conn:
                self._owner_reply(conn, reply, self.clock())
            self._wake()

    def _update(self, conn: Tx, row: RequestRow, new: Approval, detail: str = "") -> None:
        """Persist a transition, audit it, and apply an enrolment decision to its host."""
        old = row.approval
        if new == old:
            return
        self.store.save(conn, new)
        now = self.clock()
        if new.state != old.state:
            event = new.state if new.kind == KIND_UNLOCK else f"enroll_{new.state}"
            reason = " ".join(x for x in (new.reason, detail) if x)
            audit.record(
                conn,
                event,
                now,
                request_id=new.request_id,
                host_id=row.host_id,
                source_ip=row.source_ip,
                detail=reason,
            )
        elif new.wrong_pins != old.wrong_pins:
            audit.record(
                conn,
                "wrong_pin",
                now,
                request_id=new.request_id,
                host_id=row.host_id,
                detail=detail,
            )
        if new.kind == KIND_ENROLL and new.state != old.state:
            status = {STATE_APPROVED: HOST_APPROVED, protocol.STATE_DENIED: HOST_REVOKED}
            if new.state in status:
                self.store.set_host(conn, row.host_id, status=status[new.state], decided_at=now)

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
