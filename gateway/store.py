"""Persistence with SQLAlchemy Core: sqlite by default (WAL, busy timeout) or PostgreSQL
(postgresql+psycopg://...); both are tested. The schema is created at start. SQL lives here and
in audit.py and ratelimit.py only (tests/gateway/test_sql_ownership.py checks).

Write transactions on sqlite are one at a time: they start with BEGIN IMMEDIATE (taking the
write lock up front means two workers never both read-then-upgrade and deadlock; the busy
timeout makes them queue), and threads of one process queue on a Python lock first (sqlite's
busy handler sleeps in growing steps, which under load costs far more than a lock handed over
at once).

On PostgreSQL (READ COMMITTED) one writer at a time does not scale past one process: a
transaction holding a global lock across its round trips makes every other writer of every
instance wait (docs/gateway.md, Benchmark). So write() takes one of two forms there:

- ``write()``: the single-writer rule, an exclusive transaction-scoped advisory lock. For
  everything rare (the CLI, the owners' pages, SMS replies, housekeeping) that checks then
  writes across tables.
- ``write(locks=(...))``: the hot paths (create, release, decide, refusals, heartbeats). The
  same advisory lock, shared, so they never overlap an exclusive writer; then only the named
  locks, and whatever the statements take: row locks (``lock=True`` reads), unique keys with
  ``ON CONFLICT`` (nonces, refusal counters, the PINs of open requests), and ratelimit.hit's
  locks on its keys.

What every transaction must do alone, whoever it is for (append to the audit chain, spend the
fleet's notification budget), is queued (spend_at_commit, append_at_commit) and done just
before the commit under one lock, the commit lock, in one round trip on PostgreSQL (a function,
zkv_commit_tail), so that lock is held for that call and the COMMIT only: under load
every round trip a lock is held costs the waiters far more than the work (a thread must win
its process's GIL back after each one). Locks are taken in one order, so no two transactions
wait for each other: the global lock, write()'s names (sorted), rate-limit keys (sorted, one
hit per transaction), the commit lock. Reads never wait. /healthz has a connection pool of its
own, so it never waits for a connection behind writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from zkv import protocol
from zkv.encoding import unb64
from zkv.protocol import STATE_APPROVED, STATE_PENDING

from .approvals import Approval
from .liveness import Liveness

# Callers outside the data-access modules name these instead of importing sqlalchemy.
Tx: TypeAlias = Connection  # one open transaction, passed through to group several calls
StoreError: TypeAlias = SQLAlchemyError  # any failure of the database or its driver

metadata = MetaData()
PG_WRITE_LOCK = 0x7A6B76  # advisory lock key ("zkv"); see the module docstring
PG_NAMED_LOCKS = 0x7A6B  # the first key of the named locks (two-int form: a space of its own)
COMMIT_LOCK = "commit"
_TAIL = "zkv_commit_tail"  # Connection.info: what the transaction does at commit (_Tail)
AUDIT_GENESIS = "0" * 64  # the prev_hash of the first audit entry
REASON_LEN, SID_LEN = 200, 64  # Postgres enforces String lengths, sqlite does not

hosts = Table(
    "hosts",
    metadata,
    Column("host_id", String(32), primary_key=True),
    Column("hostname", String(253), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | revoked
    Column("secret_name", String(127)),
    Column("source_ip", String(64), nullable=False),
    Column("enrolled_at", Float, nullable=False),
    Column("decided_at", Float),
)

requests = Table(
    "requests",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("kind", String(8), nullable=False),  # unlock | enroll | ahead
    Column("host_id", String(32), nullable=False, index=True),
    Column("hostname", String(253), nullable=False),
    Column("source_ip", String(64), nullable=False),
    Column("datasets", Text, nullable=False),
    Column("ephemeral_key", String(64)),  # the boot's X25519 public key; dropped once released
    Column("pin", String(12), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("wrong_pins", Integer, nullable=False),
    Column("released", Boolean, nullable=False),
    Column("reason", String(REASON_LEN), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("decided_at", Float),
    # A PIN names one open request (an SMS reply quotes it), so open requests' PINs differ.
    Index(
        "ux_requests_open_pin",
        "pin",
        unique=True,
        sqlite_where=text(f"state = '{STATE_PENDING}'"),
        postgresql_where=text(f"state = '{STATE_PENDING}'"),
    ),
)

nonces = Table(
    "nonces",
    metadata,
    Column("host_id", String(32), primary_key=True),
    Column("nonce", String(32), primary_key=True),
    Column("at", Float, nullable=False, index=True),
)

gateway_keys = Table(  # the gateway's own keys, made once per database (a new table)
    "gateway_keys",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", String(64), nullable=False),  # hex
)

messages = Table(  # inbound SMS already handled, by Twilio MessageSid
    "messages",
    metadata,
    Column("sid", String(SID_LEN), primary_key=True),
    Column("at", Float, nullable=False, index=True),
)

rate_events = Table(
    "rate_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(100), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_rate_events_key_at", "key", "at"),
)

liveness = Table(  # the dead-man switch (liveness.py); a table of its own, so old databases work
    "liveness",
    metadata,
    Column("host_id", String(32), primary_key=True),
    Column("since", Float, nullable=False),
    Column("window", Float),
    Column("state", String(16), nullable=False),  # active | suspended | wiped
    Column("changed_at", Float),
    Column("notice_due", Boolean, nullable=False),
)

invites = Table(  # one-time enrolment tokens (hosts invite); the token itself is never stored
    "invites",
    metadata,
    Column("invite_id", String(16), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("hostname", String(253), nullable=False),
    Column("secret_name", String(127), nullable=False),
    Column("may_replace", Boolean, nullable=False),  # may succeed an approved host of that name
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

refusals = Table(  # refused calls counted per source, reason and interval (ratelimit.py)
    "refusals",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("bucket", Float, primary_key=True),
    Column("event", String(40), primary_key=True),
    Column("detail", String(REASON_LEN), primary_key=True),
    Column("count", Integer, nullable=False),  # for the lockout
    Column("unreported", Integer, nullable=False),  # not yet summed up in the audit log
)

batches = Table(  # requests told to the owners in one notification (NOTIFY_COALESCE)
    "notice_batches",
    metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("opened_at", Float, nullable=False),
    Column("due_at", Float, nullable=False, index=True),  # when the notification goes out
    Column("sent_at", Float),
)

batch_members = Table(
    "notice_batch_requests",
    metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("request_id", String(32), primary_key=True),
)

audit_log = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("event", String(40), nullable=False),
    Column("request_id", String(32), index=True),
    Column("host_id", String(32)),
    Column("source_ip", String(64)),
    Column("detail", String(500), nullable=False),
    Column("prev_hash", String(64)),  # the hash chain (audit.py); NULL only before an upgrade
    Column("hash", String(64)),
)


_CHALLENGE_KEY = select(gateway_keys.c.value).where(gateway_keys.c.name == "challenge")


@dataclass(frozen=True)
class Host:
    host_id: str
    hostname: str
    public_key: str
    status: str
    secret_name: str | None
    source_ip: str
    enrolled_at: float
    decided_at: float | None

    @property
    def key_in_tpm(self) -> bool:
        """Its key was admitted with a TPM's evidence: a copied disk cannot sign as it."""
        try:
            return protocol.key_in_tpm(unb64(self.public_key))
        except ValueError:  # a damaged row: not vouched for
            return False


@dataclass(frozen=True)
class Invite:
    invite_id: str
    token_hash: str
    hostname: str
    secret_name: str
    may_replace: bool
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class RequestRow:
    """An approval plus the facts about who asked; only the approval part changes."""

    approval: Approval
    host_id: str
    hostname: str
    source_ip: str
    datasets: tuple[str, ...]
    ephemeral_key: str | None


class Store:
    def __init__(self, url: str) -> None:
        backend = make_url(url).get_backend_name()
        self.is_sqlite, self.is_postgres = backend == "sqlite", backend == "postgresql"
        # PostgreSQL: room for every thread of a worker (server.py) without waiting on the pool.
        pool = {"pool_size": 8, "max_overflow": 32} if self.is_postgres else {}
        self.engine: Engine = create_engine(url, pool_pre_ping=not self.is_sqlite, **pool)
        self._health = create_engine(
            url, pool_pre_ping=not self.is_sqlite, pool_size=1, max_overflow=2, pool_timeout=5
        )
        self._write_lock = threading.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            _tune_sqlite(self.engine)
            _tune_sqlite(self._health)

    def create_schema(self) -> None:
        from . import boot_store, owner_store  # noqa: F401  # their tables join `metadata`

        with self.write() as conn:  # under the writer lock: instances starting at once may race
            metadata.create_all(conn)
            for index in requests.indexes:  # create_all adds tables, not indexes to old ones
                index.create(conn, checkfirst=True)
            if self.is_postgres:
                conn.execute(text(_TAIL_FUNCTION))
            _add_audit_chain(conn)
            if conn.execute(_CHALLENGE_KEY).first() is None:  # the first process on this database
                key = os.urandom(32).hex()
                conn.execute(gateway_keys.insert().values(name="challenge", value=key))

    def dispose(self) -> None:
        self.engine.dispose()
        self._health.dispose()

    def ping(self) -> None:
        """Raise unless the database answers a trivial query (the health check), on a pool of
        its own: a busy pool of writers must not look like a database that is down."""
        with self._health.connect() as conn:
            conn.execute(text("SELECT 1"))

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, locks: tuple[str, ...] | None = None) -> Iterator[Connection]:
        """A write transaction: alone (``locks`` None), or on PostgreSQL beside others that
        hold none of the named ``locks`` (see the module docstring). sqlite: alone either way."""
        if self._write_lock is None:
            with self.engine.connect() as conn, conn.begin():
                if self.is_postgres and locks is None:
                    conn.execute(select(func.pg_advisory_xact_lock(PG_WRITE_LOCK)))
                elif self.is_postgres and locks is not None:
                    conn.execute(select(func.pg_advisory_xact_lock_shared(PG_WRITE_LOCK)))
                    lock(conn, *locks)
                with _deferring(conn):
                    yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(zkv_write=True)
            with conn.begin(), _deferring(conn):
                yield conn

    # --- hosts --------------------------------------------------------------------------------

    def host(self, conn: Connection, host_id: str) -> Host | None:
        row = conn.execute(select(hosts).where(hosts.c.host_id == host_id)).mappings().first()
        return Host(**row) if row else None

    def all_hosts(self, conn: Connection) -> list[Host]:
        rows = conn.execute(select(hosts).order_by(hosts.c.enrolled_at)).mappings()
        return [Host(**row) for row in rows]

    def add_host(self, conn: Connection, host: Host) -> None:
        conn.execute(hosts.insert().values(**host.__dict__))

    def set_host(self, conn: Connection, host_id: str, **values: Any) -> None:
        conn.execute(hosts.update().where(hosts.c.host_id == host_id).values(**values))

    def hosts_named(self, conn: Connection, hostname: str) -> list[Host]:
        rows = conn.execute(select(hosts).where(hosts.c.hostname == hostname)).mappings()
        return [Host(**row) for row in rows]

    def hosts_with_secret(self, conn: Connection, secret_name: str) -> list[Host]:
        rows = conn.execute(select(hosts).where(hosts.c.secret_name == secret_name)).mappings()
        return [Host(**row) for row in rows]

    def expire_pending_hosts(self, conn: Connection, before: float) -> list[Host]:
        """Delete hosts left pending (enrolled before invites existed) since ``before``."""
        query = select(hosts).where(hosts.c.status == "pending", hosts.c.enrolled_at < before)
        stale = [Host(**row) for row in conn.execute(query).mappings()]
        for host in stale:
            conn.execute(hosts.delete().where(hosts.c.host_id == host.host_id))
        return stale

    # --- invites ------------------------------------------------------------------------------

    def add_invite(self, conn: Connection, invite: Invite) -> None:
        conn.execute(invites.insert().values(**invite.__dict__))

    def invite_by_hash(self, conn: Connection, token_hash: str) -> Invite | None:
        query = select(invites).where(invites.c.token_hash == token_hash)
        row = conn.execute(query).mappings().first()
        return Invite(**row) if row else None

    def use_invite(self, conn: Connection, invite_id: str) -> None:
        conn.execute(invites.delete().where(invites.c.invite_id == invite_id))

    def expire_invites(self, conn: Connection, now: float) -> list[Invite]:
        query = select(invites).where(invites.c.expires_at <= now)
        expired = [Invite(**row) for row in conn.execute(query).mappings()]
        conn.execute(invites.delete().where(invites.c.expires_at <= now))
        return expired

    def open_invites(self, conn: Connection) -> list[Invite]:
        rows = conn.execute(select(invites).order_by(invites.c.created_at)).mappings()
        return [Invite(**row) for row in rows]

    # --- liveness (dead-man switch, wipe) -----------------------------------------------------

    def liveness(self, conn: Connection, host_id: str) -> Liveness | None:
        query = select(liveness).where(liveness.c.host_id == host_id)
        row = conn.execute(query).mappings().first()
        return Liveness(**row) if row else None

    def all_liveness(self, conn: Connection) -> dict[str, Liveness]:
        return {
            row["host_id"]: Liveness(**row) for row in conn.execute(select(liveness)).mappings()
        }

    def liveness_notices(self, conn: Connection, lock: bool = True) -> list[Liveness]:
        query = select(liveness).where(liveness.c.notice_due.is_(True))
        rows = conn.execute(query.with_for_update() if lock else query).mappings()
        return [Liveness(**row) for row in rows]

    def save_liveness(self, conn: Connection, x: Liveness) -> None:
        values = dict(x.__dict__)
        new = insert(conn, liveness).values(**values)
        conn.execute(new.on_conflict_do_update(index_elements=["host_id"], set_=values))

    # --- requests -----------------------------------------------------------------------------

    def add_request(self, conn: Connection, row: RequestRow) -> bool:
        """False (nothing written) if an open request has this PIN: the caller draws again.
        Of two transactions adding one PIN, the second waits for the first's commit."""
        new = insert(conn, requests).values(**_request_values(row))
        added = new.on_conflict_do_nothing().returning(requests.c.request_id)
        return conn.execute(added).first() is not None

    def request(self, conn: Connection, request_id: str, lock: bool = False) -> RequestRow | None:
        query = select(requests).where(requests.c.request_id == request_id)
        row = conn.execute(query.with_for_update() if lock else query).mappings().first()
        return _request_row(row) if row else None

    def open_requests(self, conn: Connection, host_id: str | None = None) -> list[RequestRow]:
        query = select(requests).where(requests.c.state == STATE_PENDING)
        if host_id is not None:
            query = query.where(requests.c.host_id == host_id)
        rows = conn.execute(query.order_by(requests.c.created_at).with_for_update()).mappings()
        return [_request_row(row) for row in rows]

    def armed_ahead(self, conn: Connection, host_id: str) -> list[RequestRow]:
        """The host's approvals given ahead of a reboot and not used yet (locked: one boot
        uses one, once)."""
        query = select(requests).where(
            requests.c.host_id == host_id,
            requests.c.kind == "ahead",
            requests.c.state == STATE_APPROVED,
            requests.c.released.is_(False),
        )
        rows = conn.execute(query.order_by(requests.c.created_at).with_for_update()).mappings()
        return [_request_row(row) for row in rows]

    def lapsed_ahead(self, conn: Connection, now: float) -> list[RequestRow]:
        """Approvals asked ahead whose window ended unused (to expire and audit)."""
        query = select(requests).where(
            requests.c.kind == "ahead",
            requests.c.state.in_((STATE_PENDING, STATE_APPROVED)),
            requests.c.released.is_(False),
            requests.c.expires_at <= now,
        )
        return [_request_row(row) for row in conn.execute(query.with_for_update()).mappings()]

    def save(self, conn: Connection, a: Approval, **extra: Any) -> None:
        values = {k: v for k, v in a.__dict__.items() if k not in ("request_id", "kind", "pin")}
        values["reason"] = a.reason[:REASON_LEN]
        conn.execute(
            requests.update().where(requests.c.request_id == a.request_id).values(**values, **extra)
        )

    def recent_requests(self, conn: Connection, limit: int) -> list[RequestRow]:
        query = select(requests).order_by(requests.c.created_at.desc()).limit(limit)
        return [_request_row(row) for row in conn.execute(query).mappings()]

    # --- coalesced notifications -------------------------------------------------------------

    def open_batch(self, conn: Connection, now: float) -> str | None:
        """The batch still gathering requests (not sent, not due), if any."""
        query = select(batches.c.batch_id).where(
            batches.c.sent_at.is_(None), batches.c.due_at > now
        )
        return conn.execute(query.order_by(batches.c.opened_at)).scalars().first()

    def add_batch(self, conn: Connection, batch_id: str, now: float, due_at: float) -> None:
        conn.execute(batches.insert().values(batch_id=batch_id, opened_at=now, due_at=due_at))

    def add_to_batch(self, conn: Connection, batch_id: str, request_id: str) -> None:
        conn.execute(batch_members.insert().values(batch_id=batch_id, request_id=request_id))

    def take_due_batches(self, conn: Connection, now: float) -> list[str]:
        """The batches due and not sent, marked sent (the caller sends them: once)."""
        query = select(batches.c.batch_id).where(
            batches.c.sent_at.is_(None), batches.c.due_at <= now
        )
        due = list(conn.execute(query.with_for_update()).scalars())
        if due:
            conn.execute(batches.update().where(batches.c.batch_id.in_(due)).values(sent_at=now))
        return due

    def batch_requests(self, conn: Connection, batch_id: str) -> list[RequestRow]:
        ids = select(batch_members.c.request_id).where(batch_members.c.batch_id == batch_id)
        query = select(requests).where(requests.c.request_id.in_(ids))
        rows = conn.execute(query.order_by(requests.c.created_at)).mappings()
        return [_request_row(row) for row in rows]

    # --- replay protection --------------------------------------------------------------------

    def challenge_key(self) -> bytes:
        """The key challenges are signed with (challenges.py): made with the schema, so every
        worker and instance on this database shares it."""
        with self.read() as conn:
            return bytes.fromhex(conn.execute(_CHALLENGE_KEY).scalar_one())

    def use_nonce(self, conn: Connection, host_id: str, nonce: str, now: float) -> bool:
        """False if this host already used the nonce (inside the replay window). One statement:
        of two transactions inserting the same nonce, the second waits for the first and then
        inserts nothing."""
        new = insert(conn, nonces).values(host_id=host_id, nonce=nonce, at=now)
        added = new.on_conflict_do_nothing().returning(nonces.c.at)  # psycopg: no rowcount
        return conn.execute(added).first() is not None

    def first_sight_of_message(self, conn: Connection, sid: str, now: float) -> bool:
        sid = sid[:SID_LEN]  # Twilio's are 34 characters
        if conn.execute(select(messages.c.at).where(messages.c.sid == sid)).first() is not None:
            return False
        conn.execute(messages.insert().values(sid=sid, at=now))
        return True

    def row_counts(self, conn: Connection) -> dict[str, int]:
        """Rows per table (what a flood may grow; tests/gateway/test_db_hygiene.py)."""
        return {
            name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in metadata.tables.items()
        }

    def purge(self, conn: Connection, now: float, nonce_age: float, event_age: float) -> None:
        """Drop replay, rate and de-duplication records too old to matter (housekeeping)."""
        conn.execute(nonces.delete().where(nonces.c.at < now - nonce_age))
        conn.execute(rate_events.delete().where(rate_events.c.at < now - event_age))
        conn.execute(messages.delete().where(messages.c.at < now - 30 * 86400))
        old = select(batches.c.batch_id).where(batches.c.opened_at < now - 2 * 86400)
        conn.execute(batch_members.delete().where(batch_members.c.batch_id.in_(old)))
        conn.execute(batches.delete().where(batches.c.opened_at < now - 2 * 86400))


def lock(conn: Connection, *names: str) -> None:
    """Named locks until the transaction ends (PostgreSQL; sqlite's writer is alone anyway),
    taken in sorted order. A collision of two names' hashes only makes them wait for each other."""
    if conn.dialect.name != "postgresql":
        return
    for name in sorted(set(names)):
        conn.execute(select(func.pg_advisory_xact_lock(PG_NAMED_LOCKS, func.hashtext(name))))


def insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@dataclass
class _Tail:
    """What a write transaction does alone, just before it commits (see the module docstring)."""

    spends: list[tuple[str, float, float, int, Callable[[], Exception]]] = field(
        default_factory=list
    )  # key, at, window, limit, the exception to raise over it
    entries: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)


def spend_at_commit(
    conn: Connection,
    key: str,
    at: float,
    window: float,
    limit: int,
    refused: Callable[[], Exception],
) -> None:
    """One more event under ``key`` (at most ``limit`` in ``window`` seconds), counted and added
    at commit; over the limit ``refused()`` is raised then, and the transaction rolls back."""
    _tail(conn).spends.append((key, at, window, limit, refused))


def append_at_commit(conn: Connection, row: dict[str, Any], before: str, after: str) -> None:
    """An audit entry appended at commit: ``hash`` is SHA-256 of ``before``, the previous
    entry's hash and ``after`` (audit.py's digest, split where the previous hash goes)."""
    _tail(conn).entries.append((row, before, after))


def _tail(conn: Connection) -> _Tail:
    tail: _Tail | None = conn.info.get(_TAIL)
    if tail is None:
        raise RuntimeError("not inside Store.write()")
    return tail


@contextmanager
def _deferring(conn: Connection) -> Iterator[None]:
    conn.info[_TAIL] = tail = _Tail()  # info outlives the checkout: set anew, always removed
    try:
        yield
        if not (tail.spends or tail.entries):
            return
        if conn.dialect.name == "postgresql":
            _commit_tail_pg(conn, tail)
        else:
            _commit_tail(conn, tail)
    finally:
        conn.info.pop(_TAIL, None)


def _commit_tail(conn: Connection, tail: _Tail) -> None:
    """sqlite (its writer is alone): the statements one by one."""
    for key, at, window, limit, refused in tail.spends:
        seen = select(func.count()).where(rate_events.c.key == key, rate_events.c.at > at - window)
        if int(conn.execute(seen).scalar_one()) >= limit:
            raise refused()
    for key, at, *_ in tail.spends:
        conn.execute(rate_events.insert().values(key=key, at=at))
    head = select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
    prev, rows = conn.execute(head).scalar() or AUDIT_GENESIS, []
    for row, before, after in tail.entries:
        digest = hashlib.sha256(f"{before}{prev}{after}".encode()).hexdigest()
        rows.append({**row, "prev_hash": prev, "hash": digest})
        prev = digest
    if rows:
        conn.execute(audit_log.insert(), rows)


def _commit_tail_pg(conn: Connection, tail: _Tail) -> None:
    """PostgreSQL: one round trip (zkv_commit_tail, below), so the commit lock is held for that
    call and the COMMIT only."""
    rows = [row for row, _, _ in tail.entries]
    args: dict[str, Any] = {
        "space": PG_NAMED_LOCKS,
        "name": COMMIT_LOCK,
        "genesis": AUDIT_GENESIS,
        "keys": [s[0] for s in tail.spends],
        "ats": [s[1] for s in tail.spends],
        "windows": [s[2] for s in tail.spends],
        "limits": [s[3] for s in tail.spends],
        "e_before": [before for _, before, _ in tail.entries],
        "e_after": [after for _, _, after in tail.entries],
        **{f"e_{k}": [row[k] for row in rows] for k in _AUDIT_FIELDS},
    }
    over = conn.execute(_CALL_TAIL, args).scalar_one()
    if over:
        raise tail.spends[over - 1][4]()


_AUDIT_FIELDS = ("at", "event", "request_id", "host_id", "source_ip", "detail")
_CALL_TAIL = text(
    "SELECT zkv_commit_tail(:space, :name, :genesis, CAST(:keys AS text[]), "
    "CAST(:ats AS float8[]), CAST(:windows AS float8[]), CAST(:limits AS int[]), "
    "CAST(:e_at AS float8[]), CAST(:e_event AS text[]), CAST(:e_request_id AS text[]), "
    "CAST(:e_host_id AS text[]), CAST(:e_source_ip AS text[]), CAST(:e_detail AS text[]), "
    "CAST(:e_before AS text[]), CAST(:e_after AS text[]))"
)
# _commit_tail's statements in one function: each statement of a VOLATILE function sees what
# committed before it started, so the budget and the head are read after the lock is held.
_TAIL_FUNCTION = """
CREATE OR REPLACE FUNCTION zkv_commit_tail(
    space int, name text, genesis text, keys text[], ats float8[], windows float8[],
    limits int[], e_at float8[], e_event text[], e_request_id text[], e_host_id text[],
    e_source_ip text[], e_detail text[], e_before text[], e_after text[]
) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prev text;
    digest text;
BEGIN
    PERFORM pg_advisory_xact_lock(space, hashtext(name));
    FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
        IF (SELECT count(*) FROM rate_events WHERE key = keys[i] AND at > ats[i] - windows[i])
                >= limits[i] THEN
            RETURN i;
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
        INSERT INTO rate_events (key, at) VALUES (keys[i], ats[i]);
    END LOOP;
    SELECT hash INTO prev FROM audit ORDER BY id DESC LIMIT 1;
    prev := coalesce(prev, genesis);
    FOR i IN 1 .. coalesce(array_length(e_at, 1), 0) LOOP
        digest := encode(sha256(convert_to(e_before[i] || prev || e_after[i], 'UTF8')), 'hex');
        INSERT INTO audit (at, event, request_id, host_id, source_ip, detail, prev_hash, hash)
        VALUES (e_at[i], e_event[i], e_request_id[i], e_host_id[i], e_source_ip[i], e_detail[i],
                prev, digest);
        prev := digest;
    END LOOP;
    RETURN 0;
END $$
"""


def _add_audit_chain(conn: Connection) -> None:
    """The one upgrade so far: a database from before the audit hash chain gets its columns
    (create_all adds tables, not columns) and its existing rows chained as they stand."""
    if "hash" in {column["name"] for column in inspect(conn).get_columns("audit")}:
        return
    for column in ("prev_hash", "hash"):
        conn.execute(text(f"ALTER TABLE audit ADD COLUMN {column} VARCHAR(64)"))  # fixed names
    from . import audit  # audit.py imports this module's tables

    audit.seal_unchained(conn)


def _request_values(row: RequestRow) -> dict[str, Any]:
    return {
        **row.approval.__dict__,
        "host_id": row.host_id,
        "hostname": row.hostname,
        "source_ip": row.source_ip,
        "datasets": json.dumps(list(row.datasets)),
        "ephemeral_key": row.ephemeral_key,
    }


def _request_row(row: Any) -> RequestRow:
    fields = Approval.__dataclass_fields__
    return RequestRow(
        approval=Approval(**{k: row[k] for k in fields}),
        host_id=row["host_id"],
        hostname=row["hostname"],
        source_ip=row["source_ip"],
        datasets=tuple(json.loads(row["datasets"])),
        ephemeral_key=row["ephemeral_key"],
    )


def _tune_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling would defer BEGIN; take it over (SQLAlchemy recipe).
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("zkv_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
