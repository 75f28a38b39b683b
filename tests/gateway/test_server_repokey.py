"""Repository key rotation against the real gateway under gunicorn (gateway/rotations.py),
once with the file secret source and once with the real azure-keyvault-secrets SDK against the
Key Vault stand-in (and Twilio's): the owner approves it like an unlock, the new key is written
as a new secret version and released from then on; anything else leaves the old key."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import cloud_standins as fakes
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import keystore, protocol

UNAUTHORIZED = (401, {"error": "unauthorized"})


@pytest.fixture(scope="module", params=["file", "azure"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp(f"repokey-{request.param}")
    approver = "twilio" if request.param == "azure" else "console"  # the owner's SMS stand-in
    with running_gateway(directory, approver, secret_source=request.param) as gateway:
        yield gateway


@pytest.fixture
def host(gw: RunningGateway) -> client.Host:
    host = client.Host(hostname="db07")
    gw.admit(host, "--replace")  # its own secret: zkv-db07-<invite>, holding gw.secret
    return host


def secret_name(gw: RunningGateway, host: client.Host) -> str:
    line = next(x for x in gw.cli("hosts", "list").stdout.splitlines() if host.host_id in x)
    return line.split("secret=")[1].split()[0]


def stored(gw: RunningGateway, host: client.Host) -> str:
    name = secret_name(gw, host)
    if gw.standins is not None:
        return str(gw.standins.vault_secrets[name])
    return (gw.directory / name).read_text().strip()


def held(gw: RunningGateway, host: client.Host) -> str:
    response = client.key_status(gw.url, host)
    assert response.status_code == 200, response.text
    return str(protocol.RepositoryKeyStatus.from_json(response.json()).key_id)


def key_id(hex_key: bytes | str) -> str:
    return keystore.repository_key_id(keystore.parse_repository_key(hex_key))


def released(gw: RunningGateway, host: client.Host) -> bytes:
    boot = client.unlock(gw.url, host)
    gw.approve(boot.created.request_id, boot.created.pin)
    return client.opened(boot, client.poll(gw.url, boot.created.request_id, wait=5))


def asked(gw: RunningGateway, host: client.Host) -> protocol.UnlockCreated:
    response = client.rotation(gw.url, host)
    assert response.status_code == 201, response.text
    return protocol.UnlockCreated.from_json(response.json())


def test_approved_rotation_writes_a_new_version_that_is_released(
    gw: RunningGateway, host: client.Host
) -> None:
    new = secrets.token_bytes(32)
    before = len(gw.notifications())
    created = asked(gw, host)
    text = gw.notifications()[-1]
    assert len(gw.notifications()) == before + 1
    assert "db07 asks to rotate its repository key" in text and created.pin in text
    assert client.poll_rotation(gw.url, created.request_id).json() == {"state": "pending"}
    early = client.deliver(gw.url, host, created.request_id, new)  # not approved yet
    assert (early.status_code, early.json()) == UNAUTHORIZED
    assert held(gw, host) == key_id(gw.secret)
    gw.approve(created.request_id, created.pin)
    polled = client.poll_rotation(gw.url, created.request_id, wait=5)
    assert polled.json() == {"state": "approved"}  # no secret in a poll, ever
    answer = client.deliver(gw.url, host, created.request_id, new)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"key_id": keystore.repository_key_id(new)}
    assert stored(gw, host) == new.hex()
    if gw.standins is not None:  # a new version through set_secret
        assert gw.standins.vault_versions[secret_name(gw, host)] == 1
    assert held(gw, host) == keystore.repository_key_id(new)
    assert released(gw, host) == new.hex().encode()
    again = client.deliver(gw.url, host, created.request_id, secrets.token_bytes(32))
    assert (again.status_code, again.json()) == UNAUTHORIZED  # one delivery per approval
    assert client.poll_rotation(gw.url, created.request_id).status_code == 401
    assert stored(gw, host) == new.hex()
    events = " ".join(gw.audit(created.request_id))
    assert "repokey_requested" in events and "repokey_approved" in events
    assert "repokey_rotated" in events and new.hex() not in gw.output()


def test_denied_rotation_keeps_the_old_key(gw: RunningGateway, host: client.Host) -> None:
    created = asked(gw, host)
    gw.deny(created.request_id)
    assert client.poll_rotation(gw.url, created.request_id, wait=5).json() == {"state": "denied"}
    refused = client.deliver(gw.url, host, created.request_id, secrets.token_bytes(32))
    assert (refused.status_code, refused.json()) == UNAUTHORIZED
    assert stored(gw, host) == gw.secret.decode()
    assert released(gw, host) == gw.secret


def test_forged_unsigned_and_replayed_calls_are_refused_alike_and_tell_nobody(
    gw: RunningGateway, host: client.Host
) -> None:
    before = len(gw.notifications())
    stranger = client.Host(hostname="db07")
    unknown = client.rotation(gw.url, stranger)
    # Signed by another key, claiming the enrolled host's id.
    fresh = client.challenge(gw.url).challenge
    forged = protocol.RotationRequest.create(stranger.private_key, "db07", fresh)._replace(
        host_id=host.host_id
    )
    forged_answer = client.requests.post(
        gw.url + protocol.PATH_ROTATIONS, json=forged.to_json(), timeout=10
    )
    unsigned = {k: v for k, v in forged.to_json().items() if k != "signature"}
    unsigned_answer = client.requests.post(
        gw.url + protocol.PATH_ROTATIONS, json=unsigned, timeout=10
    )
    assert unsigned_answer.status_code == 400
    refused = {(r.status_code, r.text) for r in (unknown, forged_answer)}
    assert len(refused) == 1 and refused.pop()[0] == 401
    assert len(gw.notifications()) == before
    # A valid request replayed: one request, one notification.
    good = protocol.RotationRequest.create(
        host.private_key, "db07", client.challenge(gw.url).challenge
    )
    first = client.requests.post(gw.url + protocol.PATH_ROTATIONS, json=good.to_json(), timeout=10)
    replay = client.requests.post(gw.url + protocol.PATH_ROTATIONS, json=good.to_json(), timeout=10)
    assert first.status_code == 201 and (replay.status_code, replay.json()) == UNAUTHORIZED
    assert len(gw.notifications()) == before + 1
    created = protocol.UnlockCreated.from_json(first.json())
    gw.approve(created.request_id, created.pin)
    # Only the host that asked can deliver; a delivery is not replayable either.
    other = client.Host(hostname="db08")
    gw.admit(other, "--replace")
    theirs = client.deliver(gw.url, other, created.request_id, secrets.token_bytes(32))
    assert (theirs.status_code, theirs.json()) == UNAUTHORIZED
    new = secrets.token_bytes(32)
    delivery = protocol.RepositoryKeyDelivery.create(
        host.private_key, created.request_id, new, client.challenge(gw.url).challenge
    )
    assert client.send_delivery(gw.url, delivery).status_code == 200
    replayed = client.send_delivery(gw.url, delivery)
    assert (replayed.status_code, replayed.json()) == UNAUTHORIZED
    assert stored(gw, host) == new.hex()
    reasons = " ".join(gw.audit())
    assert "rotation: host is unknown" in reasons and "bad signature" in reasons
    assert "replayed nonce" in reasons and "unknown rotation id" in reasons


def test_a_shared_secret_is_not_rotated(gw: RunningGateway) -> None:
    first, second = client.Host(hostname="web1"), client.Host(hostname="web2")
    gw.admit(first, "--replace", "--secret", "zkv-shared-web")
    gw.admit(second, "--replace", "--secret", "zkv-shared-web")
    before = len(gw.notifications())
    response = client.rotation(gw.url, first)
    assert (response.status_code, response.json()) == (409, {"error": "secret_shared"})
    assert len(gw.notifications()) == before


def test_a_secret_source_failure_keeps_the_old_key(tmp_path: Path) -> None:
    with running_gateway(tmp_path, secret_source="azure") as gw:
        host = client.Host(hostname="db09")
        gw.admit(host)
        created = asked(gw, host)
        gw.approve(created.request_id, created.pin)
        gw.standins.vault_mode = "403"
        failed = client.deliver(gw.url, host, created.request_id, secrets.token_bytes(32))
        assert (failed.status_code, failed.json()) == (503, {"error": "secret_unavailable"})
        gw.standins.vault_mode = "ok"
        assert held(gw, host) == key_id(gw.secret) and released(gw, host) == gw.secret
        assert fakes.VAULT_HOST in " ".join(gw.standins.seen)
