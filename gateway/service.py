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
    ACTION_NONE,
    ACTION_WIPE,
    STATE_APPROVED,
    STATE_PENDING,
    EnrollAccepted,
    EnrollRequest,
    Heartbeat,
    HeartbeatAnswer,
    PollResult,
    UnlockCreated,
    UnlockRequest,
)

from . import approvals, audit, liveness, ratelimit
from .approvals import KIND_ENROLL, KIND_UNLOCK, Approval, NotAllowed, Reply
from .config import Settings
from .errors import ApiError, GatewayCliError, NotifyFailed, SecretUnavailable
from .liveness import Liveness
from .notify import Notifier, enroll_text, suspended_text, unlock_text
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
            self._refuse_unless_alive(host)
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
        a = row.approval
        ttl = self.settings.REQUEST_TTL
        text = unlock_text(ip, req.hostname, host.hostname, req.datasets, now, a.pin, ttl)
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
            barred = liveness.observe(self._liveness(conn, host), now, self.settings.DEADMAN_WINDOW)
            if host.status != HOST_APPROVED or barred.refuses_unlock:
                why = "revoked" if host.status != HOST_APPROVED else barred.state
                self._update(conn, row, approvals.fail(a, now, f"host {why}"))
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
                self._owner_reply(conn, approvals.parse_reply(body), now)
        self._wake()

    def message_refused(self, problem: str) -> None:
        """A signed webhook that is not shaped as Twilio sends one: audited, nothing decided."""
        with self.store.write() as conn:
            audit.record(conn, "sms_rejected", self.clock(), detail=f"not Twilio's: {problem}")

    def _owner_reply(self, conn: Tx, reply: Reply | None, now: float) -> None:
        """A reply naming an open request's PIN decides it. Any other reply from the owner
        counts one strike against every open request (the owner has one phone, so a wrong
        PIN cannot be attributed more precisely); MAX_WRONG_PINS strikes deny a request."""
        live = []
        for row in self.store.open_requests(conn):
            a = approvals.observe(row.approval, now)
            if a != row.approval:
                self._update(conn, row, a)
            else:
                live.append(row)
        for row in live:
            if reply is not None and approvals.pin_matches(row.approval, reply.pin):
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

    # --- dead-man switch and remote wipe (liveness.py) ---------------------------------------

    def heartbeat(self, req: Heartbeat, ip: str) -> HeartbeatAnswer:
        """A running host is alive; a wiped one is told to destroy its repository slot."""
        now = self.clock()
        with self._refusals(ip, req.host_id):
            with self.store.read() as conn:
                host = self.store.host(conn, req.host_id)
            if host is None or host.status != HOST_APPROVED:
                raise _Unauthorized(f"heartbeat: host is {host.status if host else 'unknown'}")
            self._check_signed(req.timestamp, now, lambda: req.verify(unb64(host.public_key)))
            with self.store.write() as conn:
                self._use_nonce(conn, req.host_id, req.nonce, now)
                per_host = Limit(f"heartbeat:{req.host_id}", liveness.HEARTBEATS_PER_HOUR, HOUR)
                if ratelimit.hit(conn, now, per_host) is not None:
                    raise _Limited(f"heartbeats over {liveness.HEARTBEATS_PER_HOUR} per hour")
                old = self._liveness(conn, host)
                new = liveness.beat(old, now, self.settings.DEADMAN_WINDOW)
                self._save_liveness(conn, old, new, f"heartbeat from {ip}")
                if new.state == liveness.WIPED:
                    audit.record(conn, "wipe_sent", now, host_id=host.host_id, source_ip=ip)
        if new.notice_due:
            self.tell_suspended()
        return HeartbeatAnswer(ACTION_WIPE if new.state == liveness.WIPED else ACTION_NONE)

    def sweep_liveness(self, host_id: str | None = None) -> None:
        """Suspend the approved hosts (or the one) silent past their window; tell the owners.
        Runs on a schedule in each worker (server.py) and before an unlock is granted; reads
        first, so a sweep that finds nothing takes no write lock."""
        if self._silent_hosts(host_id):
            now = self.clock()
            with self.store.write() as conn:
                for host in self._silent_hosts(host_id, conn):
                    old = self._liveness(conn, host)
                    new = liveness.observe(old, now, self.settings.DEADMAN_WINDOW)
                    self._save_liveness(conn, old, new, "no heartbeat within the window")
        self.tell_suspended()

    def _silent_hosts(self, host_id: str | None, conn: Tx | None = None) -> list[Host]:
        if conn is None:
            with self.store.read() as fresh:
                return self._silent_hosts(host_id, fresh)
        if host_id is None:
            hosts, known = self.store.all_hosts(conn), self.store.all_liveness(conn)
        else:
            one, row = self.store.host(conn, host_id), self.store.liveness(conn, host_id)
            hosts, known = [one] if one else [], {host_id: row} if row else {}
        now, silent = self.clock(), []
        for host in hosts:
            x = known.get(host.host_id) or _alive_since_approval(host)
            if (
                host.status == HOST_APPROVED
                and liveness.observe(x, now, self.settings.DEADMAN_WINDOW) != x
            ):
                silent.append(host)
        return silent

    def tell_suspended(self) -> None:
        """One notice for every suspension not told yet, in a budget of its own (only hosts'
        silence spends it); a notice that fails is retried at the next sweep."""
        now = self.clock()
        budget = Limit("notifications:liveness", self.settings.SMS_PER_HOUR, HOUR)
        with self.store.read() as conn:
            if not self.store.liveness_notices(conn, lock=False):
                return
        with self.store.write() as conn:
            due = self.store.liveness_notices(conn)
            if not due or ratelimit.exceeded(conn, now, budget):
                return
            ratelimit.record(conn, now, budget.key)
            names = []
            for x in due:
                host = self.store.host(conn, x.host_id)
                names.append(host.hostname if host else x.host_id)
                self.store.save_liveness(conn, liveness.told(x))
            audit.record(conn, "suspended_notice", now, detail=f"{len(due)} hosts")
        try:
            self.notifier.notify(suspended_text(names, now), "")
        except NotifyFailed as exc:
            with self.store.write() as conn:
                for x in due:  # as it is now: the owner may have resumed it meanwhile
                    current = self.store.liveness(conn, x.host_id)
                    if current is not None:
                        self.store.save_liveness(conn, liveness.tell_again(current))
                audit.record(conn, "suspended_notice_failed", self.clock(), detail=str(exc))

    def change_liveness(self, host_id: str, change: Callable[[Liveness], Liveness]) -> Liveness:
        """`hosts deadman` / `hosts resume` / `hosts wipe`: the owner's side of liveness.py."""
        now = self.clock()
        with self.store.write() as conn:
            host = self.store.host(conn, host_id)
            if host is None:
                raise GatewayCliError(f"no host {host_id}")
            old = self._liveness(conn, host)
            try:
                new = change(old)
            except NotAllowed as exc:
                raise GatewayCliError(f"host {host_id}: {exc}") from None
            self._save_liveness(conn, old, new, "via cli")
            for row in self.store.open_requests(conn, host_id) if new.refuses_unlock else ():
                a = approvals.observe(row.approval, now)
                self._update(conn, row, approvals.deny(a, now, f"host {new.state}"), "via cli")
        self._wake()
        return new

    def wipe(self, host_id: str, shared_ok: bool) -> str:
        """Mark the host wiped (for good), then disable its secret; says what was disabled."""
        with self.store.read() as conn:
            hosts = self.store.all_hosts(conn)
        host = next((h for h in hosts if h.host_id == host_id), None)
        if host is None:
            raise GatewayCliError(f"no host {host_id}")
        sharing = [
            h.hostname
            for h in hosts
            if h.host_id != host_id
            and h.secret_name == host.secret_name
            and h.status != HOST_REVOKED
        ]
        if sharing and not shared_ok:
            raise GatewayCliError(
                f"host {host_id}'s secret ({host.secret_name or 'the default'}) is also used by "
                f"{', '.join(sharing[:5])}: give it its own secret first, or pass --shared"
            )
        self.change_liveness(host_id, lambda x: liveness.wipe(x, self.clock()))
        try:
            done = self.source.disable(host.secret_name)
        except SecretUnavailable as exc:
            with self.store.write() as conn:
                audit.record(
                    conn, "wipe_secret_failed", self.clock(), host_id=host_id, detail=str(exc)
                )
            raise GatewayCliError(
                f"host {host_id} is wiped, but its secret is not disabled: {exc}"
            ) from None
        with self.store.write() as conn:
            audit.record(conn, "wipe_secret_disabled", self.clock(), host_id=host_id, detail=done)
        return done

    def all_liveness(self) -> dict[str, Liveness]:
        with self.store.read() as conn:
            return self.store.all_liveness(conn)

    def _refuse_unless_alive(self, host: Host) -> None:
        """The lazy half of the schedule: a gateway that was down still suspends on time."""
        with self.store.read() as conn:
            old = self._liveness(conn, host)
        new = liveness.observe(old, self.clock(), self.settings.DEADMAN_WINDOW)
        if new != old:
            self.sweep_liveness(host.host_id)
        if new.refuses_unlock:
            raise _Unauthorized(f"host is {new.state}")

    def _liveness(self, conn: Tx, host: Host) -> Liveness:
        return self.store.liveness(conn, host.host_id) or _alive_since_approval(host)

    def _save_liveness(self, conn: Tx, old: Liveness, new: Liveness, detail: str) -> None:
        if new == old:
            return
        self.store.save_liveness(conn, new)
        if new.state != old.state or new.window != old.window:
            window = liveness.describe(new.window_or(self.settings.DEADMAN_WINDOW))
            audit.record(
                conn,
                f"host_{new.state}",
                self.clock(),
                host_id=new.host_id,
                detail=f"{detail}; window {window}",
            )

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


def _alive_since_approval(host: Host) -> Liveness:
    """A host that never sent a heartbeat: its window counts from its approval."""
    return liveness.start(host.host_id, host.decided_at or host.enrolled_at)
