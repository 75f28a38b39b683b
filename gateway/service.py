"""The gateway's operations, shared by the HTTP API, the Twilio webhook and the CLI.

Each operation is one short database transaction around a pure transition from approvals.py,
with its audit entry in the same transaction. Slow calls (SMS, Key Vault) happen outside
transactions. Authentication failures are recorded (for the lockout and the audit log) and then
all look the same to the caller.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import TypeVar
from urllib.parse import urlsplit

from zkv import crypto, protocol
from zkv.encoding import b64, unb64
from zkv.protocol import (
    ACTION_NONE,
    ACTION_WIPE,
    STATE_APPROVED,
    STATE_PENDING,
    AheadRequest,
    BootContext,
    Challenge,
    EnrollAccepted,
    EnrollRequest,
    Heartbeat,
    HeartbeatAnswer,
    PollResult,
    TpmCredential,
    TpmCredentialRequest,
    UnlockCreated,
    UnlockRequest,
)

from . import (
    approvals,
    attestation,
    audit,
    boot_store,
    challenges,
    invites,
    liveness,
    owner_store,
    ratelimit,
)
from .approvals import KIND_AHEAD, KIND_ENROLL, KIND_UNLOCK, Approval, NotAllowed, Reply
from .boot_context import BootView, audit_note, refusal
from .config import Settings, refused_boot_flags
from .errors import ApiError, GatewayCliError, NotifyFailed, SecretUnavailable
from .liveness import Liveness
from .notify import Notifier, enrolled_text, suspended_text, unlock_text
from .owner_store import Owner
from .polls import source_of
from .ratelimit import AUTH_FAILED, HOUR, Limit
from .secrets_source import SecretSource
from .store import Host, Invite, RequestRow, Store, Tx

log = logging.getLogger("zkv.gateway")

HOST_PENDING, HOST_APPROVED, HOST_REVOKED = "pending", "approved", "revoked"
T = TypeVar("T")


class _Unauthorized(Exception):
    """Internal: why a caller was refused; only the audit log sees the reason."""


class _Limited(Exception):
    pass


def _over(hit: Limit) -> _Limited:
    return _Limited(f"{hit.key} over {hit.limit} per {hit.window:g}s")


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
        self._challenge_key: bytes | None = None  # read on first use: the CLI never needs it
        self._tpm_cas: list[attestation.Certificate] | None = None  # TPM_CA_BUNDLE, when used
        from .fleet import Fleet  # fleet.py, owners.py and rotations.py build on this class
        from .owners import Owners
        from .rotations import Rotations

        self.owners, self.fleet, self.rotations = Owners(self), Fleet(self), Rotations(self)

    # --- challenges ---------------------------------------------------------------------------

    def challenge(self) -> Challenge:
        """Stateless (challenges.py): no lockout check, no row written, nothing to spend."""
        now = self.clock()
        return Challenge(challenges.issue(self._key(), now), int(now))

    def _key(self) -> bytes:
        if self._challenge_key is None:
            self._challenge_key = self.store.challenge_key()
        return self._challenge_key

    # --- enrolment ---------------------------------------------------------------------------

    def tpm_credential(self, req: TpmCredentialRequest, ip: str) -> TpmCredential:
        """A TPM enrolment's first round trip (attestation.py): nothing stored, nothing sent
        to the owner; only a refusal is counted."""
        now = self.clock()
        with self._refusals(ip):
            try:
                challenges.check(self._key(), req.challenge, now)
            except challenges.BadChallenge as exc:
                raise _Unauthorized(f"challenge: {exc}") from None
            return self._attested(lambda b: attestation.issue_credential(req, self._key(), b))

    def _key_store_ok(self, req: EnrollRequest) -> None:
        """A TPM key needs its evidence to hold; a file key is refused under REQUIRE_TPM."""
        if req.tpm is None:
            if self.settings.REQUIRE_TPM:
                raise _Unauthorized("REQUIRE_TPM and the host has a file key")
            return
        evidence, challenge = req.tpm, req.challenge
        held = self._attested(lambda b: attestation.check(evidence, challenge, self._key(), b))
        if held.point != req.public_key:
            raise _Unauthorized("TPM evidence is of another key")

    def _attested(self, step: Callable[[list[attestation.Certificate]], T]) -> T:
        if self._tpm_cas is None:
            self._tpm_cas = attestation.bundle_file(self.settings.TPM_CA_BUNDLE)
        try:
            return step(self._tpm_cas)
        except attestation.Refused as exc:
            raise _Unauthorized(f"tpm: {exc}") from None

    def invite(
        self, hostname: str, ttl: int, secret_name: str | None = None, replace: bool = False
    ) -> tuple[str, Invite, list[Host]]:
        """`hosts invite`: a one-time token admitting one host under ``hostname``; returns the
        token (shown once, stored only as a hash), the invite and the approved hosts of that
        name it may replace. The owner issuing it is the approval."""
        if not protocol.is_hostname(hostname):
            raise GatewayCliError("not a host name (letters, digits, '.', '-')")
        now = self.clock()
        invite_id = invites.new_invite_id()
        name = secret_name or invites.secret_name_for(hostname, invite_id)
        token = protocol.new_invite_token()
        invite = Invite(
            invite_id, invites.token_hash(token), hostname, name, replace, now, now + ttl
        )
        with self.store.write() as conn:
            approved = [
                h for h in self.store.hosts_named(conn, hostname) if h.status == HOST_APPROVED
            ]
            ids = " ".join(h.host_id for h in approved)
            if approved and not replace:
                raise GatewayCliError(
                    f"an approved host already has the name {hostname} ({ids}); --replace invites "
                    "its successor, which revokes it when it enrols"
                )
            if any(h.status == HOST_REVOKED for h in self.store.hosts_with_secret(conn, name)):
                raise GatewayCliError(f"secret {name} belonged to a revoked host; choose another")
            self.store.add_invite(conn, invite)
            audit.record(
                conn,
                "invite_issued",
                now,
                detail=f"invite={invite_id} hostname={hostname} secret={name} ttl={ttl}s"
                + (f" replaces {ids}" if ids else ""),
            )
        return token, invite, approved

    def enroll(self, req: EnrollRequest, ip: str) -> EnrollAccepted:
        """Admit a host that holds an invite: in one transaction the token is checked (its hash,
        expiry and host name) and used up, and the host stored approved with the invite's
        secret name. Without a valid token nothing is written but the refusal counter, and
        nobody is notified."""
        now = self.clock()
        with self._refusals(ip):
            nonce = self._check_signed(req.challenge, now, req.verify)
            with self.store.read() as conn:  # a made-up token never waits for the writer
                if self.store.invite_by_hash(conn, invites.token_hash(req.token)) is None:
                    raise _Unauthorized("no valid invite token")
            self._key_store_ok(req)
            with self.store.write() as conn:
                invite = self.store.invite_by_hash(conn, invites.token_hash(req.token))
                if invite is None or invite.expires_at <= now:
                    raise _Unauthorized("no valid invite token")
                if invite.hostname != req.hostname:
                    raise _Unauthorized("invite token is for another host name")
                if any(
                    h.status == HOST_REVOKED
                    for h in self.store.hosts_with_secret(conn, invite.secret_name)
                ):
                    raise _Unauthorized("the invite's secret belongs to a revoked host")
                replaced = [
                    h
                    for h in self.store.hosts_named(conn, req.hostname)
                    if h.status == HOST_APPROVED and h.host_id != req.host_id
                ]
                if replaced and not invite.may_replace:
                    raise _Unauthorized("an approved host took the name since the invite")
                self._limit(conn, now, None)
                self._use_nonce(conn, req.host_id, nonce, now)
                old = self.store.host(conn, req.host_id)
                for other in replaced:
                    self._revoke(conn, other.host_id, now, f"replaced by {req.host_id}")
                host = Host(
                    req.host_id,
                    req.hostname,
                    b64(req.public_key),
                    HOST_APPROVED,
                    invite.secret_name,
                    ip,
                    now,
                    now,
                )
                if old is None:
                    self.store.add_host(conn, host)
                else:  # re-admitted (revoked before) or re-enrolled: a new secret either way
                    values = {k: v for k, v in host.__dict__.items() if k != "host_id"}
                    self.store.set_host(conn, req.host_id, **values)
                self.store.use_invite(conn, invite.invite_id)
                if self.store.liveness(conn, req.host_id) is not None:
                    # A new invite is the owner's word: a suspended or wiped host starts afresh.
                    self.store.save_liveness(conn, liveness.start(req.host_id, now))
                notes = [f"was {old.status}" if old else ""]
                notes += [f"replaces {h.host_id}" for h in replaced]
                audit.record(
                    conn,
                    "host_enrolled",
                    now,
                    host_id=req.host_id,
                    source_ip=ip,
                    detail=" ".join(
                        [
                            f"hostname={req.hostname} invite={invite.invite_id}",
                            f"secret={invite.secret_name}",
                            *filter(None, notes),
                        ]
                    ),
                )
        self._wake()
        names = [h.host_id for h in replaced]
        self._inform(enrolled_text(ip, req.hostname, req.host_id, now, names, req.tpm is not None))
        return EnrollAccepted(req.host_id, HOST_APPROVED)

    # --- unlock requests ----------------------------------------------------------------------

    def create_unlock(self, req: UnlockRequest, ip: str) -> UnlockCreated:
        """A boot asks. An approval its owners gave ahead (a planned reboot, create_ahead) is
        used up by it at once, in the same transaction; otherwise the owners are asked."""
        row, ahead, linked = self._ask(
            req.host_id, req.hostname, req.challenge, req.verify, ip,
            KIND_UNLOCK, req.datasets, b64(req.ephemeral_key), self.settings.REQUEST_TTL, req.boot,
        )  # fmt: skip
        a = row.approval
        if req.boot is None:  # a version 1 client takes exactly these fields (and the flag)
            return UnlockCreated(a.request_id, a.pin, int(a.expires_at), approved_ahead=ahead)
        sms_pin = self.settings.APPROVAL_POLICY == "sms-pin"
        kind = protocol.CODE_PIN if sms_pin else protocol.CODE_REQUEST
        where = self._approve_at(linked)
        return UnlockCreated(a.request_id, a.pin, int(a.expires_at), kind, where, ahead)

    def create_ahead(self, req: AheadRequest, ip: str) -> UnlockCreated:
        """`zkv reboot --approve-ahead`: the owners decide now, through the same approval as a
        boot's, on the host's next boot within ``req.within`` s. Nothing that approves goes
        back: the host learns only the request's state."""
        row, _, _ = self._ask(
            req.host_id, req.hostname, req.challenge, req.verify, ip,
            KIND_AHEAD, (), None, req.within,
        )  # fmt: skip
        a = row.approval
        return UnlockCreated(a.request_id, a.pin, int(a.expires_at))

    def _ask(
        self,
        host_id: str,
        hostname: str,
        challenge: str,
        verify: Callable[[bytes], None],
        ip: str,
        kind: str,
        datasets: tuple[str, ...],
        ephemeral_key: str | None,
        ttl: float,
        boot: BootContext | None = None,
    ) -> tuple[RequestRow, bool, bool]:
        """A signed request of an approved, live host becomes an open request and the owners
        are told: (the row, whether an approval given ahead approved it at once, whether the
        owners get links to the page). A boot whose flags the policy refuses is audited and
        refused like any unauthorized call."""
        now = self.clock()
        with self._refusals(ip):
            host, nonce = self._approved_signer(host_id, challenge, verify, now)
            if self.settings.REQUIRE_TPM and not host.key_in_tpm:
                raise _Unauthorized("REQUIRE_TPM and the host has a file key")
            self._refuse_unless_alive(host)
            refused = (
                refusal(boot, refused_boot_flags(self.settings)) if kind == KIND_UNLOCK else ""
            )
            coalesce, opened, text, used = self.settings.NOTIFY_COALESCE > 0, False, "", False
            links: dict[str, str] = {}
            # A batch is one row every joining request updates: its writers go one at a time.
            with self.store.write(locks=None if coalesce else ()) as conn:
                batch = self.store.open_batch(conn, now) if coalesce and not refused else None
                self._limit(conn, now, host_id, notifies=batch is None)
                self._use_nonce(conn, host_id, nonce, now)
                if refused:  # audited with the host's id; the host hears only "unauthorized"
                    detail = f"{refused}; {audit_note(boot)}"
                    audit.record(
                        conn, "boot_refused", now, host_id=host_id, source_ip=ip, detail=detail
                    )
                else:
                    note = audit_note(boot) if kind == KIND_UNLOCK else ""
                    row = self._new_request(
                        conn, kind, host_id, hostname, ip, datasets, ephemeral_key, ttl, note
                    )
                    if boot is not None:
                        boot_store.add(conn, row.approval.request_id, boot)
                    used = kind == KIND_UNLOCK and self._use_ahead(conn, row, now)
                    if coalesce and not used:
                        opened = self.fleet.join(conn, row, batch, now)
                    elif not used:
                        # The owners' links go into the notification only, never the requester.
                        a = row.approval
                        links = self.owners.decision_links(conn, a.request_id, a.expires_at)
                        text = self.request_text(conn, row, links)
            if refused:
                raise _Unauthorized(refused)
        if used:
            self._wake()
        if opened:
            self.fleet.schedule()
        if text:
            self.tell(row, text)
        return row, used, bool(links) or coalesce

    def request_text(self, conn: Tx, row: RequestRow, links: dict[str, str]) -> str:
        """The owners' notification of one request (notify.unlock_text)."""
        a, host = row.approval, self.store.host(conn, row.host_id)
        ttl = int(a.expires_at - a.created_at)
        boot = ""
        if a.kind == KIND_UNLOCK:
            view = BootView(
                boot_store.of(conn, a.request_id), boot_store.last_approved(conn, row.host_id)
            )
            boot = view.message()
        others = sum(
            1
            for other in self.store.open_requests(conn, row.host_id)
            if other.approval.request_id != a.request_id
        )
        return unlock_text(
            row.source_ip, row.hostname, host.hostname if host else row.hostname,
            row.datasets, a.created_at, a.pin, ttl, links,
            self.settings.APPROVAL_POLICY == "sms-pin", boot=boot,
            key_in_tpm=bool(host and host.key_in_tpm), ahead=ttl if a.kind == KIND_AHEAD else 0,
            others=others,
        )  # fmt: skip

    def fail_open(self, rows: list[RequestRow], reason: str) -> None:
        """The requests still open fail (their notification could not be sent)."""
        with self.store.write() as conn:
            for row in rows:
                fresh = self.store.request(conn, row.approval.request_id, lock=True)
                if fresh is not None and self.still_open(fresh):
                    self._update(conn, fresh, approvals.fail(fresh.approval, self.clock(), reason))
        self._wake()

    def _use_ahead(self, conn: Tx, row: RequestRow, now: float) -> bool:
        """Approve this boot with the host's oldest approval given ahead, if one is still in
        its window; that approval is used up (single use: the rows are locked)."""
        for armed in self.store.armed_ahead(conn, row.host_id):
            try:
                used = approvals.release(armed.approval, now)
            except NotAllowed:  # its window ended: expired, audited, never used
                self._update(conn, armed, approvals.observe(armed.approval, now), "unused")
                continue
            self.store.save(conn, used)
            ahead_id = armed.approval.request_id
            audit.record(
                conn, "ahead_used", now, request_id=ahead_id, host_id=row.host_id,
                source_ip=row.source_ip, detail=f"by request {row.approval.request_id}",
            )  # fmt: skip
            approved = approvals.owner_decides(row.approval, True, now, f"ahead {ahead_id}")
            self._update(conn, row, approved, "planned reboot")
            return True
        return False

    def _approve_at(self, linked: bool) -> str:
        """Where the console sends the person at it (never a link: that is the owners')."""
        where = self.settings.APPROVE_AT
        if not where and linked:
            where = "the link sent to the owner"
        elif not where:
            where = urlsplit(self.settings.APPROVAL_URL).hostname or ""
        return where.translate(protocol.CONTROLS)[: protocol.MAX_WHERE]

    def boot_view(self, row: RequestRow) -> BootView:
        """The page's view of a request's boot context."""
        with self.store.read() as conn:
            boot = boot_store.of(conn, row.approval.request_id)
            return BootView(boot, boot_store.last_approved(conn, row.host_id))

    def poll(
        self,
        request_id: str,
        wait: float,
        ip: str,
        once: Callable[[str, str], PollResult | None] | None = None,
    ) -> PollResult:
        """Long-poll ``once`` (default: an unlock request's) until decided or ``wait`` ends."""
        deadline = self.clock() + min(wait, self.settings.MAX_WAIT)
        while True:
            result = (once or self._poll_once)(request_id, ip)
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
            or row.approval.kind not in (KIND_UNLOCK, KIND_AHEAD)
            or (row.approval.released and row.approval.state == STATE_APPROVED)
        ):
            # Unknown, or already released: either way this id opens nothing any more.
            with self._refusals(ip):
                raise _Unauthorized("unknown or consumed request id")
        a = approvals.observe(row.approval, now)
        if a != row.approval:
            self._observe_expiry(request_id)
        if a.state == STATE_APPROVED and a.kind == KIND_UNLOCK:
            return self._release(request_id)
        return PollResult(a.state)  # an approval given ahead stays here: nothing to release

    def _release(self, request_id: str) -> PollResult | None:
        """Release once; None means another poll got there first (the caller re-reads)."""
        now = self.clock()
        with self.store.write(locks=()) as conn:  # the request's row lock
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
            boot = boot_store.of(conn, request_id)
            if boot is not None:  # the page compares the next boots with this one
                boot_store.approved(conn, row.host_id, boot.cmdline_sha256, now)
        try:
            secret = self.source.get(host.secret_name)
            sealed = protocol.seal_release(request_id, unb64(row.ephemeral_key), secret)
            del secret
        except (SecretUnavailable, crypto.DecryptionFailed) as exc:
            with self.store.write(locks=()) as conn:
                self._update(conn, row, approvals.fail(a, self.clock(), f"secret source: {exc}"))
            raise ApiError("secret_unavailable") from None
        return PollResult(STATE_APPROVED, sealed)

    def _observe_expiry(self, request_id: str) -> None:
        with self.store.write(locks=()) as conn:
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
        with self.store.write(locks=()) as conn:
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

    def approve_pending(self, pattern: str, dry_run: bool = False) -> list[RequestRow]:
        """`zkv-gateway approve --pending --host GLOB`: every open request (a boot's, or one
        asked ahead) of an approved host whose enrolled name matches ``pattern`` (fnmatch) is
        approved by the operator on the gateway machine, trusted as an owner; each is audited
        with the factor "cli". Returns them (``dry_run``: only lists them)."""
        now, matched = self.clock(), []
        with self.store.write() as conn:
            names = {
                h.host_id: h.hostname
                for h in self.store.all_hosts(conn)
                if h.status == HOST_APPROVED
            }
            for row in self.store.open_requests(conn):
                a = approvals.observe(row.approval, now)
                name = names.get(row.host_id)
                if a != row.approval:  # expired meanwhile: saved and audited on the way
                    self._update(conn, row, a)
                elif a.kind != KIND_ENROLL and name is not None and fnmatchcase(name, pattern):
                    matched.append(row)
                    if not dry_run:
                        yes = approvals.owner_decides(a, True, now, "operator with cli")
                        self._update(conn, row, yes, "via cli --pending")
        self._wake()
        return matched

    def decide_as_owner(
        self, conn: Tx, request_id: str, owner: Owner, approve: bool, factor: str, note: str = ""
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
        reason = f"{owner.name} with {factor}{note}"  # the vote keeps the factor (16 chars)
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

    def revoke_host(self, host_id: str) -> Host:
        """`hosts revoke`: final; only a new invite admits the host again, with a new secret."""
        now = self.clock()
        with self.store.write() as conn:
            if self.store.host(conn, host_id) is None:
                raise GatewayCliError(f"no host {host_id}")
            self._revoke(conn, host_id, now, "by the owner")
            host = self.store.host(conn, host_id)
        self._wake()
        assert host is not None
        return host

    def _revoke(self, conn: Tx, host_id: str, now: float, why: str) -> None:
        self.store.set_host(conn, host_id, status=HOST_REVOKED, decided_at=now)
        audit.record(conn, "host_revoked", now, host_id=host_id, detail=why)
        for row in self.store.open_requests(conn, host_id):
            a = approvals.observe(row.approval, now)
            if a.is_open:
                a = approvals.deny(a, now, "host revoked")
            self._update(conn, row, a, why)

    def hosts(self) -> tuple[list[Host], list[Invite]]:
        with self.store.read() as conn:
            return self.store.all_hosts(conn), self.store.open_invites(conn)

    # --- housekeeping -------------------------------------------------------------------------

    def housekeep(self) -> None:
        """What the schedule runs (housekeeping.py): refusal counters of closed intervals summed
        up into the audit log, expired invites and stale pending hosts removed (audited), old
        nonces, rate events, MessageSids and refusal counters dropped, approvals given ahead
        whose window ended unused expired (audited); then the dead-man sweep."""
        s, now = self.settings, self.clock()
        with self.store.write() as conn:
            self._report_refusals(conn, now - now % s.REFUSAL_INTERVAL)
            ratelimit.forget(conn, now - HOUR - s.REFUSAL_INTERVAL)
            for invite in self.store.expire_invites(conn, now):
                detail = f"invite={invite.invite_id} hostname={invite.hostname} unused"
                audit.record(conn, "invite_expired", now, detail=detail)
            for host in self.store.expire_pending_hosts(conn, now - s.PENDING_HOST_TTL):
                detail = f"hostname={host.hostname} pending since enrolment, never admitted"
                audit.record(conn, "host_expired", now, host_id=host.host_id, detail=detail)
            self.store.purge(conn, now, 2 * protocol.REPLAY_WINDOW + 60, HOUR)
            for row in self.store.lapsed_ahead(conn, now):  # a window that ended unused
                self._update(conn, row, approvals.observe(row.approval, now), "unused")
        if s.NOTIFY_COALESCE:
            self.fleet.send_due()  # a batch whose process stopped before its timer
        self.sweep_liveness()  # the dead-man switch's schedule: silent hosts suspended, owners told

    def report_refusals(self) -> None:
        """Every refusal counted so far into the audit log (the CLI's audit, before it reads)."""
        with self.store.write() as conn:
            self._report_refusals(conn, math.inf)

    def _report_refusals(self, conn: Tx, closed_before: float) -> None:
        """One audit entry per interval, kind and reason, however many sources: a flood from
        many addresses adds a few entries an interval, naming how many and the busiest."""
        now, interval = self.clock(), self.settings.REFUSAL_INTERVAL
        rows = ratelimit.unreported(conn, closed_before)
        groups: dict[tuple[float, str, str], list[ratelimit.Refused]] = {}
        for r in rows:
            groups.setdefault((r.bucket, r.event, r.detail), []).append(r)
        for (bucket, event, reason), group in groups.items():
            busiest = max(group, key=lambda r: r.unreported)
            since = time.strftime("%H:%M:%S", time.gmtime(bucket))
            total = sum(r.unreported for r in group)
            detail = (
                f"{total} refused in the {interval:g} s from {since} UTC from {len(group)} "
                f"source(s), {busiest.unreported} from the busiest: {reason}"
            )
            audit.record(conn, event, now, source_ip=busiest.source, detail=detail)
        ratelimit.reported(conn, rows)

    # --- dead-man switch and remote wipe (liveness.py) ---------------------------------------

    def heartbeat(self, req: Heartbeat, ip: str) -> HeartbeatAnswer:
        """A running host is alive; a wiped one is told to destroy its repository slot."""
        now = self.clock()
        with self._refusals(ip):
            host, nonce = self._approved_signer(
                req.host_id, req.challenge, req.verify, now, "heartbeat: "
            )
            # Beside other hosts' heartbeats; the other liveness writers run alone.
            with self.store.write(locks=(f"liveness {req.host_id}",)) as conn:
                self._use_nonce(conn, req.host_id, nonce, now)
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
        Runs on the housekeeping schedule (housekeep) and before an unlock is granted; reads
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
            if not due or ratelimit.hit(conn, now, budget) is not None:
                return
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
    def _refusals(self, ip: str) -> Iterator[None]:
        """Turn internal refusals into the uniform API errors, counting them first. Only a
        refused call is held against its source: a call that authenticates (a valid signature
        of an approved host, a live request id, a valid invite) is never refused for what
        others at its address (a NAT, a proxy) did."""
        try:
            yield
        except _Unauthorized as exc:
            self._refused(AUTH_FAILED, ip, str(exc))
            raise ApiError("unauthorized") from None
        except _Limited as exc:
            self._refused("rate_limited", ip, str(exc))
            raise ApiError("rate_limited") from None

    def _refused(self, event: str, ip: str, detail: str) -> None:
        """Count a refusal against its source (an address, an IPv6 /64). A source past
        AUTH_FAILURES_PER_HOUR is locked out: 429, and nothing more is written for it."""
        s, source, now = self.settings, source_of(ip), self.clock()
        with self.store.read() as conn:
            locked = ratelimit.failures(conn, source, now - HOUR) >= s.AUTH_FAILURES_PER_HOUR
        if locked:
            raise ApiError("rate_limited")
        with self.store.write(locks=()) as conn:
            cap = s.MAX_REFUSAL_SOURCES
            ratelimit.refuse(conn, now, s.REFUSAL_INTERVAL, source, event, detail, cap)

    def _approved_signer(
        self,
        host_id: str,
        challenge: str,
        verify: Callable[[bytes], None],
        now: float,
        what: str = "",
    ) -> tuple[Host, str]:
        """The approved host that signed this call, and its challenge's nonce; else refused."""
        with self.store.read() as conn:
            host = self.store.host(conn, host_id)
        if host is None or host.status != HOST_APPROVED:
            raise _Unauthorized(f"{what}host is {host.status if host else 'unknown'}")
        public_key = unb64(host.public_key)
        return host, self._check_signed(challenge, now, lambda: verify(public_key))

    def _check_signed(self, challenge: str, now: float, verify: Callable[[], None]) -> str:
        """The challenge's nonce, once both the challenge and the signature check out."""
        try:
            nonce = challenges.check(self._key(), challenge, now)
        except challenges.BadChallenge as exc:
            raise _Unauthorized(f"challenge: {exc}") from None
        try:
            verify()
        except crypto.BadSignature:
            raise _Unauthorized("bad signature") from None
        return nonce

    def _use_nonce(self, conn: Tx, host_id: str, nonce: str, now: float) -> None:
        if not self.store.use_nonce(conn, host_id, nonce, now):
            raise _Unauthorized("replayed nonce")

    def _limit(self, conn: Tx, now: float, host_id: str | None, notifies: bool = True) -> None:
        """An authenticated host's own budget (requests, and so notifications: one each), then
        the fleet's notification cap, which only authenticated callers can spend. An enrolment
        (host_id None) spends only the cap: its single-use invite is its budget. A request
        that joins a batch already open (fleet.py) adds no message, so spends no cap."""
        s = self.settings
        if host_id is not None:
            own = Limit(f"host:{host_id}", s.RATE_PER_SECOND, 1.0)
            hit = ratelimit.hit(conn, now, own, Limit(own.key, s.RATE_HOST_PER_HOUR, HOUR))
            if hit is not None:
                raise _over(hit)
        # Fleet-wide, so spent at commit (store.py: the commit lock); over it, nothing is written.
        if notifies:
            ratelimit.hit_at_commit(conn, now, Limit("notifications", s.SMS_PER_HOUR, HOUR), _over)

    def _new_request(
        self,
        conn: Tx,
        kind: str,
        host_id: str,
        hostname: str,
        ip: str,
        datasets: tuple[str, ...],
        ephemeral_key: str | None,
        ttl: float,
        note: str = "",
    ) -> RequestRow:
        now, n = self.clock(), self.settings.PIN_LENGTH
        while True:  # a PIN names one open request: drawn again while another open one has it
            pin = f"{secrets.randbelow(10**n):0{n}d}"
            a = approvals.new(secrets.token_hex(16), kind, pin, now, ttl)
            row = RequestRow(a, host_id, hostname, ip, datasets, ephemeral_key)
            if self.store.add_request(conn, row):
                break
        what = f"within={ttl:g}s" if kind == KIND_AHEAD else f"datasets={len(datasets)}"
        audit.record(
            conn,
            f"{kind}_requested",
            now,
            request_id=a.request_id,
            host_id=host_id,
            source_ip=ip,
            detail=" ".join(filter(None, [f"hostname={hostname}", what, note])),
        )
        return row

    def tell(self, row: RequestRow, text: str) -> None:
        try:
            reply = self.notifier.notify(text, row.approval.pin)
        except NotifyFailed as exc:
            with self.store.write(locks=()) as conn:
                fresh = self.store.request(conn, row.approval.request_id, lock=True)
                if fresh is not None:
                    failed = approvals.fail(fresh.approval, self.clock(), f"approver: {exc}")
                    self._update(conn, fresh, failed)
            raise ApiError("approver_unavailable") from None
        if reply is not None:
            with self.store.write() as conn:
                self._owner_reply(conn, reply, self.clock())
            self._wake()

    def _inform(self, text: str) -> None:
        """A notice that asks nothing: a reply an approver gives decides nothing."""
        try:
            self.notifier.notify(text, "")
        except NotifyFailed as exc:
            log.warning("owner notice not sent: %s", exc)

    def _update(self, conn: Tx, row: RequestRow, new: Approval, detail: str = "") -> None:
        """Persist a transition and audit it."""
        old = row.approval
        if new == old:
            return
        self.store.save(conn, new)
        now = self.clock()
        if new.state != old.state:
            event = new.state if new.kind == KIND_UNLOCK else f"{new.kind}_{new.state}"
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

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


def _alive_since_approval(host: Host) -> Liveness:
    """A host that never sent a heartbeat: its window counts from its approval."""
    return liveness.start(host.host_id, host.decided_at or host.enrolled_at)
