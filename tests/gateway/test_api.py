"""Policy tests against the in-process app (fake clock): authentication, replay, expiry, limits,
bad input. Every refusal must look the same to the caller."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from gateway import create_app, store
from tests.gateway.conftest import Env
from tests.gateway.postgres import on_both_databases
from zkv import crypto, protocol

UNAUTHORIZED = (401, {"error": "unauthorized"})


def answer(response: Any) -> tuple[int, Any]:
    return response.status_code, response.get_json()


def test_unknown_host(env: Env) -> None:
    stranger = crypto.ed25519_generate()[0]
    assert answer(env.unlock(stranger)[0]) == UNAUTHORIZED


@on_both_databases
def test_pending_and_revoked_hosts(env: Env) -> None:
    private = env.enrolled()
    created = env.unlock(private)[0].get_json()
    host_id = protocol.host_id_of(crypto.ed25519_public(private))
    env.gateway.revoke_host(host_id)
    assert env.poll(created["request_id"]).get_json() == {"state": "denied"}
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    events = [e.event for e in env_audit(env)]
    assert "host_revoked" in events and "auth_failed" in events


def test_signature_by_another_key(env: Env) -> None:
    private = env.enrolled()
    _, eph = crypto.x25519_generate()
    good = protocol.UnlockRequest.create(private, "db01", ["tank"], eph, env.challenge())
    forged = protocol.UnlockRequest.create(
        crypto.ed25519_generate()[0], "db01", ["tank"], eph, env.challenge()
    )
    body = {**good.to_json(), "signature": forged.to_json()["signature"]}
    assert answer(env.http.post(protocol.PATH_UNLOCK, json=body)) == UNAUTHORIZED
    tampered = {**good.to_json(), "hostname": "evil"}
    assert answer(env.http.post(protocol.PATH_UNLOCK, json=tampered)) == UNAUTHORIZED


@on_both_databases
def test_replayed_and_expired_challenges(env: Env) -> None:
    private = env.enrolled()
    response, _, req = env.unlock(private)
    assert response.status_code == 201
    env.clock.advance(2)
    assert answer(env.http.post(protocol.PATH_UNLOCK, json=req.to_json())) == UNAUTHORIZED
    _, eph = crypto.x25519_generate()
    challenge = env.challenge()
    env.clock.advance(protocol.REPLAY_WINDOW + 1)
    old = protocol.UnlockRequest.create(private, "db01", ["tank"], eph, challenge)
    assert answer(env.http.post(protocol.PATH_UNLOCK, json=old.to_json())) == UNAUTHORIZED
    details = [e.detail for e in env_audit(env) if e.event == "auth_failed"]
    reasons = {d.split("from the busiest: ", 1)[1] for d in details}  # counted per interval
    assert reasons == {"replayed nonce", "challenge: issued 121 s ago"}


def test_challenges_write_nothing(env: Env) -> None:
    env.enrolled()
    before = len(env_audit(env))
    for _ in range(50):
        assert env.http.post(protocol.PATH_CHALLENGES).status_code == 201
    assert len(env_audit(env)) == before
    with env.gateway.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(store.nonces)).scalar() == 1


@on_both_databases
def test_expiry(env: Env) -> None:
    created = env.unlock(env.enrolled())[0].get_json()
    env.clock.advance(599)
    assert env.poll(created["request_id"]).get_json() == {"state": "pending"}
    env.clock.advance(1)
    assert env.poll(created["request_id"]).get_json() == {"state": "expired"}
    assert created["expires_at"] == int(env.clock())
    assert "expired" in [e.event for e in env_audit(env)]


@on_both_databases
def test_release_happens_exactly_once_under_concurrent_polls(env: Env) -> None:
    created = env.unlock(env.enrolled())[0].get_json()
    env.gateway.decide(created["request_id"], created["pin"], approve=True)
    path = f"{protocol.PATH_UNLOCK}/{created['request_id']}"
    results = at_once(env, [lambda http: http.get(path)] * 8)
    assert results == [200] + [401] * 7
    assert [e.event for e in env_audit(env)].count("released") == 1


@on_both_databases
def test_a_nonce_is_used_once_under_concurrent_posts(env: Env) -> None:
    _, eph = crypto.x25519_generate()
    req = protocol.UnlockRequest.create(env.enrolled(), "db01", ["tank"], eph, env.challenge())
    results = at_once(env, [lambda http: http.post(protocol.PATH_UNLOCK, json=req.to_json())] * 6)
    assert results == [201] + [401] * 5


@on_both_databases
def test_sms_budget_holds_under_concurrent_requests(env_factory: Any) -> None:
    env = env_factory(SMS_PER_HOUR=8)  # six enrolment notices, then room for two unlocks
    bodies = []
    for name in "abcdef":
        _, eph = crypto.x25519_generate()
        private = env.enrolled(name)
        bodies.append(protocol.UnlockRequest.create(private, name, ["tank"], eph, env.challenge()))
    calls = [lambda http, r=r: http.post(protocol.PATH_UNLOCK, json=r.to_json()) for r in bodies]
    assert at_once(env, calls) == [201] * 2 + [429] * 4


def test_twilio_down_fails_the_request(env: Env) -> None:
    private = env.enrolled()
    env.notifier.broken = True
    env.clock.advance(1)
    response = env.unlock(private)[0]
    assert answer(response) == (503, {"error": "approver_unavailable"})
    with env.gateway.store.read() as conn:
        latest = env.gateway.store.recent_requests(conn, 1)[0].approval
    assert (latest.kind, latest.state) == ("unlock", "failed")


def test_secret_source_down(env: Env) -> None:
    created = env.unlock(env.enrolled())[0].get_json()
    env.source.broken = True
    env.gateway.decide(created["request_id"], created["pin"], approve=True)
    assert answer(env.poll(created["request_id"])) == (503, {"error": "secret_unavailable"})
    assert env.poll(created["request_id"]).get_json() == {"state": "failed"}


@on_both_databases
def test_rate_limits_per_host_and_floor(env_factory: Any) -> None:
    env = env_factory(RATE_PER_SECOND=1, RATE_HOST_PER_HOUR=2)
    private = env.enrolled()
    env.clock.advance(1.5)
    assert env.unlock(private)[0].status_code == 201
    assert answer(env.unlock(private)[0]) == (429, {"error": "rate_limited"})  # same second
    env.clock.advance(1.5)
    assert env.unlock(private)[0].status_code == 201
    env.clock.advance(1.5)
    assert env.unlock(private)[0].status_code == 429  # 2 per hour
    env.clock.advance(3600)
    assert env.unlock(private)[0].status_code == 201


@on_both_databases
def test_sms_budget_holds_across_instances(env_factory: Any) -> None:
    env = env_factory(SMS_PER_HOUR=3)  # two enrolment notices + one unlock
    other = create_app(
        env.gateway.settings, notifier=env.notifier, clock=env.clock
    ).test_client()  # a second instance on the same database
    a, b = env.enrolled("a"), env.enrolled("b")
    assert env.unlock(a)[0].status_code == 201
    env.clock.advance(2)
    _, eph = crypto.x25519_generate()
    req = protocol.UnlockRequest.create(b, "b", ["tank"], eph, env.challenge())
    assert other.post(protocol.PATH_UNLOCK, json=req.to_json()).status_code == 429
    env.clock.advance(3600)
    assert env.unlock(b)[0].status_code == 201


@on_both_databases
def test_lockout_after_auth_failures(env_factory: Any) -> None:
    env = env_factory(AUTH_FAILURES_PER_HOUR=3)
    private = env.enrolled()
    for _ in range(3):
        assert env.unlock(crypto.ed25519_generate()[0])[0].status_code == 401
    assert answer(env.unlock(crypto.ed25519_generate()[0])[0]) == (429, {"error": "rate_limited"})
    # The source is locked out, a host that signs correctly from it is not (one NAT, two hosts).
    assert env.unlock(private)[0].status_code == 201
    env.clock.advance(3601 + 300)
    assert env.unlock(crypto.ed25519_generate()[0])[0].status_code == 401


def test_bad_input_is_a_clear_4xx(env: Env) -> None:
    post = env.http.post
    assert answer(post(protocol.PATH_UNLOCK, data="{", content_type="application/json")) == (
        400,
        {"error": "bad_request"},
    )
    assert post(protocol.PATH_UNLOCK, data="x", content_type="text/plain").status_code == 400
    deep = "[" * 5000 + "]" * 5000
    assert post(protocol.PATH_UNLOCK, data=deep, content_type="application/json").status_code == 400
    big = b'{"a":"' + b"x" * protocol.MAX_BODY + b'"}'
    assert post(protocol.PATH_HOSTS, data=big, content_type="application/json").status_code == 413
    assert post(protocol.PATH_UNLOCK, json={"v": 1}).status_code == 400
    assert env.http.get(f"{protocol.PATH_UNLOCK}/{'0' * 32}?wait=abc").status_code == 400
    assert env.http.get(f"{protocol.PATH_UNLOCK}/{'0' * 32}?wait=26").status_code == 400
    assert answer(env.http.get(f"{protocol.PATH_UNLOCK}/nothex")) == UNAUTHORIZED
    assert answer(env.http.get(f"{protocol.PATH_UNLOCK}/{'0' * 32}")) == UNAUTHORIZED
    assert env.http.get("/nope").status_code == 404
    assert env.http.get("/healthz").get_json() == {"status": "ok"}


@on_both_databases
def test_enrolment_needs_the_invite_and_the_key(env: Env) -> None:
    private, _ = crypto.ed25519_generate()
    token = env.gateway.invite("db02", 3600)[0]
    req = protocol.EnrollRequest.create("db02", private, token, env.challenge())
    impostor = {**req.to_json(), "public_key": protocol.b64(crypto.ed25519_generate()[1])}
    assert answer(env.http.post(protocol.PATH_HOSTS, json=impostor)) == UNAUTHORIZED
    assert answer(env.http.post(protocol.PATH_HOSTS, json=req.to_json())) == (
        202,
        {"host_id": req.host_id, "status": "approved"},
    )
    assert len(env.notifier.texts) == 1 and "db02" in env.notifier.texts[0]
    assert env.http.post(protocol.PATH_HOSTS, json=req.to_json()).status_code == 401  # used up


def at_once(env: Env, calls: list[Callable[[FlaskClient], Any]]) -> list[int]:
    """Run the calls in parallel threads, one client each; their status codes, sorted."""
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c(env.app.test_client()).status_code))
        for c in calls
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def env_audit(env: Env) -> list[Any]:
    from gateway import audit

    env.gateway.report_refusals()  # as the CLI's audit does
    with env.gateway.store.read() as conn:
        return audit.entries(conn, 1000)


@on_both_databases
def test_one_hosts_budget_is_its_own(env_factory: Any) -> None:
    env = env_factory(RATE_HOST_PER_HOUR=2, SMS_PER_HOUR=10)
    noisy, quiet = env.enrolled("noisy"), env.enrolled("quiet")
    for _ in range(2):
        env.clock.advance(1.5)
        assert env.unlock(noisy, hostname="noisy")[0].status_code == 201
    env.clock.advance(1.5)
    assert answer(env.unlock(noisy, hostname="noisy")[0]) == (429, {"error": "rate_limited"})
    sent = len(env.notifier.texts)
    assert env.unlock(quiet, hostname="quiet")[0].status_code == 201
    assert len(env.notifier.texts) == sent + 1 and "quiet" in env.notifier.texts[-1]
