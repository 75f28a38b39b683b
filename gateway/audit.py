"""The audit log: one row per decision, written in the same transaction as the decision.

Rows name requests, hosts, addresses and outcomes; never PINs, secrets or key material.

The rows form a hash chain: each row's hash covers its fields and the previous row's hash, so
changing, removing, reordering or inserting a row breaks the chain at that row (`verify`).
record() queues the entry in the caller's write transaction; just before it commits, the
entries are appended under the store's commit lock (the last lock a transaction takes, held
only for the statements at commit), which reads the head, so writers cannot fork the chain. The
chain cannot tell a row rewritten together with every row after it: keep the head hash
elsewhere (docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from zkv.encoding import canonical

from .errors import AuditBroken
from .store import AUDIT_GENESIS, append_at_commit, audit_log

log = logging.getLogger("zkv.gateway.audit")

GENESIS = AUDIT_GENESIS  # the prev_hash of the first entry


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
_FIELDS = tuple(Entry.__dataclass_fields__)


def digest(row: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the entry's fields and the previous entry's hash."""
    content = {k: row[k] for k in _FIELDS}
    return hashlib.sha256(canonical({**content, "prev_hash": prev_hash})).hexdigest()


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
    """Add an entry, appended when the write transaction (Store.write) ``conn`` commits."""
    entry = Entry(at, event, request_id, host_id, source_ip, detail[:500])
    append_at_commit(conn, entry.__dict__, *_digest_halves(entry.__dict__))
    log.info("%s", entry.line())


def _digest_halves(content: Mapping[str, Any]) -> tuple[str, str]:
    """digest()'s input without the previous hash, split where it goes: the store appends at
    commit, when the head is known. A quote inside a value is escaped, so the marker can only
    be the key's."""
    text = canonical({**content, "prev_hash": ""}).decode()
    before, marker, after = text.partition(_PREV_MARKER)
    return before + marker, after


_PREV_MARKER = '"prev_hash":"'


def entries(conn: Connection, limit: int = 100, request_id: str | None = None) -> list[Entry]:
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if request_id:
        query = query.where(audit_log.c.request_id == request_id)
    rows = conn.execute(query).mappings()
    return [Entry(**{k: row[k] for k in _FIELDS}) for row in reversed(list(rows))]


def chain(conn: Connection) -> Iterator[dict[str, Any]]:
    """Every row, oldest first, with id, prev_hash and hash (the export and verify's input)."""
    query = select(audit_log).order_by(audit_log.c.id).execution_options(yield_per=500)
    for row in conn.execute(query).mappings():
        yield dict(row)


def check(rows: Iterable[Mapping[str, Any]], prev: str = GENESIS) -> tuple[int, str]:
    """(entries, head hash) of an intact chain; AuditBroken names the first entry that is not."""
    count, prev_id = 0, None
    for row in rows:
        if row["prev_hash"] != prev:
            after = f"entry {prev_id}" if prev_id is not None else "the start of the log"
            problem = f"does not follow {after} (an entry was removed, reordered or inserted)"
            raise AuditBroken(entry_id=row["id"], detail=problem)
        if digest(row, prev) != row["hash"]:
            raise AuditBroken(entry_id=row["id"], detail="its contents were changed")
        count, prev, prev_id = count + 1, row["hash"], row["id"]
    return count, prev


def seal_unchained(conn: Connection) -> None:
    """Chain rows written before the chain existed (the upgrade in Store.create_schema only:
    the chain vouches for them from the upgrade on, not before)."""
    prev = GENESIS
    for row in list(chain(conn)):
        new = digest(row, prev)
        values = {"prev_hash": prev, "hash": new}
        conn.execute(audit_log.update().where(audit_log.c.id == row["id"]).values(**values))
        prev = new
