"""Persistence of each unlock request's boot context and each host's last approved command
line (SQL here only; the tables share store.py's metadata, so `Store.create_schema` creates
them, and a database from before them gains them at the next start).

A request from a client that does not report its boot (protocol version 1) has no row: the
page says "not reported".
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, Float, String, Table, select

from zkv.protocol import BootContext

from .store import metadata

boot_contexts = Table(
    "boot_contexts",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("flags", String(255), nullable=False),  # protocol.BOOT_FLAGS names, comma-joined
    Column("cmdline_sha256", String(64), nullable=False),
)

host_boots = Table(  # the command line of each host's last approved and released boot
    "host_boots",
    metadata,
    Column("host_id", String(32), primary_key=True),
    Column("cmdline_sha256", String(64), nullable=False),
    Column("at", Float, nullable=False),
)


def add(conn: Connection, request_id: str, boot: BootContext) -> None:
    values = {"flags": ",".join(boot.flags), "cmdline_sha256": boot.cmdline_sha256}
    conn.execute(boot_contexts.insert().values(request_id=request_id, **values))


def of(conn: Connection, request_id: str) -> BootContext | None:
    query = select(boot_contexts).where(boot_contexts.c.request_id == request_id)
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return BootContext(tuple(filter(None, row["flags"].split(","))), row["cmdline_sha256"])


def last_approved(conn: Connection, host_id: str) -> str | None:
    query = select(host_boots.c.cmdline_sha256).where(host_boots.c.host_id == host_id)
    return conn.execute(query).scalar()


def approved(conn: Connection, host_id: str, digest: str, at: float) -> None:
    done = conn.execute(
        host_boots.update()
        .where(host_boots.c.host_id == host_id)
        .values(cmdline_sha256=digest, at=at)
    )
    if done.rowcount == 0:
        conn.execute(host_boots.insert().values(host_id=host_id, cmdline_sha256=digest, at=at))
