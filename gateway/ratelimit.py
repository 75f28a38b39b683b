"""Sliding-window rate limits counted in the database, so they hold across workers and instances.

Insert first, then count: two racing callers both see both events and may both be refused,
which errs on the safe side; the caller rolls back a refused attempt so it does not count.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from .store import rate_events

HOUR = 3600.0


@dataclass(frozen=True)
class Limit:
    key: str
    limit: int
    window: float


def hit(conn: Connection, at: float, *limits: Limit) -> Limit | None:
    """Record one event under every key; return the first limit exceeded, if any."""
    for key in {lim.key for lim in limits}:
        conn.execute(rate_events.insert().values(key=key, at=at))
    for lim in limits:
        if count(conn, lim.key, at - lim.window) > lim.limit:
            return lim
    return None


def count(conn: Connection, key: str, since: float) -> int:
    query = select(func.count()).where(rate_events.c.key == key, rate_events.c.at > since)
    return int(conn.execute(query).scalar_one())


def exceeded(conn: Connection, at: float, lim: Limit) -> bool:
    """Check without recording (lockouts: a locked-out caller does not extend its own lockout)."""
    return count(conn, lim.key, at - lim.window) >= lim.limit


def record(conn: Connection, at: float, key: str) -> None:
    conn.execute(rate_events.insert().values(key=key, at=at))
