"""What the write path's locks (gateway/store.py) must keep true when two gateway instances
share one database and their writers run side by side: a host's budget, unique PINs, one
unbroken audit chain, exact refusal counters. Each case races calls across both instances."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway import audit, ratelimit
from gateway import service as service_module
from tests.gateway.conftest import Env
from tests.gateway.postgres import on_both_databases
from zkv import crypto, protocol

Call = Callable[[FlaskClient], Any]


def racing(pairs: list[tuple[Env, Call]]) -> list[Any]:
    """Start every call at once (a barrier), each on its own client of its instance."""
    barrier, answers = threading.Barrier(len(pairs)), []

    def one(env: Env, call: Call) -> None:
        http = env.app.test_client()
        barrier.wait()
        answers.append(call(http))

    threads = [threading.Thread(target=one, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def two_instances(env_factory: Any, **settings: Any) -> tuple[Env, Env]:
    first = env_factory(**settings)
    return first, env_factory(**settings)  # the same database, its own store and pool


def create(env: Env, private: bytes, hostname: str) -> Call:
    _, eph = crypto.x25519_generate()
    req = protocol.UnlockRequest.create(private, hostname, ["tank"], eph, env.challenge())
    return lambda http: http.post(protocol.PATH_UNLOCK, json=req.to_json())


def alternating(a: Env, b: Env, calls: list[Call]) -> list[tuple[Env, Call]]:
    return [(b if i % 2 else a, call) for i, call in enumerate(calls)]


def creates_of_six_hosts(a: Env, b: Env) -> list[tuple[Env, Call]]:
    """Six enrolled hosts' creates, each signed for the instance it goes to."""
    hosts = [(f"h{i}", a.enrolled(f"h{i}")) for i in range(6)]
    envs = [b if i % 2 else a for i in range(6)]
    return [(env, create(env, p, name)) for env, (name, p) in zip(envs, hosts, strict=True)]


@on_both_databases
def test_two_instances_racing_one_hosts_budget(env_factory: Any) -> None:
    a, b = two_instances(env_factory, RATE_HOST_PER_HOUR=3)
    private = a.enrolled("db01")
    calls = alternating(a, b, [create(a, private, "db01") for _ in range(8)])  # one key: either
    codes = sorted(r.status_code for r in racing(calls))
    assert codes == [201] * 3 + [429] * 5


@on_both_databases
def test_pins_stay_unique_among_open_requests(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_instances(env_factory)
    calls = creates_of_six_hosts(a, b)
    # Every create draws the same PIN first: each must see the others' and draw again.
    later, firsts = itertools.count(1), set[int]()

    def randbelow(n: int) -> int:
        me = threading.get_ident()
        if me not in firsts:
            firsts.add(me)
            return 4242
        return next(later)

    monkeypatch.setattr(service_module.secrets, "randbelow", randbelow)
    answers = racing(calls)
    assert [r.status_code for r in answers] == [201] * 6
    pins = [r.get_json()["pin"] for r in answers]
    assert len(set(pins)) == 6 and "004242" in pins


@on_both_databases
def test_one_audit_chain_from_two_instances(env_factory: Any) -> None:
    a, b = two_instances(env_factory)
    assert [r.status_code for r in racing(creates_of_six_hosts(a, b))] == [201] * 6
    with a.gateway.store.read() as conn:
        rows = list(audit.chain(conn))
        entries, _ = audit.check(rows)  # raises AuditBroken at a fork
    requested = [r for r in rows if r["event"] == "unlock_requested"]
    assert entries == len(rows) and len(requested) == 6


@on_both_databases
def test_refusal_counters_lose_nothing(env_factory: Any) -> None:
    a, b = two_instances(env_factory, MAX_REFUSAL_SOURCES=2)
    path = f"{protocol.PATH_UNLOCK}/{'0' * 32}?wait=0"

    def poll_from(ip: str) -> Call:
        return lambda http: http.get(path, environ_base={"REMOTE_ADDR": ip})

    same = alternating(a, b, [poll_from("192.0.2.1")] * 8)
    assert [r.status_code for r in racing(same)] == [401] * 8
    others = alternating(a, b, [poll_from(f"198.51.100.{i}") for i in range(6)])
    assert [r.status_code for r in racing(others)] == [401] * 6
    with a.gateway.store.read() as conn:
        assert ratelimit.failures(conn, "192.0.2.1", 0) == 8
        counted = {ip: ratelimit.failures(conn, f"198.51.100.{ip}", 0) for ip in range(6)}
        assert ratelimit.failures(conn, ratelimit.OTHER, 0) == 6 - sum(counted.values())
    assert sum(counted.values()) == 1  # the cap of 2: the first source and one more
