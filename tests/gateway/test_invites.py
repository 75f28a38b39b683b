"""Enrolment by invite, in process on a fake clock: one-time, expiring, bound to a host name,
stored as a hash; duplicate names; revocation is final; a per-host secret by default."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import invites
from gateway.errors import GatewayCliError
from tests.gateway.conftest import Env
from tests.gateway.postgres import on_both_databases
from zkv import crypto, protocol

UNAUTHORIZED = (401, {"error": "unauthorized"})


def answer(response: Any) -> tuple[int, Any]:
    return response.status_code, response.get_json()


def host_id(private: bytes) -> str:
    return protocol.host_id_of(crypto.ed25519_public(private))


def rows(env: Env) -> dict[str, int]:
    with env.gateway.store.read() as conn:
        return env.gateway.store.row_counts(conn)


def host(env: Env, private: bytes) -> Any:
    with env.gateway.store.read() as conn:
        return env.gateway.store.host(conn, host_id(private))


@on_both_databases
def test_without_a_valid_token_nothing_is_written_but_one_counter(env: Env) -> None:
    env.gateway.invite("db01", 3600)
    before = rows(env)
    for _ in range(30):
        private = crypto.ed25519_generate()[0]
        assert answer(env.enroll("db01", private, protocol.new_invite_token())) == UNAUTHORIZED
    after = rows(env)
    assert after.pop("refusals") == before.pop("refusals") + 1  # one source, one reason
    assert after == before and env.notifier.texts == []  # no host, nonce, audit row, SMS


@on_both_databases
def test_an_invite_is_single_use_bound_to_its_name_and_expires(env: Env) -> None:
    token, invite, _ = env.gateway.invite("db01", 600)
    with env.gateway.store.read() as conn:
        assert env.gateway.store.invite_by_hash(conn, invites.token_hash(token)) == invite
    assert token not in repr(invite)  # the database holds only its hash
    other = crypto.ed25519_generate()[0]
    assert answer(env.enroll("db02", other, token)) == UNAUTHORIZED  # another host name
    first = crypto.ed25519_generate()[0]
    assert answer(env.enroll("db01", first, token))[0] == 202
    assert answer(env.enroll("db01", other, token)) == UNAUTHORIZED  # used up
    late, _, _ = env.gateway.invite("db03", 600)
    env.clock.advance(600)
    assert answer(env.enroll("db03", other, late)) == UNAUTHORIZED  # expired


@on_both_databases
def test_a_new_host_gets_its_own_secret_and_the_owner_a_notice(env: Env) -> None:
    private = env.enrolled("db01.example")
    secret = host(env, private).secret_name
    assert secret.startswith("zkv-db01-example-") and len(secret) == len("zkv-db01-example-") + 8
    assert "enrolled with your invite" in env.notifier.texts[-1]
    token = env.gateway.invite("db02", 600, secret_name="nas-key")[0]
    second = crypto.ed25519_generate()[0]
    assert env.enroll("db02", second, token).status_code == 202
    assert host(env, second).secret_name == "nas-key"


@on_both_databases
def test_a_duplicate_name_is_refused_unless_replacing(env: Env) -> None:
    old = env.enrolled("db01")
    with pytest.raises(GatewayCliError, match="already has the name db01"):
        env.gateway.invite("db01", 600)
    token, _, replaced = env.gateway.invite("db01", 600, replace=True)
    assert [h.host_id for h in replaced] == [host_id(old)]
    new = crypto.ed25519_generate()[0]
    assert env.enroll("db01", new, token).status_code == 202
    assert host(env, old).status == "revoked" and host(env, new).status == "approved"
    assert answer(env.unlock(old)[0]) == UNAUTHORIZED
    assert env.unlock(new)[0].status_code == 201


@on_both_databases
def test_revocation_is_final_until_a_new_invite_with_a_new_secret(env: Env) -> None:
    private = env.enrolled("db01")
    old_secret = host(env, private).secret_name
    env.gateway.revoke_host(host_id(private))
    assert answer(env.unlock(private)[0]) == UNAUTHORIZED
    # The thief re-enrols under the name: no token, a forged one, or the old secret by name.
    thief = crypto.ed25519_generate()[0]
    assert answer(env.enroll("db01", thief, protocol.new_invite_token())) == UNAUTHORIZED
    assert answer(env.enroll("db01", private, protocol.new_invite_token())) == UNAUTHORIZED
    with pytest.raises(GatewayCliError, match="belonged to a revoked host"):
        env.gateway.invite("db01", 600, secret_name=old_secret)
    assert host(env, thief) is None
    # Only the owner's new invite re-admits it, with a secret that is not the revoked one.
    token = env.gateway.invite("db01", 600)[0]
    assert env.enroll("db01", private, token).status_code == 202
    readmitted = host(env, private)
    assert readmitted.status == "approved" and readmitted.secret_name != old_secret


def test_ttl_and_secret_names() -> None:
    assert invites.parse_ttl("24h") == 86400 and invites.parse_ttl("90m") == 5400
    for bad in ("0", "59s", "31d", "1w", "24h\n", "-5m"):
        with pytest.raises(ValueError):
            invites.parse_ttl(bad)
    name = invites.secret_name_for("a" * 253, "0123abcd")
    assert len(name) == 127 and name.endswith("-0123abcd")
    assert protocol.is_invite_token(protocol.new_invite_token())
    assert not protocol.is_invite_token(protocol.new_invite_token() + "\n")


def test_hosts_list_flags_a_shared_name_and_shows_open_invites(env: Env) -> None:
    from gateway.cli import _host_lines
    from gateway.store import Host

    env.enrolled("db01")
    with env.gateway.store.write() as conn:  # two hosts of one name, as from before invites
        env.gateway.store.add_host(
            conn, Host("ab" * 16, "db01", "x", "approved", None, "192.0.2.1", 0.0, 0.0)
        )
    env.gateway.invite("db02", 600)
    hosts, open_invites = env.gateway.hosts()
    lines = _host_lines(hosts, open_invites)
    assert [line.endswith("DUPLICATE NAME") for line in lines[:2]] == [True, True]
    assert lines[2].startswith("invite ") and "for db02" in lines[2]
