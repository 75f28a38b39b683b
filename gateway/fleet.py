"""Coalesced notifications: when many hosts ask at once (a power cut), the owners get one
message listing them, and one page each that decides them all after one passkey check.

With NOTIFY_COALESCE = W > 0 a request's notification waits up to W seconds: the first request
opens a batch due W s later, the requests that come meanwhile join it, and once it is due one
process takes it (marked sent in the same transaction: told once) and tells the owners. A
batch of one is told as any request is; a larger one in one message with one link per owner
(Owners.batch_links). A timer in the process that opened the batch sends it on time; the
housekeeping schedule sends any batch a process left behind (one that stopped meanwhile).
Only requests of authenticated hosts join a batch, so nobody else can cause a message.
"""

from __future__ import annotations

import logging
import secrets
import threading

from .errors import ApiError, NotifyFailed
from .notify import fleet_text
from .service import Gateway
from .store import RequestRow, Tx

log = logging.getLogger("zkv.gateway.fleet")


class Fleet:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway, self.store = gateway, gateway.store
        self.window = gateway.settings.NOTIFY_COALESCE

    def join(self, conn: Tx, row: RequestRow, batch_id: str | None, now: float) -> bool:
        """Put a new request in the open batch (``batch_id``) or a new one; True if it opened
        one (the caller then schedules its sending, after the transaction)."""
        opened = batch_id is None
        if batch_id is None:
            batch_id = secrets.token_hex(16)
            self.store.add_batch(conn, batch_id, now, now + self.window)
        self.store.add_to_batch(conn, batch_id, row.approval.request_id)
        return opened

    def schedule(self) -> None:
        timer = threading.Timer(self.window + 0.05, self._send_logged)
        timer.daemon = True
        timer.start()

    def _send_logged(self) -> None:
        try:
            self.send_due()
        except Exception as exc:  # the housekeeping schedule sends it then
            log.warning("coalesced notification not sent yet: %s", type(exc).__name__)

    def send_due(self) -> None:
        """Tell the owners of every batch that is due: once each, outside the transaction."""
        g, now = self.gateway, self.gateway.clock()
        outgoing: list[tuple[list[RequestRow], str]] = []
        with self.store.write() as conn:
            for batch_id in self.store.take_due_batches(conn, now):
                rows = [r for r in self.store.batch_requests(conn, batch_id) if g.still_open(r)]
                if len(rows) == 1:
                    a = rows[0].approval
                    links = g.owners.decision_links(conn, a.request_id, a.expires_at)
                    outgoing.append((rows, g.request_text(conn, rows[0], links)))
                elif rows:
                    expires = min(r.approval.expires_at for r in rows)
                    links = g.owners.batch_links(conn, batch_id, expires)
                    outgoing.append((rows, self._text(conn, rows, links, now)))
        for rows, text in outgoing:
            if len(rows) == 1:
                try:
                    g.tell(rows[0], text)
                except ApiError:  # the request failed (audited); its host sees "failed"
                    pass
                continue
            try:
                g.notifier.notify(text, "")  # a batch names no single PIN to reply with
            except NotifyFailed as exc:
                g.fail_open(rows, f"approver: {exc}")

    def _text(self, conn: Tx, rows: list[RequestRow], links: dict[str, str], now: float) -> str:
        names = {h.host_id: h.hostname for h in self.store.all_hosts(conn)}
        listed = [(r.source_ip, names.get(r.host_id, r.hostname), r.approval.pin) for r in rows]
        ttl = int(min(r.approval.expires_at for r in rows) - now)
        return fleet_text(listed, now, links, ttl)
