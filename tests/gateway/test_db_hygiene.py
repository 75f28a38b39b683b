"""Database hygiene: refused calls cost a bounded number of rows, the audit log still says how
many there were (and its chain holds), and what expires is expired on a schedule."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway import audit
from gateway.store import Host
from tests.gateway.conftest import Env
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import crypto, protocol

UNKNOWN_ID = "ef" * 16
FLOOD = 200  # rounds of three refused calls


def table_rows(gw: RunningGateway) -> dict[str, int]:
    with sqlite3.connect(gw.directory / "gateway.sqlite") as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def refused_in_audit(gw: RunningGateway) -> int:
    """Refusals the audit log accounts for, read from the database (not the CLI, which would
    report the open counters first): so what is there came from the schedule."""
    with sqlite3.connect(gw.directory / "gateway.sqlite") as db:
        details = [r[0] for r in db.execute("SELECT detail FROM audit WHERE source_ip IS NOT NULL")]
    return sum(int(m[1]) for d in details if (m := re.match(r"([0-9]+) refused in the ", d)))


def flood(gw: RunningGateway, rounds: int) -> int:
    """Bogus enrolments, unlock requests and polls; the number refused (all of them)."""
    codes = []
    for _ in range(rounds):
        stranger = client.Host(hostname="db01")
        codes.append(client.enroll(gw.url, stranger, protocol.new_invite_token()).status_code)
        codes.append(client.unlock(gw.url, stranger).response.status_code)
        codes.append(client.poll(gw.url, UNKNOWN_ID).status_code)
    assert set(codes) == {401}
    return len(codes)


def test_a_flood_of_refused_calls_adds_a_few_rows_not_one_per_call(tmp_path: Path) -> None:
    # No lockout here (test limits), so every refused call reaches the database; the default
    # REFUSAL_INTERVAL (300 s), so the floods fall in one interval (two at a boundary).
    with running_gateway(tmp_path) as gw:
        gw.admit(client.Host())
        start = table_rows(gw)
        refused = [flood(gw, FLOOD)]
        first = table_rows(gw)
        refused.append(refused[0] + flood(gw, FLOOD))
        second = table_rows(gw)
        growth = [sum(r.values()) - sum(start.values()) for r in (first, second)]
        print(f"rows after {refused[0]} refused calls: +{growth[0]}, {refused[1]}: +{growth[1]}")
        # One counter per reason (3 here) and interval; before, each refused call wrote an
        # audit row and a rate event.
        assert 3 <= growth[0] <= growth[1] <= 6
        assert {k: second[k] - start[k] for k in start if second[k] != start[k]} == {
            "refusals": growth[1]
        }
        audited = gw.cli("audit", "--limit", "10").stdout  # the CLI reports the counters first
        numbers = [int(n) for n in re.findall(r" ([0-9]+) refused in the ", audited)]
        assert sum(numbers) == refused[1] and len(numbers) == growth[1]
        assert gw.cli("audit", "--verify").stdout.startswith("audit log intact: ")


def test_the_schedule_sums_up_closed_intervals_in_the_audit_log(tmp_path: Path) -> None:
    settings = {"REFUSAL_INTERVAL": 1, "HOUSEKEEPING_INTERVAL": 0.5}
    with running_gateway(tmp_path, settings=settings) as gw:
        refused = flood(gw, 40)
        deadline = time.monotonic() + 10
        while refused_in_audit(gw) < refused and time.monotonic() < deadline:
            time.sleep(0.5)  # nobody looks: the schedule alone writes these entries
        assert refused_in_audit(gw) == refused
        assert gw.cli("audit", "--verify").stdout.startswith("audit log intact: ")


def test_housekeeping_expires_on_the_clock(env: Env) -> None:
    g, store = env.gateway, env.gateway.store
    env.enrolled("db01")
    g.invite("late", 600)
    with store.write() as conn:  # a host left pending by a gateway from before invites
        store.add_host(
            conn, Host("ab" * 16, "old", "x", "pending", None, "192.0.2.1", env.clock(), None)
        )
    assert env.unlock(crypto.ed25519_generate()[0])[0].status_code == 401
    before = counts(env)
    assert before["invites"] == 1 and before["nonces"] == 1 and before["refusals"] == 1
    env.clock.advance(601)
    g.housekeep()
    now = counts(env)
    assert now["invites"] == 0 and now["nonces"] == 0 and now["hosts"] == 2
    env.clock.advance(86400)
    g.housekeep()
    after = counts(env)
    assert after["hosts"] == 1 and after["refusals"] == 0 and after["rate_events"] == 0
    events = [e.event for e in audit_entries(env)]
    assert {"invite_expired", "host_expired", "auth_failed"} <= set(events)
    with store.read() as conn:
        assert audit.check(audit.chain(conn))[0] == len(events)


def test_lockout_and_counters_group_ipv6_by_64_and_cap_sources(env_factory: Any) -> None:
    env = env_factory(AUTH_FAILURES_PER_HOUR=2, MAX_REFUSAL_SOURCES=5)

    def bogus(ip: str) -> int:
        status: int = env.http.get(
            f"{protocol.PATH_UNLOCK}/{UNKNOWN_ID}", environ_base={"REMOTE_ADDR": ip}
        ).status_code
        return status

    assert [bogus("2001:db8::1"), bogus("2001:db8::ffff:2"), bogus("2001:db8::3")] == [
        401,
        401,
        429,
    ]
    assert bogus("2001:db8:0:1::1") == 401  # the next /64 is another client
    for i in range(50):
        bogus(f"198.51.100.{i}")
    assert counts(env)["refusals"] <= 5 + 1  # five sources apart, the rest as one


def counts(env: Env) -> dict[str, int]:
    with env.gateway.store.read() as conn:
        return env.gateway.store.row_counts(conn)


def audit_entries(env: Env) -> list[audit.Entry]:
    with env.gateway.store.read() as conn:
        return audit.entries(conn, 1000)
