"""Owners, their passkeys, and the one-time links that reach them.

`zkv-gateway owners add NAME` makes an owner and prints a one-time enrolment link; the page
behind it registers a passkey (WebAuthn, user verification required). Each unlock request gets
one decision link per owner, in the notification only: the host never sees it. The page behind
a decision link shows the request; approving needs that owner's passkey, denying the link
alone. A link is unguessable (256 bits), single-use, expires with its request, and is stored
only as a hash. Every invalid link (unknown, used, expired, the request decided) gets the same
answer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from zkv.protocol import STATE_PENDING

from . import audit, totp
from . import owner_store as db
from .errors import GatewayCliError
from .owner_store import PURPOSE_BATCH, PURPOSE_DECIDE, PURPOSE_ENROL, Link, Owner
from .service import Gateway
from .store import RequestRow, Tx
from .webauthn_rp import CeremonyFailed, RelyingParty, challenge_of, credential_id_of

ENROL_TTL = 24 * 3600
PATH_ENROL, PATH_DECIDE, PATH_BATCH = "/o/enrol/", "/o/r/", "/o/b/"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class LinkInvalid(Exception):
    """Unknown, used or expired link, or a request no longer open: one answer for all."""


@dataclass(frozen=True)
class DecideView:
    """What the approval page shows about one request."""

    owner: str
    request: RequestRow
    enrolled_as: str
    others: tuple[RequestRow, ...]  # other open requests for the same host
    expires_at: float
    factor: str  # what approving asks for: "passkey", or "totp" for an owner without one
    ayes: int = 0  # owners who approved so far
    quorum: int = 1  # owners who must
    key_in_tpm: bool = False  # the host's key is held by its TPM


@dataclass(frozen=True)
class BatchView:
    """What the page of a batch shows: its open requests, each with its enrolled host name."""

    owner: str
    requests: tuple[tuple[RequestRow, str], ...]
    expires_at: float
    factor: str


class Owners:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.store, self.clock = gateway.store, gateway.clock
        self.base = gateway.settings.APPROVAL_URL.rstrip("/")
        self.rp = RelyingParty(self.base) if self.base else None

    # --- the CLI ------------------------------------------------------------------------------

    def add(self, name: str, with_totp: bool = False) -> tuple[str | None, str | None]:
        """A new owner: (the one-time link that registers their passkey, when APPROVAL_URL is
        set; the TOTP provisioning URI, with ``with_totp``). Shown once, stored nowhere else."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise GatewayCliError("an owner's name is 1-64 of a-z A-Z 0-9 . _ - @")
        if not with_totp:
            self._need_url()
        now = self.clock()
        with self.store.write() as conn:
            if db.owner_named(conn, name) is not None:
                raise GatewayCliError(f"owner {name} exists; `owners link {name}` for a new link")
            secret = totp.new_secret() if with_totp else None
            owner = Owner(secrets.token_hex(16), name, now, secret)
            db.add_owner(conn, owner)
            audit.record(conn, "owner_added", now, detail=f"owner={name} totp={bool(secret)}")
            link = self._enrol_link(conn, owner, now) if self.base else None
        return link, totp.provisioning_uri(secret, name) if secret else None

    def totp_owner(self, conn: Tx, code: str, now: float) -> Owner | None:
        """The owner whose TOTP code this is, now (the step is spent), or None."""
        for owner in db.all_owners(conn):
            if self._spend_totp(conn, owner, code, now):
                return owner
        return None

    def _spend_totp(self, conn: Tx, owner: Owner, code: str, now: float) -> bool:
        if owner.totp_secret is None:
            return False
        step = totp.matching_step(owner.totp_secret, code, now, owner.totp_step)
        if step is not None:
            db.set_owner(conn, owner.owner_id, totp_step=step)
        return step is not None

    def enrol_link(self, name: str) -> str:
        """Another enrolment link (a second passkey, or the first one's link expired)."""
        self._need_url()
        now = self.clock()
        with self.store.write() as conn:
            owner = self._named(conn, name)
            return self._enrol_link(conn, owner, now)

    def remove(self, name: str) -> None:
        now = self.clock()
        with self.store.write() as conn:
            owner = self._named(conn, name)
            db.remove_owner(conn, owner.owner_id)
            audit.record(conn, "owner_removed", now, detail=f"owner={name}")

    def listing(self) -> list[tuple[Owner, int]]:
        with self.store.read() as conn:
            return [(o, len(db.passkeys_of(conn, o.owner_id))) for o in db.all_owners(conn)]

    # --- links for a new request (inside its transaction) ---------------------------------------

    def decision_links(self, conn: Tx, request_id: str, expires_at: float) -> dict[str, str]:
        """owner name -> link, for every owner who has a passkey or TOTP."""
        return self._links(conn, PURPOSE_DECIDE, request_id, expires_at)

    def batch_links(self, conn: Tx, batch_id: str, expires_at: float) -> dict[str, str]:
        """owner name -> the link to the page that decides a whole batch (fleet.py)."""
        return self._links(conn, PURPOSE_BATCH, batch_id, expires_at)

    def _links(self, conn: Tx, purpose: str, about: str, expires_at: float) -> dict[str, str]:
        if not self.base:
            return {}
        now, out = self.clock(), {}
        path = PATH_DECIDE if purpose == PURPOSE_DECIDE else PATH_BATCH
        for owner in db.all_owners(conn):
            if owner.totp_secret or db.passkeys_of(conn, owner.owner_id):
                token = secrets.token_urlsafe(32)
                row = Link(
                    db.token_hash(token), purpose, owner.owner_id, about, None,
                    now, expires_at, None,
                )  # fmt: skip
                db.add_link(conn, row)
                out[owner.name] = f"{self.base}{path}{token}"
        return out

    # --- the enrolment page -------------------------------------------------------------------

    def enrol_view(self, token: str) -> str:
        with self.store.read() as conn:
            _, owner = self._usable(conn, token, PURPOSE_ENROL)
            return owner.name

    def enrol_options(self, token: str) -> str:
        rp = self._rp()
        with self.store.write() as conn:
            _, owner = self._usable(conn, token, PURPOSE_ENROL)
            existing = [k.credential_id for k in db.passkeys_of(conn, owner.owner_id)]
            options = rp.registration_options(bytes.fromhex(owner.owner_id), owner.name, existing)
            db.update_link(conn, token, challenge=challenge_of(options))
        return options

    def enrol_finish(self, token: str, answer: Any) -> str:
        rp, now = self._rp(), self.clock()
        with self.store.write() as conn:
            link, owner = self._usable(conn, token, PURPOSE_ENROL, lock=True)
            db.update_link(conn, token, challenge=None)  # one answer per challenge
            try:
                if link.challenge is None:
                    raise CeremonyFailed("no challenge")
                key = rp.verify_registration(answer, link.challenge)
            except CeremonyFailed as exc:
                audit.record(conn, "passkey_refused", now, detail=f"owner={owner.name} {exc}")
                refused = str(exc)
            else:
                refused = ""
                db.update_link(conn, token, used_at=now)
                db.add_passkey(
                    conn, db.Passkey(key.credential_id, owner.owner_id, key.public_key,
                                     key.sign_count, now)
                )  # fmt: skip
                audit.record(conn, "passkey_added", now, detail=f"owner={owner.name}")
        if refused:
            raise LinkInvalid(refused)
        return owner.name

    # --- the approval page --------------------------------------------------------------------

    def decide_view(self, token: str) -> DecideView:
        with self.store.read() as conn:
            link, owner = self._usable(conn, token, PURPOSE_DECIDE)
            row = self._open_request(conn, link)
            host = self.store.host(conn, row.host_id)
            others = tuple(
                r
                for r in self.store.open_requests(conn, row.host_id)
                if r.approval.request_id != row.approval.request_id
            )
            factor = "passkey" if db.passkeys_of(conn, owner.owner_id) else "totp"
            ayes = db.ayes(conn, row.approval.request_id)
            quorum = db.quorum_of(conn, row.host_id) or self.gateway.settings.APPROVAL_QUORUM
        enrolled_as = host.hostname if host else row.hostname
        return DecideView(
            owner.name,
            row,
            enrolled_as,
            others,
            link.expires_at,
            factor,
            ayes,
            quorum,
            bool(host and host.key_in_tpm),
        )

    def decide_options(self, token: str) -> str:
        """The WebAuthn challenge for a decision link, or a batch link (its purpose says)."""
        rp = self._rp()
        with self.store.write() as conn:
            found = db.link(conn, token) if token else None
            purpose = PURPOSE_BATCH if found and found.purpose == PURPOSE_BATCH else PURPOSE_DECIDE
            link, owner = self._usable(conn, token, purpose)
            if purpose == PURPOSE_BATCH:
                self._open_batch(conn, link)
            else:
                self._open_request(conn, link)
            keys = [k.credential_id for k in db.passkeys_of(conn, owner.owner_id)]
            options = rp.authentication_options(keys)
            db.update_link(conn, token, challenge=challenge_of(options))
        return options

    def decide(self, token: str, approve: bool, answer: Any = None, otp: str | None = None) -> str:
        """Approve (with the owner's passkey assertion; a TOTP code for an owner without a
        passkey) or deny; the link is spent by a decision. A refused answer spends only its
        challenge (or TOTP step), and is audited."""
        now = self.clock()
        with self.store.write() as conn:
            link, owner = self._usable(conn, token, PURPOSE_DECIDE, lock=True)
            row = self._open_request(conn, link)
            factor, refused = self._proof(conn, token, link, owner, approve, answer, otp, now)
            if not refused:
                state = self._vote(conn, row.approval.request_id, owner, approve, factor)
                db.update_link(conn, token, used_at=now)
        if refused:
            raise LinkInvalid(refused)
        self.gateway.wake()
        return state

    # --- the page that decides a batch (many hosts at once; fleet.py) -------------------------

    def batch_view(self, token: str) -> BatchView:
        with self.store.read() as conn:
            link, owner = self._usable(conn, token, PURPOSE_BATCH)
            rows = self._open_batch(conn, link)
            names = {h.host_id: h.hostname for h in self.store.all_hosts(conn)}
            factor = "passkey" if db.passkeys_of(conn, owner.owner_id) else "totp"
        listed = tuple((row, names.get(row.host_id, row.hostname)) for row in rows)
        return BatchView(owner.name, listed, link.expires_at, factor)

    def batch_decide(
        self, token: str, approve: bool, picked: list[str], answer: Any = None,
        otp: str | None = None,
    ) -> dict[str, str]:  # fmt: skip
        """One proof of the owner (as for one request) decides the picked open requests of the
        batch: each is this owner's vote, audited apart, towards its own host's quorum.
        Returns request id -> its state."""
        now = self.clock()
        with self.store.write() as conn:
            link, owner = self._usable(conn, token, PURPOSE_BATCH, lock=True)
            rows = {r.approval.request_id: r for r in self._open_batch(conn, link)}
            chosen = [request_id for request_id in dict.fromkeys(picked) if request_id in rows]
            if not chosen:
                raise LinkInvalid("no open request of the batch picked")
            factor, refused = self._proof(conn, token, link, owner, approve, answer, otp, now)
            states = {}
            if not refused:
                for request_id in chosen:
                    states[request_id] = self._vote(
                        conn, request_id, owner, approve, factor, f" (batch of {len(chosen)})"
                    )
                db.update_link(conn, token, used_at=now)
        if refused:
            raise LinkInvalid(refused)
        self.gateway.wake()
        return states

    def _open_batch(self, conn: Tx, link: Link) -> list[RequestRow]:
        rows = [
            r for r in self.store.batch_requests(conn, link.request_id or "")
            if self.gateway.still_open(r)
        ]  # fmt: skip
        if not rows:
            raise LinkInvalid("no request of the batch is open")
        return rows

    def _proof(
        self, conn: Tx, token: str, link: Link, owner: Owner, approve: bool, answer: Any,
        otp: str | None, now: float,
    ) -> tuple[str, str]:  # fmt: skip
        """(the factor, why it is refused or ""): approving needs the owner's passkey (TOTP
        without one), denying the link alone. The link's challenge is spent either way."""
        db.update_link(conn, token, challenge=None)
        if approve and db.passkeys_of(conn, owner.owner_id):
            return "passkey", self._refused_assertion(conn, link, owner, answer, now)
        if approve and not self._spend_totp(conn, owner, otp or "", now):
            audit.record(conn, "totp_refused", now, request_id=link.request_id,
                         detail=f"owner={owner.name}")  # fmt: skip
            return "totp", "no valid TOTP code"
        return ("totp" if approve else "link"), ""

    def _vote(
        self, conn: Tx, request_id: str, owner: Owner, approve: bool, factor: str, note: str = ""
    ) -> str:
        state = self.gateway.decide_as_owner(
            conn, request_id, owner, approve, f"{factor} via page", note
        )
        if state != STATE_PENDING:  # decided: the other owners' links open nothing
            db.close_links(conn, request_id, self.clock())
        return state

    # --- helpers ------------------------------------------------------------------------------

    def _refused_assertion(
        self, conn: Tx, link: Link, owner: Owner, answer: Any, now: float
    ) -> str:
        """Why the assertion does not prove this owner ("" when it does; then the
        authenticator's sign count is stored)."""
        try:
            if link.challenge is None:
                raise CeremonyFailed("no challenge")
            credential = credential_id_of(answer)
            keys = {k.credential_id: k for k in db.passkeys_of(conn, owner.owner_id)}
            if credential not in keys:
                raise CeremonyFailed("not this owner's passkey")
            key = keys[credential]
            count = self._rp().verify_authentication(
                answer, link.challenge, key.public_key, key.sign_count
            )
        except CeremonyFailed as exc:
            audit.record(
                conn, "passkey_refused", now, request_id=link.request_id,
                detail=f"owner={owner.name} {exc}",
            )  # fmt: skip
            return str(exc) or "refused"
        db.set_sign_count(conn, credential, count)
        return ""

    def _usable(self, conn: Tx, token: str, purpose: str, lock: bool = False) -> tuple[Link, Owner]:
        link = db.link(conn, token, lock=lock) if token else None
        owner = db.owner(conn, link.owner_id) if link else None
        if (
            link is None
            or owner is None
            or link.purpose != purpose
            or not link.usable(self.clock())
        ):
            raise LinkInvalid("unknown, used or expired link")
        return link, owner

    def _open_request(self, conn: Tx, link: Link) -> RequestRow:
        row = self.store.request(conn, link.request_id or "")
        if row is None or not self.gateway.still_open(row):
            raise LinkInvalid("the request is no longer open")
        return row

    def _enrol_link(self, conn: Tx, owner: Owner, now: float) -> str:
        token = secrets.token_urlsafe(32)
        row = Link(db.token_hash(token), PURPOSE_ENROL, owner.owner_id, None, None, now,
                   now + ENROL_TTL, None)  # fmt: skip
        db.add_link(conn, row)
        return f"{self.base}{PATH_ENROL}{token}"

    def _named(self, conn: Tx, name: str) -> Owner:
        owner = db.owner_named(conn, name)
        if owner is None:
            raise GatewayCliError(f"no owner {name}")
        return owner

    def _rp(self) -> RelyingParty:
        if self.rp is None:
            raise LinkInvalid("APPROVAL_URL is not set")
        return self.rp

    def _need_url(self) -> None:
        if not self.base:
            raise GatewayCliError("set APPROVAL_URL (the approval pages' https:// address) first")
