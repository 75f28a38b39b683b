"""Several owners and a quorum per host, against the real gateway: M of N distinct owners
approve, any owner's denial denies, one owner counts once, and the audit log names who
approved with which factor. Owners approve with TOTP codes by SMS (sms+totp) and on their
pages over HTTP (the browser tests cover the page's own script)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests

from gateway.page import csrf_value
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import protocol


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    settings = {"APPROVAL_POLICY": "sms+totp", "MAX_WRONG_PINS": 10}
    directory = tmp_path_factory.mktemp("quorum")
    with running_gateway(
        directory, approver="twilio", settings=settings, approval_page=True
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def owners(gw: RunningGateway) -> dict[str, pyotp.TOTP]:
    out = {}
    for name in ("dave", "erin", "frank"):
        uri = next(
            line
            for line in gw.cli("owners", "add", name, "--totp").stdout.splitlines()
            if line.startswith("otpauth://")
        )
        out[name] = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    return out


@pytest.fixture(scope="module")
def host(gw: RunningGateway) -> client.Host:
    host = client.Host(hostname="vault01")
    gw.admit(host)
    gw.cli("quorum", host.host_id, "2")
    return host


def state(gw: RunningGateway, boot: client.Boot) -> str:
    return str(client.poll(gw.url, boot.created.request_id).json()["state"])


def test_two_of_three_owners_approve(
    gw: RunningGateway, owners: dict[str, pyotp.TOTP], host: client.Host
) -> None:
    boot = client.unlock(gw.url, host)
    pin = boot.created.pin
    assert gw.sms(f"{pin} {owners['dave'].now()}") == 200
    assert state(gw, boot) == protocol.STATE_PENDING  # 1 of 2
    # dave again, with the next step's (valid, unused) code: still one owner.
    assert gw.sms(f"{pin} {owners['dave'].at(time.time() + 30)}") == 200
    assert state(gw, boot) == protocol.STATE_PENDING
    assert gw.sms(f"{pin} {owners['erin'].now()}") == 200
    released = client.opened(boot, client.poll(gw.url, boot.created.request_id, wait=5))
    assert released == gw.secret
    log = "\n".join(gw.audit(boot.created.request_id))
    assert "dave with sms+totp: 1 of 2" in log and "erin with sms+totp" in log


def test_any_owners_denial_denies(
    gw: RunningGateway, owners: dict[str, pyotp.TOTP], host: client.Host
) -> None:
    boot = client.unlock(gw.url, host)
    assert gw.sms(f"{boot.created.pin} {owners['erin'].now()}") == 200
    assert state(gw, boot) == protocol.STATE_PENDING
    links = _links(gw.notifications()[-1])
    frank = links["frank"]
    token = frank.rsplit("/", 1)[1]
    response = requests.post(
        frank + "/decide",
        json={"verdict": "deny"},
        headers={"X-ZKV-CSRF": csrf_value(token)},
        timeout=10,
    )
    assert response.json() == {"state": protocol.STATE_DENIED}
    assert state(gw, boot) == protocol.STATE_DENIED
    assert any("frank with link via page" in line for line in gw.audit(boot.created.request_id))


def test_the_page_shows_the_count(
    gw: RunningGateway, owners: dict[str, pyotp.TOTP], host: client.Host
) -> None:
    boot = client.unlock(gw.url, host)
    assert gw.sms(f"{boot.created.pin} {owners['frank'].now()}") == 200
    page = requests.get(_links(gw.notifications()[-1])["dave"], timeout=10).text
    assert "1 of the 2 owners needed" in page


def _links(text: str) -> dict[str, str]:
    pages = text.split("Approve or deny: ", 1)[1].split(" Expires in")[0].split()
    return {name.rstrip(":"): url for name, url in zip(pages[::2], pages[1::2], strict=True)}


def test_a_quorum_needs_a_known_host(gw: RunningGateway, tmp_path: Path) -> None:
    done = gw.cli("quorum", "f" * 32, "2", check=False)
    assert done.returncode != 0 and "no host" in done.stderr
