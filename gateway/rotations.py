"""Repository key rotation, the gateway's half (``zkv rotate --repository-key``, docs/rotation.md).

    POST rotations          signed RotationRequest -> a request of kind "repokey": PIN, owner
                            notified ("... asks to rotate its repository key"), approved
                            exactly as an unlock is (policies, TOTP, quorum; approvals.py)
    GET  rotations/<id>     long-poll until the owner decided (never a secret in the answer)
    POST rotations/<id>/key signed RepositoryKeyDelivery, once, while approved: the approval is
                            consumed, the secret source writes the new key (a new Key Vault
                            version), reads it back, and the answer names the key id it holds
    POST repository-key     signed RepositoryKeyQuery: the id of the key held now (reconcile)

The new key reaches the gateway only after the owner approved, so a pending rotation stores
nothing secret, and a denied or expired one leaves the old key in place. A host whose secret
is shared with another host (or is the gateway's default) cannot rotate it: the other host's
keystore would stop opening.
"""

from __future__ import annotations

from zkv import keystore
from zkv.errors import InputError
from zkv.protocol import (
    PollResult,
    RepositoryKeyDelivery,
    RepositoryKeyQuery,
    RepositoryKeyStatus,
    RotationRequest,
    UnlockCreated,
)

from . import approvals, audit, ratelimit
from .approvals import KIND_REPOKEY, NotAllowed
from .errors import ApiError, SecretUnavailable
from .notify import unlock_text
from .ratelimit import HOUR, Limit
from .service import HOST_REVOKED, Gateway, _Limited, _Unauthorized
from .store import Host, Tx

_Signed = RotationRequest | RepositoryKeyDelivery | RepositoryKeyQuery
QUERIES_PER_HOUR = 60  # each one reads the secret source


class Rotations:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def create(self, req: RotationRequest, ip: str) -> UnlockCreated:
        gw, now = self.gw, self.gw.clock()
        with gw._refusals(ip):
            host, nonce = self._signer(req, now, "rotation: ")
            gw._refuse_unless_alive(host)
            with gw.store.write() as conn:
                shared = host.secret_name is None or any(
                    h.host_id != host.host_id and h.status != HOST_REVOKED
                    for h in gw.store.hosts_with_secret(conn, host.secret_name)
                )
                if shared:
                    raise _SecretShared
                gw._limit(conn, now, req.host_id)
                gw._use_nonce(conn, req.host_id, nonce, now)
                row = gw._new_request(
                    conn,
                    KIND_REPOKEY,
                    req.host_id,
                    req.hostname,
                    ip,
                    (),
                    None,
                    gw.settings.REQUEST_TTL,
                )
                links = gw.owners.decision_links(
                    conn, row.approval.request_id, row.approval.expires_at
                )
        a, s = row.approval, gw.settings
        text = unlock_text(
            ip, req.hostname, host.hostname, (), now, a.pin, s.REQUEST_TTL, links,
            s.APPROVAL_POLICY == "sms-pin", asks="asks to rotate its repository key",
            key_in_tpm=host.key_in_tpm,
        )  # fmt: skip
        gw.tell(row, text)
        return UnlockCreated(a.request_id, a.pin, int(a.expires_at))

    def poll(self, request_id: str, wait: float, ip: str) -> PollResult:
        return self.gw.poll(request_id, wait, ip, self._poll_once)

    def _poll_once(self, request_id: str, ip: str) -> PollResult:
        gw = self.gw
        with gw.store.read() as conn:
            row = gw.store.request(conn, request_id)
        if row is None or row.approval.kind != KIND_REPOKEY or row.approval.released:
            with gw._refusals(ip):
                raise _Unauthorized("unknown or consumed rotation id")
        a = approvals.observe(row.approval, gw.clock())
        if a != row.approval:
            gw._observe_expiry(request_id)
        return PollResult(a.state)

    def deliver(self, req: RepositoryKeyDelivery, ip: str) -> RepositoryKeyStatus:
        """Consume the approval, then write the key: a failure after this point leaves the
        host with both slots, and its ``zkv reconcile`` asks which one the gateway holds."""
        gw, now = self.gw, self.gw.clock()
        with gw._refusals(ip):
            host, nonce = self._signer(req, now, "key: ")
            gw._refuse_unless_alive(host)
            with gw.store.write() as conn:
                row = gw.store.request(conn, req.request_id, lock=True)
                if row is None or row.approval.kind != KIND_REPOKEY or row.host_id != host.host_id:
                    raise _Unauthorized("unknown rotation id")
                gw._use_nonce(conn, req.host_id, nonce, now)
                try:
                    a = approvals.release(row.approval, now)
                except NotAllowed:
                    raise _Unauthorized(f"rotation is {row.approval.state}, not approved") from None
                gw.store.save(conn, a)
                self._audit(conn, "repokey_delivered", host, row.approval.request_id, req.key_id)
        try:
            gw.source.set(host.secret_name, keystore.format_repository_key(req.key).encode())
            held = self._held(host)
        except SecretUnavailable as exc:
            with gw.store.write() as conn:
                fresh = gw.store.request(conn, req.request_id, lock=True)
                if fresh is not None:
                    gw._update(conn, fresh, approvals.fail(fresh.approval, gw.clock(), str(exc)))
            raise ApiError("secret_unavailable") from None
        with gw.store.write() as conn:
            event = "repokey_rotated" if held == req.key_id else "repokey_not_stored"
            self._audit(conn, event, host, req.request_id, held)
        if held != req.key_id:
            raise ApiError("secret_unavailable")
        return RepositoryKeyStatus(held)

    def status(self, req: RepositoryKeyQuery, ip: str) -> RepositoryKeyStatus:
        gw, now = self.gw, self.gw.clock()
        with gw._refusals(ip):
            host, nonce = self._signer(req, now, "query: ")
            with gw.store.write() as conn:
                gw._use_nonce(conn, req.host_id, nonce, now)
                budget = Limit(f"repokey-query:{host.host_id}", QUERIES_PER_HOUR, HOUR)
                if ratelimit.hit(conn, now, budget) is not None:
                    raise _Limited(f"repository key queries over {QUERIES_PER_HOUR} per hour")
        try:
            return RepositoryKeyStatus(self._held(host))
        except SecretUnavailable:
            raise ApiError("secret_unavailable") from None

    def _signer(self, req: _Signed, now: float, what: str) -> tuple[Host, str]:
        return self.gw._approved_signer(req.host_id, req.challenge, req.verify, now, what)

    def _held(self, host: Host) -> str:
        secret = self.gw.source.get(host.secret_name)
        try:
            return keystore.repository_key_id(keystore.parse_repository_key(secret))
        except InputError:
            raise SecretUnavailable("the secret is not a repository key") from None

    def _audit(self, conn: Tx, event: str, host: Host, request_id: str, key_id: str) -> None:
        audit.record(
            conn, event, self.gw.clock(), request_id=request_id, host_id=host.host_id,
            detail=f"key_id={key_id} secret={host.secret_name}",
        )  # fmt: skip


class _SecretShared(ApiError):
    def __init__(self) -> None:
        super().__init__("secret_shared")
