"""Rate limits and the refusal counters, in the database so they hold across workers and
instances.

Limits are checked before anything is written, and count-then-insert is exact: hit() first
locks its keys (store.lock; sqlite's writer is alone anyway), so two instances cannot both see
room for the last event. A refused call leaves no row.

Refused calls are not one row each: they are counted per source, reason and interval in
``refusals`` (a flood from one source costs one row per reason and interval, and the lockout
reads the same counters). Housekeeping sums them up into the audit log (``unreported``) and
drops them once they are older than the lockout window. Past ``max_sources`` sources in one
interval, further sources share the row of OTHER, so a flood from many addresses is bounded
too (those sources are counted, not locked out individually). A counter is bumped in one
statement (INSERT ... ON CONFLICT); only a source new in its interval takes the interval's lock,
to count the sources exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from .store import insert, lock, rate_events, refusals, spend_at_commit

HOUR = 3600.0
OTHER = "*"  # the shared source row past max_sources
AUTH_FAILED = "auth_failed"


@dataclass(frozen=True)
class Limit:
    key: str
    limit: int
    window: float


@dataclass(frozen=True)
class Refused:
    """One counter row: ``count`` refusals of one kind from one source in one interval."""

    source: str
    bucket: float
    event: str
    detail: str
    count: int
    unreported: int


def hit(conn: Connection, at: float, *limits: Limit) -> Limit | None:
    """The first limit one more event would exceed (nothing recorded), or None after recording
    the event under every key."""
    lock(conn, *(f"rate {lim.key}" for lim in limits))
    for lim in limits:
        if count(conn, lim.key, at - lim.window) >= lim.limit:
            return lim
    for key in {lim.key for lim in limits}:
        conn.execute(rate_events.insert().values(key=key, at=at))
    return None


def hit_at_commit(
    conn: Connection, at: float, limit: Limit, refused: Callable[[Limit], Exception]
) -> None:
    """hit() for a limit everyone's calls share (the fleet's notifications), done just before
    the write transaction commits, under the store's commit lock, so that no key lock is held
    for the rest of the transaction; over the limit, ``refused(limit)`` is raised then and the
    transaction rolls back."""
    spend_at_commit(conn, limit.key, at, limit.window, limit.limit, lambda: refused(limit))


def count(conn: Connection, key: str, since: float) -> int:
    query = select(func.count()).where(rate_events.c.key == key, rate_events.c.at > since)
    return int(conn.execute(query).scalar_one())


def failures(conn: Connection, source: str, since: float) -> int:
    """Authentication failures counted for ``source`` in intervals starting after ``since``."""
    query = select(func.coalesce(func.sum(refusals.c.count), 0)).where(
        refusals.c.source == source, refusals.c.event == AUTH_FAILED, refusals.c.bucket > since
    )
    return int(conn.execute(query).scalar_one())


def refuse(
    conn: Connection, at: float, interval: float, source: str, event: str, detail: str, cap: int
) -> None:
    """Count one refused call (conn: a write transaction)."""
    bucket = at - at % interval
    in_bucket = refusals.c.bucket == bucket
    if source != OTHER and not _counted(conn, in_bucket, source):
        lock(conn, f"refusal sources {bucket}")
        if not _counted(conn, in_bucket, source):
            sources = select(func.count(func.distinct(refusals.c.source))).where(in_bucket)
            if int(conn.execute(sources).scalar_one()) >= cap:
                source = OTHER
    row = {"source": source, "bucket": bucket, "event": event, "detail": detail}
    bump = {"count": refusals.c.count + 1, "unreported": refusals.c.unreported + 1}
    new = insert(conn, refusals).values(**row, count=1, unreported=1)
    conn.execute(new.on_conflict_do_update(index_elements=list(row), set_=bump))


def _counted(conn: Connection, in_bucket: Any, source: str) -> bool:
    seen = select(refusals.c.source).where(in_bucket, refusals.c.source == source).limit(1)
    return conn.execute(seen).first() is not None


def unreported(conn: Connection, closed_before: float) -> list[Refused]:
    """Counters with refusals not yet in the audit log, of intervals starting before the given
    time; the caller audits them and then calls reported()."""
    query = (
        select(refusals)
        .where(refusals.c.unreported > 0, refusals.c.bucket < closed_before)
        .order_by(refusals.c.bucket, refusals.c.source, refusals.c.event, refusals.c.detail)
    )
    return [Refused(**row) for row in conn.execute(query).mappings()]


def reported(conn: Connection, rows: list[Refused]) -> None:
    for r in rows:
        conn.execute(
            refusals.update()
            .where(
                refusals.c.bucket == r.bucket,
                refusals.c.source == r.source,
                refusals.c.event == r.event,
                refusals.c.detail == r.detail,
            )
            .values(unreported=refusals.c.unreported - r.unreported)
        )


def forget(conn: Connection, before: float) -> None:
    """Drop reported counters of intervals that started before ``before`` (past the lockout)."""
    conn.execute(refusals.delete().where(refusals.c.bucket < before, refusals.c.unreported == 0))
