"""Persistence of the owners, their passkeys and the one-time links sent to them (SQL here
only; the tables share store.py's metadata, so `Store.create_schema` creates them).

A link's token is never stored: only its SHA-256, so a copy of the database opens no page.
A link is single-use (``used_at``) and expires; its WebAuthn challenge lives on the link row
between the options call and the answer, so a challenge is bound to one link.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Float, Integer, String, Table, Text, select

from .store import metadata

owners = Table(
    "owners",
    metadata,
    Column("owner_id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("totp_secret", String(64)),  # base32; NULL: no TOTP
    Column("totp_step", Integer),  # the last step used: each code counts once
)

passkeys = Table(
    "passkeys",
    metadata,
    Column("credential_id", String(1400), primary_key=True),  # base64url, WebAuthn's max 1023 B
    Column("owner_id", String(32), nullable=False, index=True),
    Column("public_key", Text, nullable=False),  # base64url COSE key
    Column("sign_count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

links = Table(
    "owner_links",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("purpose", String(8), nullable=False),  # enrol | decide | batch
    Column("owner_id", String(32), nullable=False),
    Column("request_id", String(32), index=True),  # decide: the request; batch: the batch
    Column("challenge", String(200)),  # base64url, between options and answer
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("used_at", Float),
)

votes = Table(  # each owner's decision on a request, towards its quorum
    "owner_votes",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("owner_id", String(32), primary_key=True),
    Column("approve", Integer, nullable=False),
    Column("factor", String(16), nullable=False),
    Column("at", Float, nullable=False),
)

quorums = Table(  # hosts whose requests need more than one owner (APPROVAL_QUORUM otherwise)
    "host_quorums",
    metadata,
    Column("host_id", String(32), primary_key=True),
    Column("quorum", Integer, nullable=False),
)

PURPOSE_ENROL, PURPOSE_DECIDE, PURPOSE_BATCH = "enrol", "decide", "batch"


@dataclass(frozen=True)
class Owner:
    owner_id: str
    name: str
    created_at: float
    totp_secret: str | None = None
    totp_step: int | None = None


@dataclass(frozen=True)
class Passkey:
    credential_id: str
    owner_id: str
    public_key: str
    sign_count: int
    created_at: float


@dataclass(frozen=True)
class Link:
    token_hash: str
    purpose: str
    owner_id: str
    request_id: str | None
    challenge: str | None
    created_at: float
    expires_at: float
    used_at: float | None

    def usable(self, now: float) -> bool:
        return self.used_at is None and now < self.expires_at


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_owner(conn: Connection, owner: Owner) -> None:
    conn.execute(owners.insert().values(**owner.__dict__))


def owner(conn: Connection, owner_id: str) -> Owner | None:
    row = conn.execute(select(owners).where(owners.c.owner_id == owner_id)).mappings().first()
    return Owner(**row) if row else None


def owner_named(conn: Connection, name: str) -> Owner | None:
    row = conn.execute(select(owners).where(owners.c.name == name)).mappings().first()
    return Owner(**row) if row else None


def all_owners(conn: Connection) -> list[Owner]:
    return [Owner(**r) for r in conn.execute(select(owners).order_by(owners.c.name)).mappings()]


def remove_owner(conn: Connection, owner_id: str) -> None:
    conn.execute(passkeys.delete().where(passkeys.c.owner_id == owner_id))
    conn.execute(links.delete().where(links.c.owner_id == owner_id))
    conn.execute(owners.delete().where(owners.c.owner_id == owner_id))


def set_owner(conn: Connection, owner_id: str, **values: object) -> None:
    conn.execute(owners.update().where(owners.c.owner_id == owner_id).values(**values))


def add_passkey(conn: Connection, key: Passkey) -> None:
    conn.execute(passkeys.insert().values(**key.__dict__))


def passkeys_of(conn: Connection, owner_id: str) -> list[Passkey]:
    query = select(passkeys).where(passkeys.c.owner_id == owner_id)
    return [Passkey(**row) for row in conn.execute(query).mappings()]


def set_sign_count(conn: Connection, credential_id: str, count: int) -> None:
    conn.execute(
        passkeys.update().where(passkeys.c.credential_id == credential_id).values(sign_count=count)
    )


def add_link(conn: Connection, link: Link) -> None:
    conn.execute(links.insert().values(**link.__dict__))


def link(conn: Connection, token: str, lock: bool = False) -> Link | None:
    query = select(links).where(links.c.token_hash == token_hash(token))
    row = conn.execute(query.with_for_update() if lock else query).mappings().first()
    return Link(**row) if row else None


def update_link(conn: Connection, token: str, **values: object) -> None:
    conn.execute(links.update().where(links.c.token_hash == token_hash(token)).values(**values))


def close_links(conn: Connection, request_id: str, now: float) -> None:
    """A decided request's other links open nothing any more."""
    query = links.update().where(links.c.request_id == request_id, links.c.used_at.is_(None))
    conn.execute(query.values(used_at=now))


def purge_links(conn: Connection, now: float, keep: float) -> None:
    conn.execute(links.delete().where(links.c.expires_at < now - keep))


def add_vote(
    conn: Connection, request_id: str, owner_id: str, approve: bool, factor: str, now: float
) -> int:
    """Record an owner's vote (once per owner and request); the approvals so far."""
    seen = select(votes.c.at).where(votes.c.request_id == request_id, votes.c.owner_id == owner_id)
    if conn.execute(seen).first() is None:
        conn.execute(
            votes.insert().values(
                request_id=request_id, owner_id=owner_id, approve=int(approve), factor=factor,
                at=now,
            )
        )  # fmt: skip
    return ayes(conn, request_id)


def ayes(conn: Connection, request_id: str) -> int:
    query = select(votes.c.owner_id).where(votes.c.request_id == request_id, votes.c.approve == 1)
    return len(conn.execute(query).all())


def quorum_of(conn: Connection, host_id: str) -> int | None:
    row = conn.execute(select(quorums.c.quorum).where(quorums.c.host_id == host_id)).first()
    return int(row[0]) if row else None


def set_quorum(conn: Connection, host_id: str, quorum: int) -> None:
    conn.execute(quorums.delete().where(quorums.c.host_id == host_id))
    conn.execute(quorums.insert().values(host_id=host_id, quorum=quorum))
