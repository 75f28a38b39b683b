"""The audit log: one row per decision, written in the same transaction as the decision.

Rows name requests, hosts, addresses and outcomes; never PINs, secrets or key material.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Connection, select

from .store import audit_log

log = logging.getLogger("zkv.gateway.audit")


@dataclass(frozen=True)
class Entry:
    at: float
    event: str
    request_id: str | None
    host_id: str | None
    source_ip: str | None
    detail: str

    def line(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        parts = [when, self.event]
        parts += [f"{k}={v}" for k, v in self.__dict__.items() if k in _KEYS and v]
        return " ".join(parts + ([self.detail] if self.detail else []))


_KEYS = ("request_id", "host_id", "source_ip")


def record(
    conn: Connection,
    event: str,
    at: float,
    *,
    request_id: str | None = None,
    host_id: str | None = None,
    source_ip: str | None = None,
    detail: str = "",
) -> None:
    entry = Entry(at, event, request_id, host_id, source_ip, detail[:500])
    conn.execute(audit_log.insert().values(**entry.__dict__))
    log.info("%s", entry.line())


def entries(conn: Connection, limit: int = 100, request_id: str | None = None) -> list[Entry]:
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if request_id:
        query = query.where(audit_log.c.request_id == request_id)
    rows = conn.execute(query).mappings()
    return [
        Entry(**{k: row[k] for k in Entry.__dataclass_fields__}) for row in reversed(list(rows))
    ]
