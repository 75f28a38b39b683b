"""Dead-man switch and remote wipe through the in-process app on a fake clock: heartbeats,
suspension (lazily at unlock and on the schedule), the owners' notice, resume, wipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import audit, liveness
from gateway.errors import GatewayCliError, SecretUnavailable
from gateway.secrets_source import FileSecretSource
from tests.gateway.conftest import Env
from tests.gateway.postgres import on_both_databases
from zkv import crypto, protocol
from zkv.encoding import b64, canonical

UNAUTHORIZED = (401, {"error": "unauthorized"})
HOUR = 3600.0


def answer(response: Any) -> tuple[int, Any]:
    return response.status_code, response.get_json()


def host_id(private: bytes) -> str:
    return protocol.host_id_of(crypto.ed25519_public(private))


def beat(env: Env, private: bytes, **kw: Any) -> Any:
    req = protocol.Heartbeat.create(private, env.challenge(), **kw)
    return env.http.post(protocol.PATH_HEARTBEAT, json=req.to_json())


def window(env: Env, private: bytes, seconds: float | None) -> None:
    env.gateway.change_liveness(
        host_id(private), lambda x: liveness.set_window(x, seconds, env.clock())
    )


def events(env: Env) -> list[str]:
    with env.gateway.store.read() as conn:
        return [e.event for e in audit.entries(conn, 1000)]


def notices(env: Env) -> list[str]:
    return [t for t in env.notifier.texts if "heartbeat" in t]


@on_both_databases
def test_silent_host_is_refused_at_unlock_and_the_owner_told_once(env: Env) -> None:
    private = env.enrolled()
    window(env, private, HOUR)
    env.clock.advance(HOUR - 60)
    assert answer(beat(env, private)) == (200, {"action": "none"})
    env.clock.advance(HOUR - 60)  # within the window of the last heartbeat
    assert env.unlock(private)[0].status_code == 201
    env.clock.advance(HOUR)  # now silent for longer than the window
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    assert len(notices(env)) == 1 and "db01" in notices(env)[0] and "suspended" in notices(env)[0]
    assert events(env).count("host_suspended") == 1
    env.gateway.report_refusals()  # refusals are counted, like every other refused call
    with env.gateway.store.read() as conn:
        refusals = [e.detail for e in audit.entries(conn, 1000) if e.event == "auth_failed"]
    assert len(refusals) == 1 and refusals[0].startswith("2 refused"), refusals
    assert refusals[0].endswith(": host is suspended")


def test_the_schedule_suspends_without_an_unlock(env: Env) -> None:
    private, other = crypto.ed25519_generate()[0], crypto.ed25519_generate()[0]
    for name, key in (("db01", private), ("web02", other)):
        token = env.gateway.invite(name, 3600, "shared-key")[0]
        assert env.enroll(name, key, token).status_code == 202
    window(env, private, HOUR)
    env.clock.advance(HOUR + 1)
    env.gateway.sweep_liveness()
    env.gateway.sweep_liveness()
    assert env.gateway.all_liveness()[host_id(private)].state == liveness.SUSPENDED
    assert host_id(other) not in env.gateway.all_liveness()  # no window: never a record
    assert len(notices(env)) == 1 and "web02" not in notices(env)[0]
    assert env.unlock(other, hostname="web02")[0].status_code == 201


def test_default_window_counts_from_approval(env_factory: Any) -> None:
    env = env_factory(DEADMAN_WINDOW=HOUR)
    private = env.enrolled()
    env.clock.advance(HOUR - 1)
    assert env.unlock(private)[0].status_code == 201
    env.clock.advance(2)
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED


def test_one_notice_for_many_suspended_hosts(env: Env) -> None:
    hosts = [env.enrolled(f"h{i}") for i in range(5)]
    for private in hosts:
        window(env, private, HOUR)
    env.clock.advance(2 * HOUR)
    env.gateway.sweep_liveness()
    assert len(notices(env)) == 1 and "h0, h1, h2 and 2 more" in notices(env)[0]


def test_a_failed_notice_is_retried_at_the_next_sweep(env: Env) -> None:
    private = env.enrolled()
    window(env, private, HOUR)
    env.clock.advance(2 * HOUR)
    env.notifier.broken = True
    env.gateway.sweep_liveness()
    assert notices(env) == [] and "suspended_notice_failed" in events(env)
    env.notifier.broken = False
    env.gateway.sweep_liveness()
    env.gateway.sweep_liveness()
    assert len(notices(env)) == 1


def test_resume_re_enables_and_starts_a_new_window(env: Env) -> None:
    private = env.enrolled()
    window(env, private, HOUR)
    env.clock.advance(2 * HOUR)
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    assert answer(beat(env, private)) == (200, {"action": "none"})  # alive, still suspended
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    env.gateway.change_liveness(host_id(private), lambda x: liveness.resume(x, env.clock()))
    assert env.unlock(private)[0].status_code == 201
    env.clock.advance(HOUR + 1)
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED


def test_an_approval_is_not_released_to_a_host_suspended_meanwhile(env: Env) -> None:
    private = env.enrolled()
    window(env, private, HOUR)
    env.clock.advance(HOUR - 10)
    created = env.unlock(private)[0].get_json()
    env.gateway.decide(created["request_id"], created["pin"], approve=True)
    env.clock.advance(20)
    assert env.poll(created["request_id"]).get_json() == {"state": "failed"}


def test_heartbeats_of_strangers_are_uniformly_unauthorized_and_cost_no_notice(env: Env) -> None:
    private = env.enrolled()
    texts = len(env.notifier.texts)  # the enrolment's
    stranger = crypto.ed25519_generate()[0]
    assert answer(beat(env, stranger)) == UNAUTHORIZED
    forged = protocol.Heartbeat.create(stranger, env.challenge())._replace(host_id=host_id(private))
    assert answer(env.http.post(protocol.PATH_HEARTBEAT, json=forged.to_json())) == UNAUTHORIZED
    good = protocol.Heartbeat.create(private, env.challenge())
    assert env.http.post(protocol.PATH_HEARTBEAT, json=good.to_json()).status_code == 200
    replay = env.http.post(protocol.PATH_HEARTBEAT, json=good.to_json())
    assert answer(replay) == UNAUTHORIZED
    stale = protocol.Heartbeat.create(private, env.challenge())
    env.clock.advance(3600)
    assert answer(env.http.post(protocol.PATH_HEARTBEAT, json=stale.to_json())) == UNAUTHORIZED
    assert len(env.notifier.texts) == texts


def test_an_unlock_signature_does_not_pass_as_a_heartbeat(env: Env) -> None:
    private = env.enrolled()
    req = protocol.Heartbeat.create(private, env.challenge())
    body = req.body()
    stolen = crypto.ed25519_sign(private, protocol.CONTEXT_UNLOCK + canonical(body))
    forged = {**body, "signature": b64(stolen)}
    assert answer(env.http.post(protocol.PATH_HEARTBEAT, json=forged)) == UNAUTHORIZED


def test_heartbeats_per_host_are_limited(env: Env) -> None:
    private = env.enrolled()
    codes = [beat(env, private).status_code for _ in range(liveness.HEARTBEATS_PER_HOUR + 1)]
    assert codes[:-1] == [200] * liveness.HEARTBEATS_PER_HOUR and codes[-1] == 429


@on_both_databases
def test_wipe_disables_the_secret_refuses_for_good_and_tells_the_host(env: Env) -> None:
    private = crypto.ed25519_generate()[0]
    assert (
        env.enroll("db01", private, env.gateway.invite("db01", 3600, "db01-key")[0]).status_code
        == 202
    )
    created = env.unlock(private)[0].get_json()
    done = env.gateway.wipe(host_id(private), shared_ok=False)
    assert env.source.disabled == ["db01-key"] and "db01-key" in done
    assert env.poll(created["request_id"]).get_json() == {"state": "denied"}
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    assert answer(beat(env, private)) == (200, {"action": "wipe"})
    with pytest.raises(GatewayCliError, match="wiped"):
        env.gateway.change_liveness(host_id(private), lambda x: liveness.resume(x, env.clock()))
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    assert {"host_wiped", "wipe_secret_disabled", "wipe_sent"} <= set(events(env))
    # Only the owner's new invite (a new secret: the old one stays disabled) admits it again.
    token = env.gateway.invite("db01", 3600, replace=True)[0]
    assert env.enroll("db01", private, token).status_code == 202
    assert answer(beat(env, private)) == (200, {"action": "none"})
    assert env.unlock(private)[0].status_code == 201


def test_wipe_will_not_disable_a_secret_other_hosts_use(env: Env) -> None:
    private, other = crypto.ed25519_generate()[0], crypto.ed25519_generate()[0]
    for name, key in (("db01", private), ("web02", other)):
        token = env.gateway.invite(name, 3600, "shared-key")[0]
        assert env.enroll(name, key, token).status_code == 202
    with pytest.raises(GatewayCliError, match="also used by web02"):
        env.gateway.wipe(host_id(private), shared_ok=False)
    assert env.source.disabled == [] and env.unlock(private)[0].status_code == 201
    env.gateway.wipe(host_id(private), shared_ok=True)
    assert env.source.disabled == ["shared-key"]
    del other


def test_wipe_with_the_vault_down_still_refuses_the_host(env: Env) -> None:
    private = env.enrolled()
    env.source.broken = True
    with pytest.raises(GatewayCliError, match="not disabled"):
        env.gateway.wipe(host_id(private), shared_ok=True)
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    assert "wipe_secret_failed" in events(env)


def test_the_file_source_disables_by_renaming(tmp_path: Path) -> None:
    (tmp_path / "default").write_text("d" * 64)
    (tmp_path / "db01-key").write_text("k" * 64)
    source = FileSecretSource(str(tmp_path / "default"))
    assert "db01-key.disabled" in source.disable("db01-key")
    with pytest.raises(SecretUnavailable):
        source.get("db01-key")
    assert "already disabled" in source.disable("db01-key")
    assert (tmp_path / "db01-key.disabled").read_text() == "k" * 64  # kept for the owner
    assert source.get(None) == b"d" * 64
    with pytest.raises(SecretUnavailable, match="no secret file"):
        source.disable("nobody")
