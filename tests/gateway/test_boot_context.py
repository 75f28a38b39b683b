"""The boot's context in the unlock request, against the real gateway under gunicorn: the
flags and the command line's digest are signed, validated, shown to the owners (message, page,
audit), compared with the host's last approved boot, and refused by REFUSE_BOOT_FLAGS with
the uniform refusal. The page is read as the owner's browser would get it (one passkey owner,
enrolled in headless chromium, so that the notification carries a link)."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator

import pytest
import requests

from tests.gateway.test_approval_page import LINK, _wait
from tests.harness import browser as browsers
from tests.harness import protocol_client as client
from tests.harness.browser import enrol_owner
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import crypto, protocol
from zkv_early import cmdline

REFUSED = "rd.break,init,single,emergency"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    browsers.available()
    settings = {"REFUSE_BOOT_FLAGS": REFUSED}
    with running_gateway(
        tmp_path_factory.mktemp("boot"), approval_page=True, settings=settings
    ) as gateway:
        with browsers.chromium() as browser:
            enrol_owner(gateway, browser, "alice")
        yield gateway


@pytest.fixture
def host(gw: RunningGateway) -> client.Host:
    host = client.Host(hostname="nas")
    gw.admit(host, "--replace")
    return host


def boot_of(line: str) -> protocol.BootContext:
    """What the boot client reports for that command line."""
    return cmdline.parse(line).boot


def ask(
    gw: RunningGateway, host: client.Host, boot: protocol.BootContext
) -> tuple[client.Boot, str, str]:
    """A version 2 request; its boot, the notification's text and the owner's page (HTML)."""
    before = len(gw.notifications())
    sent = client.unlock(gw.url, host, boot=boot)
    assert sent.response.status_code == 201, sent.response.text
    text = _wait(lambda: gw.notifications()[before:])[-1]
    link = LINK.search(text)
    assert link, text
    page = requests.get(link[0], timeout=10)
    assert page.status_code == 200
    return sent, text, page.text


def element(page: str, element_id: str) -> str:
    found = re.search(rf'<dd id="{element_id}"([^>]*)>(.*?)</dd>', page, re.S)
    assert found, element_id
    return found[1] + "|" + html.unescape(re.sub(r"<[^>]+>", "", found[2]))


def test_flags_reach_the_message_the_page_and_the_audit(
    gw: RunningGateway, host: client.Host
) -> None:
    boot = boot_of("root=ZFS=rpool/ROOT/debian rescue zkv.debug")
    sent, text, page = ask(gw, host, boot)
    created = sent.created
    # The console's words: a request code, and where (never the link: that is the owner's).
    assert created.code_kind == protocol.CODE_REQUEST
    assert created.approve_at == "the link sent to the owner"
    assert "/o/r/" not in sent.response.text
    assert "Boot flags: rescue, zkv.debug (a shell or another init at boot)." in text
    flags = element(page, "boot-flags")
    assert 'class="warning"' in flags and flags.endswith(
        "|rescue, zkv.debug: this boot gives whoever is at its console a shell or another init "
        "(rescue)"
    )
    assert element(page, "cmdline").endswith(
        f"|same as last approved boot: no approved boot to compare with "
        f"(SHA-256 {boot.cmdline_sha256[:12]}…)"
    )
    audit = " ".join(gw.audit(created.request_id))
    assert f"boot_flags=rescue,zkv.debug cmdline_sha256={boot.cmdline_sha256}" in audit


def test_a_plain_boot_shows_none_and_compares_with_the_last_approved(
    gw: RunningGateway, host: client.Host
) -> None:
    usual = boot_of("root=ZFS=rpool/ROOT/debian ro quiet")
    first, text, page = ask(gw, host, usual)
    assert "Boot flags: none." in text
    assert element(page, "boot-flags") == "|none"
    gw.approve(first.created.request_id, first.created.pin)
    assert client.opened(first, client.poll(gw.url, first.created.request_id, wait=5)) == gw.secret
    # The next boot with the same command line: "yes"; an edited one: "no", and a warning.
    _again, _text, page = ask(gw, host, usual)
    assert element(page, "cmdline").startswith("|same as last approved boot: yes")
    edited = boot_of("root=ZFS=rpool/ROOT/debian ro quiet loglevel=7")
    assert edited.flags == ()
    _edited, text, page = ask(gw, host, edited)
    assert "command line changed since the last approved boot" in text
    cmdline = element(page, "cmdline")
    assert 'class="warning"' in cmdline and "same as last approved boot: no" in cmdline


def test_a_refused_flag_gets_the_uniform_refusal_and_tells_nobody(
    gw: RunningGateway, host: client.Host
) -> None:
    before = len(gw.notifications())
    stranger = client.unlock(gw.url, client.Host()).response
    refused = client.unlock(gw.url, host, boot=boot_of("root=ZFS=rpool/ROOT/debian rd.break"))
    unreported = client.unlock(gw.url, host)  # a version 1 client, which could hide anything
    answers = {(r.status_code, r.text) for r in (stranger, refused.response, unreported.response)}
    assert len(answers) == 1 and answers.pop()[0] == 401
    assert len(gw.notifications()) == before
    audit = " ".join(gw.audit())
    assert "boot flags refused by policy: rd.break; boot_flags=rd.break" in audit
    assert "boot flags not reported, and REFUSE_BOOT_FLAGS is set" in audit


def test_a_flag_cannot_be_hidden_or_invented(gw: RunningGateway, host: client.Host) -> None:
    """Dropping rd.break on the way (or editing the digest) breaks the host's signature;
    a flag name the protocol does not know, or a value, is refused as malformed."""
    boot = boot_of("root=ZFS=rpool/ROOT/debian rd.break init=/bin/sh")
    fresh = client.challenge(gw.url).challenge
    _private, public = crypto.x25519_generate()
    req = protocol.UnlockRequest.create(host.private_key, "nas", ["tank"], public, fresh, boot)
    body = req.to_json()
    hidden = {**body, "boot_flags": [], "cmdline_sha256": hashlib.sha256(b"ro quiet").hexdigest()}
    answer = requests.post(gw.url + protocol.PATH_UNLOCK, json=hidden, timeout=10)
    assert (answer.status_code, answer.json()) == (401, {"error": "unauthorized"})
    for bad in (["init=/bin/sh"], ["made-up"], ["rd.break", "init"]):
        answer = requests.post(
            gw.url + protocol.PATH_UNLOCK, json={**body, "boot_flags": bad}, timeout=10
        )
        assert (answer.status_code, answer.json()) == (400, {"error": "bad_request"})
    assert "bad signature" in " ".join(gw.audit())


# --- the words, without a server (gateway/boot_context.py) ----------------------------------


def test_the_words_for_each_case() -> None:
    from gateway.boot_context import BootView, refusal

    plain, edited = boot_of("ro quiet"), boot_of("ro quiet init=/bin/sh")
    assert BootView(None).flags == "not reported" and BootView(None).compared == "not reported"
    assert BootView(plain).message() == "Boot flags: none."
    assert BootView(plain, plain.cmdline_sha256).compared == "yes"
    assert BootView(edited, plain.cmdline_sha256).message() == (
        "Boot flags: init (a shell or another init at boot); command line changed since the "
        "last approved boot."
    )
    assert refusal(edited, frozenset()) is None  # no policy: shown, never refused
    assert refusal(edited, frozenset({"rd.break"})) is None
    assert refusal(edited, frozenset({"init", "single"})) == "boot flags refused by policy: init"
    assert refusal(None, frozenset({"init"})) is not None
