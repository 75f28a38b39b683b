"""Many hosts at once (a power cut), against the real gateway on both databases: the owners
get one coalesced notification with one page each; one passkey check on that page (in the
real browser, a virtual authenticator as the passkey) approves the ticked requests, each
audited apart and each host's quorum still counted; `zkv-gateway approve --pending --host
GLOB` approves the matching ones from the gateway machine; and a caller that is no enrolled
host can still cause no message."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests

from gateway.page import csrf_value
from tests.gateway.postgres import DATABASES, url_for
from tests.gateway.test_approval_page import enrol_owner
from tests.harness import browser as browsers
from tests.harness import protocol_client as client
from tests.harness.browser import Browser
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import protocol

WINDOW = 2.0  # NOTIFY_COALESCE here
BATCH_LINK = re.compile(r"http://localhost:\d+/o/b/[A-Za-z0-9_-]+")


@pytest.fixture(scope="module", params=DATABASES)
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    browsers.available()
    directory = tmp_path_factory.mktemp("fleet")
    settings = {
        "SQLALCHEMY_DATABASE_URI": url_for(request.param, directory, request),
        "NOTIFY_COALESCE": WINDOW,
        "RATE_HOST_PER_HOUR": 1000,
    }
    with running_gateway(directory, settings=settings, approval_page=True) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsers.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def owners(gw: RunningGateway, browser: Browser) -> pyotp.TOTP:
    """alice with a passkey (enrolled in the browser), bob with TOTP: bob's authenticator."""
    enrol_owner(gw, browser, "alice")
    out = gw.cli("owners", "add", "bob", "--totp").stdout.splitlines()
    uri = next(line for line in out if line.startswith("otpauth://"))
    return pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])


@pytest.fixture(scope="module")
def fleet(gw: RunningGateway) -> dict[str, client.Host]:
    hosts = {name: client.Host(hostname=name) for name in ("db01", "db02", "db03", "web01")}
    for host in hosts.values():
        gw.admit(host)
    return hosts


def power_cut(
    gw: RunningGateway, hosts: list[client.Host]
) -> tuple[dict[str, client.Boot], list[str]]:
    """Every host boots at once: their boots by host name, and the notifications they caused
    once the batch had time to go out."""
    before = len(gw.notifications())
    boots = {host.hostname: client.unlock(gw.url, host) for host in hosts}
    assert all(b.response.status_code == 201 for b in boots.values())
    time.sleep(WINDOW + 1.5)
    return boots, gw.notifications()[before:]


def links_in(text: str) -> dict[str, str]:
    pages = text.split("Approve or deny: ", 1)[1].split(" Expires in")[0].split()
    return {name.rstrip(":"): url for name, url in zip(pages[::2], pages[1::2], strict=True)}


def state(gw: RunningGateway, boot: client.Boot) -> str:
    return str(client.poll(gw.url, boot.created.request_id).json()["state"])


def test_one_message_and_one_page_for_a_power_cut(
    gw: RunningGateway, owners: pyotp.TOTP, fleet: dict[str, client.Host]
) -> None:
    stranger = client.unlock(gw.url, client.Host(hostname="db99"))  # no enrolled host
    assert stranger.response.status_code == 401
    boots, told = power_cut(gw, list(fleet.values()))
    assert len(told) == 1, told  # one message for four hosts, none for the stranger
    text = told[0]
    assert text.startswith("zkv: 4 hosts ask to unlock")
    for name, boot in boots.items():
        assert f"{name} (code {boot.created.pin})" in text
    links = links_in(text)
    assert set(links) == {"alice", "bob"} and all(BATCH_LINK.fullmatch(u) for u in links.values())
    assert not any(
        u.rsplit("/", 1)[1] in b.response.text for u in links.values() for b in boots.values()
    )
    # bob's page (TOTP), over HTTP: approve three of the four with one code.
    bob = links["bob"]
    page = requests.get(bob, timeout=10).text
    assert all(b.created.pin in page for b in boots.values())
    token = bob.rsplit("/", 1)[1]
    picked = [boots[n].created.request_id for n in ("db01", "db02", "web01")]

    def decide(code: str, ids: list[str]) -> requests.Response:
        return requests.post(
            bob + "/decide",
            json={"verdict": "approve", "totp": code, "requests": ids},
            headers={"X-ZKV-CSRF": csrf_value(token)},
            timeout=10,
        )

    assert decide("000000", picked).status_code == 403  # a wrong code approves nothing
    assert all(state(gw, b) == protocol.STATE_PENDING for b in boots.values())
    done = decide(owners.now(), picked)
    assert done.status_code == 200, done.text
    assert done.json()["states"] == dict.fromkeys(picked, protocol.STATE_APPROVED)
    for name in ("db01", "db02", "web01"):
        opened = client.opened(boots[name], client.poll(gw.url, boots[name].created.request_id))
        assert opened == gw.secret
        assert any(
            "bob with totp via page (batch of 3)" in line
            for line in gw.audit(boots[name].created.request_id)
        )
    assert state(gw, boots["db03"]) == protocol.STATE_PENDING  # not ticked
    assert decide(owners.at(time.time() + 30), picked).status_code == 403  # the link is spent
    # alice's own link still decides what is open: a denial needs the link alone.
    alice, db03 = links["alice"], boots["db03"].created.request_id
    denied = requests.post(
        alice + "/decide",
        json={"verdict": "deny", "requests": [db03, picked[0]]},
        headers={"X-ZKV-CSRF": csrf_value(alice.rsplit("/", 1)[1])},
        timeout=10,
    )
    assert denied.json()["states"] == {db03: protocol.STATE_DENIED}  # the approved one is closed
    assert state(gw, boots["db03"]) == protocol.STATE_DENIED


def test_the_page_approves_the_ticked_after_one_passkey_check(
    gw: RunningGateway, browser: Browser, owners: pyotp.TOTP, fleet: dict[str, client.Host]
) -> None:
    gw.cli("quorum", fleet["db03"].host_id, "2")  # db03 needs alice and bob
    try:
        boots, told = power_cut(gw, [fleet["db01"], fleet["db02"], fleet["db03"]])
        assert len(told) == 1
        browser.open(links_in(told[0])["alice"])
        assert browser.text("owner") == "alice"
        page = browser.text("batch")
        assert all(f"code {b.created.pin}" in page for b in boots.values())
        browser.click("pick-2")  # db02: untick it (boots are listed in order)
        browser.click("approve")
        status = browser.status(lambda s: "Approved" in s or "Not done" in s)
        assert status.startswith("Approved"), status
        assert browser.credential_ids()  # one assertion by the virtual authenticator
        assert state(gw, boots["db02"]) == protocol.STATE_PENDING
        db01 = boots["db01"]
        assert client.opened(db01, client.poll(gw.url, db01.created.request_id)) == gw.secret
        assert state(gw, boots["db03"]) == protocol.STATE_PENDING  # 1 of its 2 owners
        log = "\n".join(gw.audit(boots["db03"].created.request_id))
        assert "alice with passkey via page (batch of 2): 1 of 2" in log
        for name in ("db02", "db03"):
            gw.deny(boots[name].created.request_id)
    finally:
        gw.cli("quorum", fleet["db03"].host_id, "1")


def test_cli_approves_the_matching_pending_requests(
    gw: RunningGateway, owners: pyotp.TOTP, fleet: dict[str, client.Host]
) -> None:
    boots, _ = power_cut(gw, list(fleet.values()))
    dry = gw.cli("approve", "--pending", "--host", "db0[12]", "--dry-run").stdout
    assert dry.count("would approve") == 2 and "db01" in dry and "db02" in dry
    assert all(state(gw, b) == protocol.STATE_PENDING for b in boots.values())
    out = gw.cli("approve", "--pending", "--host", "db*").stdout
    assert out.count("approved ") == 3 and "web01" not in out
    for name in ("db01", "db02", "db03"):
        boot = boots[name]
        assert client.opened(boot, client.poll(gw.url, boot.created.request_id)) == gw.secret
        assert any("operator with cli" in line for line in gw.audit(boot.created.request_id))
    assert state(gw, boots["web01"]) == protocol.STATE_PENDING
    none = gw.cli("approve", "--pending", "--host", "db*").stdout
    assert "no pending request" in none
    bad = gw.cli("approve", "--pending", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    gw.deny(boots["web01"].created.request_id)


def test_the_page_of_an_approval_asked_ahead_says_so(
    gw: RunningGateway, owners: pyotp.TOTP, fleet: dict[str, client.Host]
) -> None:
    before = len(gw.notifications())
    asked = client.ahead(gw.url, fleet["web01"], 1800)
    assert asked.status_code == 201
    time.sleep(WINDOW + 1.5)  # a batch of one: told as any request, with its own links
    (text,) = gw.notifications()[before:]
    assert "web01 asks to approve ahead a planned reboot within 30 min" in text
    page = requests.get(links_in(text)["bob"], timeout=10).text
    assert "Planned reboot" in page and 'within <strong id="within">30 min</strong>' in page
    assert "tank/" not in page  # no datasets: nothing is unlocked by it
    gw.deny(asked.json()["request_id"])
