"""The real gateway under gunicorn, console and auto approvers, file secret source; the tests
on the shared server run once on sqlite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.postgres import DATABASES, url_for
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import protocol


@pytest.fixture(scope="module", params=DATABASES)
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("gw")
    url = url_for(request.param, directory, request)
    with running_gateway(directory, settings={"SQLALCHEMY_DATABASE_URI": url}) as gateway:
        yield gateway


@pytest.fixture
def host(gw: RunningGateway) -> client.Host:
    host = client.Host()
    gw.admit(host, "--replace")  # each test's db01 succeeds the last one's on this server
    return host


def test_enrol_approve_unlock_release(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host)
    assert boot.response.status_code == 201, boot.response.text
    created = boot.created
    assert client.poll(gw.url, created.request_id).json() == {"state": "pending"}
    assert any(created.pin in text and "db01" in text for text in gw.notifications())
    gw.approve(created.request_id, created.pin)
    assert client.opened(boot, client.poll(gw.url, created.request_id, wait=5)) == gw.secret
    again = client.poll(gw.url, created.request_id)
    assert (again.status_code, again.json()) == (401, {"error": "unauthorized"})
    events = " ".join(gw.audit(created.request_id))
    assert "unlock_requested" in events and "approved" in events and "released" in events
    assert gw.secret.decode() not in gw.output()


def test_uninvited_enrolment_is_unauthorized_and_tells_nobody(gw: RunningGateway) -> None:
    host, before = client.Host(hostname="stranger"), len(gw.notifications())
    refused = client.enroll(gw.url, host, protocol.new_invite_token())
    assert (refused.status_code, refused.json()) == (401, {"error": "unauthorized"})
    boot = client.unlock(gw.url, host)
    assert (boot.response.status_code, boot.response.json()) == (401, {"error": "unauthorized"})
    assert len(gw.notifications()) == before
    assert host.host_id not in gw.cli("hosts", "list").stdout


def test_auto_approver(tmp_path: Path) -> None:
    with running_gateway(tmp_path, approver="auto") as auto:
        host = client.Host()
        auto.admit(host)
        boot = client.unlock(auto.url, host)
        response = client.poll(auto.url, boot.created.request_id, wait=5)
        assert client.opened(boot, response) == auto.secret
        assert "WITHOUT A HUMAN" in auto.output()


def test_refusals_look_the_same(gw: RunningGateway, host: client.Host) -> None:
    unknown = client.unlock(gw.url, client.Host()).response
    boot = client.unlock(gw.url, host)
    replay = client.send(gw.url, boot.request)
    gw.deny(boot.created.request_id)
    gw.revoke_host(host.host_id)
    revoked = client.unlock(gw.url, host).response
    answers = {(r.status_code, r.text) for r in (unknown, replay, revoked)}
    assert len(answers) == 1 and answers.pop()[0] == 401
    reasons = " ".join(gw.audit())
    assert "host is unknown" in reasons and "replayed nonce" in reasons
    assert "host is revoked" in reasons


def test_expiry_on_the_real_server(tmp_path: Path) -> None:
    with running_gateway(tmp_path, settings={"REQUEST_TTL": 5}) as short:
        host = client.Host()
        short.admit(host)
        boot = client.unlock(short.url, host)
        response = client.poll(short.url, boot.created.request_id, wait=10)
        assert response.json() == {"state": "expired"}
        result = short.cli("approve", boot.created.request_id, boot.created.pin, check=False)
        assert result.returncode == 5 and "expired" in result.stderr
