"""The approval page in a real browser: Debian's chromium (headless) against the real gateway
under gunicorn, with WebAuthn virtual authenticators as the owners' passkeys.

Each test drives what an owner and an attacker would do: enrol a passkey through the one-time
link, approve or deny through the link in the notification, and try a used link, an expired
one, another owner's passkey and a cross-site request. ZKV_SCREENSHOT=PATH saves the approval
page at phone width (docs/img/approval-page.png is made so).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.harness import browser as browsers
from tests.harness import protocol_client as client
from tests.harness.browser import Browser, enrol_owner
from tests.harness.gateway import RunningGateway, free_port, running_gateway
from zkv import protocol

LINK = re.compile(r"http://localhost:\d+/o/r/[A-Za-z0-9_-]+")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    browsers.available()
    with running_gateway(tmp_path_factory.mktemp("page"), approval_page=True) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsers.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def alice(gw: RunningGateway, browser: Browser) -> str:
    """The first owner, her passkey enrolled through the link `owners add` printed."""
    return enrol_owner(gw, browser, "alice")


def unlock_request(
    gw: RunningGateway, hostname: str = "db01", datasets: tuple[str, ...] = ("tank/a", "tank/b")
) -> tuple[client.Boot, dict[str, str]]:
    """A host asks; returns its boot and the owners' links from the notification."""
    host = client.Host(hostname=hostname)
    gw.admit(host)
    return request_for(gw, host, datasets)


def request_for(
    gw: RunningGateway, host: client.Host, datasets: tuple[str, ...] = ("tank/a",)
) -> tuple[client.Boot, dict[str, str]]:
    before = len(gw.notifications())
    boot = client.unlock(gw.url, host, datasets=datasets)
    assert boot.response.status_code == 201, boot.response.text
    text = _wait(lambda: gw.notifications()[before:])[-1]
    pages = text.split("Approve or deny: ", 1)[1].split(" Expires in")[0].split()
    if len(pages) == 1:
        links = {"only": pages[0]}
    else:  # "alice: URL bob: URL"
        links = {name.rstrip(":"): url for name, url in zip(pages[::2], pages[1::2], strict=True)}
    assert all(LINK.fullmatch(url) for url in links.values()), text
    return boot, links


def alices(links: dict[str, str]) -> str:
    """Alice's link: the only one, or hers once other owners have passkeys too."""
    return links.get("alice") or links["only"]


def _wait(get, timeout: float = 10):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def state(gw: RunningGateway, boot: client.Boot) -> str:
    return str(client.poll(gw.url, boot.created.request_id).json().get("state"))


def test_approve_with_the_passkey_releases_the_key(
    gw: RunningGateway, browser: Browser, alice: str
) -> None:
    boot, links = unlock_request(gw, datasets=("tank/a", "tank/b"))
    link = links["only"]
    # The requester never sees what approves: the link is in no answer it gets (its create,
    # its polls before and after the decision, a challenge).
    token = link.rsplit("/", 1)[1]
    answers = [boot.response.text, client.poll(gw.url, boot.created.request_id).text]
    answers.append(requests.post(gw.url + protocol.PATH_CHALLENGES, timeout=10).text)
    browser.open(link)
    assert browser.text("code") == boot.created.pin  # what the console shows, to compare
    assert browser.text("source-ip") == "127.0.0.1"
    assert browser.text("host") == "db01"
    assert browser.text("datasets").split("\n") == ["tank/a", "tank/b"]
    assert browser.text("owner") == alice
    if path := os.environ.get("ZKV_SCREENSHOT"):
        browser.screenshot(path)
    browser.click("approve")
    assert browser.status(lambda s: "Approved" in s or "Not done" in s).startswith("Approved")
    final = client.poll(gw.url, boot.created.request_id, wait=5)
    assert client.opened(boot, final) == gw.secret
    answers.append(final.text)
    assert not [answer for answer in answers if token in answer or link in answer]
    assert any("alice with passkey via page" in line for line in gw.audit(boot.created.request_id))
    # Nor is the link in the gateway's logs (the access log shows the path without it); only
    # the console approver's own notification, the owner's channel in this set-up, carries it.
    logs = [line for line in gw.output().splitlines() if not line.startswith("NOTIFY ")]
    assert not any(token in line for line in logs)
    assert any("/o/r/[token]" in line for line in logs)


def test_deny_by_keyboard(gw: RunningGateway, browser: Browser, alice: str) -> None:
    boot, links = unlock_request(gw, hostname="web02")
    browser.open(links["only"])
    browser.press_enter_on("deny")
    assert browser.status(lambda s: "Denied" in s or "Not done" in s).startswith("Denied")
    assert state(gw, boot) == protocol.STATE_DENIED


def test_a_used_link_opens_nothing(gw: RunningGateway, browser: Browser, alice: str) -> None:
    boot, links = unlock_request(gw, hostname="used01")
    browser.open(links["only"])
    browser.click("deny")
    assert browser.status(lambda s: "Denied" in s or "Not done" in s).startswith("Denied")
    browser.open(links["only"])
    assert not browser.exists("approve")
    # Nor can the link's endpoints be called again (say, with the page kept open).
    token = links["only"].rsplit("/", 1)[1]
    response = _post(gw, token, "/decide", {"verdict": "approve"})
    assert response.status_code == 403
    assert state(gw, boot) == protocol.STATE_DENIED


def test_an_expired_link_opens_nothing(
    tmp_path_factory: pytest.TempPathFactory, browser: Browser
) -> None:
    with running_gateway(
        tmp_path_factory.mktemp("expiry"), approval_page=True, settings={"REQUEST_TTL": 5}
    ) as short:
        enrol_owner(short, browser, "carol")
        boot, links = unlock_request(short, hostname="late01")
        time.sleep(5.5)
        browser.open(links["only"])
        assert not browser.exists("approve")
        assert "not valid" in browser.driver.page_source
        assert state(short, boot) == protocol.STATE_EXPIRED


def test_another_owners_passkey_does_not_approve(
    gw: RunningGateway, browser: Browser, alice: str
) -> None:
    """Bob holds a passkey of this gateway, but not Alice's: on Alice's link his valid
    assertion is refused by the gateway (the browser is told to use Bob's credential)."""
    enrol_owner(gw, browser, "bob")  # bob's authenticator is now the active one
    bob_credential = browser.credential_ids()[0]
    boot, links = unlock_request(gw, hostname="shared01")
    assert set(links) == {"alice", "bob"}
    browser.open(links["alice"])
    assert browser.text("owner") == "alice"
    result = browser.run_async(_ASSERT_WITH, bob_credential)
    assert result == 403, result
    assert state(gw, boot) == protocol.STATE_PENDING
    assert any("passkey_refused" in line for line in gw.audit(boot.created.request_id))
    # Bob's own link works with his passkey.
    browser.open(links["bob"])
    browser.click("approve")
    assert browser.status(lambda s: "Approved" in s or "Not done" in s).startswith("Approved")


# Gets options from the page's own endpoint, then an assertion from the named credential.
_ASSERT_WITH = r"""
const [credential, done] = arguments;
const csrf = document.querySelector('meta[name="zkv-csrf"]').content;
const base = location.pathname;
const b64u = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, "-")
  .replace(/\//g, "_").replace(/=+$/, "");
const bytes = (s) => { s = s.replace(/-/g, "+").replace(/_/g, "/"); while (s.length % 4) s += "=";
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)); };
const post = (p, body) => fetch(base + p, {method: "POST", body: JSON.stringify(body),
  headers: {"Content-Type": "application/json", "X-ZKV-CSRF": csrf}});
(async () => {
  const o = await (await post("/options", {})).json();
  o.challenge = bytes(o.challenge);
  o.allowCredentials = [{type: "public-key", id: bytes(credential)}];
  const a = await navigator.credentials.get({publicKey: o});
  const r = await post("/decide", {verdict: "approve", credential: {id: a.id,
    rawId: b64u(a.rawId), type: a.type, response: {
      clientDataJSON: b64u(a.response.clientDataJSON),
      authenticatorData: b64u(a.response.authenticatorData),
      signature: b64u(a.response.signature), userHandle: null}}});
  done(r.status);
})().catch((e) => done(String(e)));
"""


def test_a_cross_site_request_decides_nothing(
    gw: RunningGateway, browser: Browser, alice: str
) -> None:
    """A page on another origin that knows the link posts a denial as a form, and with
    fetch: the gateway refuses both (no CSRF header, wrong Origin), and the request stays
    open for the owner."""
    boot, links = unlock_request(gw, hostname="csrf01")
    decide_url = alices(links) + "/decide"
    evil = _EvilSite(decide_url)
    with evil:
        browser.open(evil.url)
        time.sleep(1.5)  # the form submits itself, the fetch runs
    assert state(gw, boot) == protocol.STATE_PENDING
    assert evil.fetch_result in ("TypeError: Failed to fetch", "403", "opaque")
    # Even with the CSRF value (leaked, say), a foreign Origin is refused.
    token = alices(links).rsplit("/", 1)[1]
    forged = _post(gw, token, "/decide", {"verdict": "deny"}, origin="http://127.0.0.1:1")
    assert forged.status_code == 403
    assert state(gw, boot) == protocol.STATE_PENDING
    browser.open(alices(links))  # still usable by the owner
    assert browser.exists("approve")


def test_page_is_strict_and_self_contained(gw: RunningGateway, alice: str) -> None:
    boot, links = unlock_request(gw, hostname="strict01")
    page = requests.get(alices(links), timeout=10)
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = page.text
    assert '<html lang="en">' in html and 'name="viewport"' in html
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/o/static/"), url  # nothing from anywhere else
    assert "<script>" not in html and "style=" not in html  # nothing inline for CSP to allow
    assert boot.created.pin in html


def test_other_open_requests_for_the_host_are_shown(
    gw: RunningGateway, browser: Browser, alice: str
) -> None:
    host = client.Host(hostname="twice01")
    gw.admit(host)
    first, _ = request_for(gw, host)
    _second, links = request_for(gw, host)
    browser.open(alices(links))
    warning = browser.text("others")
    assert "1 other open request" in warning and first.created.pin in warning


def test_an_sms_reply_with_the_pin_does_not_approve_under_the_page_policy(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The PIN is on the booting host's console, so under the default policy a reply that
    carries it (from the owner's number, signed by Twilio) approves nothing."""
    with running_gateway(
        tmp_path_factory.mktemp("policy"), approver="twilio", settings={"APPROVAL_POLICY": "page"}
    ) as gateway:
        host = client.Host(hostname="nas09")
        gateway.admit(host)
        boot = client.unlock(gateway.url, host)
        assert boot.response.status_code == 201
        assert gateway.sms(boot.created.pin) == 200
        assert state(gateway, boot) == protocol.STATE_PENDING
        assert any("sms_approval_refused" in line for line in gateway.audit())
        assert gateway.sms(f"NO {boot.created.pin}") == 200  # denying stays possible
        assert state(gateway, boot) == protocol.STATE_DENIED


def _post(
    gw: RunningGateway, token: str, path: str, body: dict[str, object], origin: str | None = None
) -> requests.Response:
    from gateway.page import csrf_value

    headers = {"X-ZKV-CSRF": csrf_value(token)}
    if origin:
        headers["Origin"] = origin
    url = gw.config_file.with_suffix(".url").read_text().replace("127.0.0.1", "localhost")
    return requests.post(f"{url}/o/r/{token}{path}", json=body, headers=headers, timeout=10)


class _EvilSite:
    """Another origin (127.0.0.1 on its own port) whose page attacks the decide endpoint."""

    def __init__(self, target: str) -> None:
        self.target, self.fetch_result = target, ""
        self.url = f"http://127.0.0.1:{free_port()}/"

    def __enter__(self) -> _EvilSite:
        site = self
        page = f"""<!doctype html><html><body>
<form id="f" method="post" action="{self.target}" enctype="text/plain">
<input name='{{"verdict":"deny","x":"' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
fetch("{self.target}", {{method: "POST", body: '{{"verdict":"deny"}}',
  headers: {{"Content-Type": "application/json", "X-ZKV-CSRF": "guess"}}}})
  .then(r => report(r.type === "opaque" ? "opaque" : String(r.status)))
  .catch(e => report(String(e)));
function report(v) {{ fetch("/report?" + encodeURIComponent(v)); }}
document.getElementById("f").target = "sink";
document.getElementById("f").submit();
</script></body></html>""".encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/report?"):
                    from urllib.parse import unquote

                    site.fetch_result = unquote(self.path.split("?", 1)[1])
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

        port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_owner_without_a_passkey_approves_with_a_totp_code(
    gw: RunningGateway, browser: Browser, alice: str
) -> None:
    """Last in this module: erin joins the owners (and every later notification)."""
    import pyotp

    out = gw.cli("owners", "add", "erin", "--totp").stdout
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
    secret = uri.split("secret=", 1)[1].split("&", 1)[0]
    boot, links = unlock_request(gw, hostname="erin01")
    browser.open(links["erin"])
    assert not browser.exists("approve") and browser.exists("totp")
    browser.driver.find_element("id", "totp").send_keys("000000")
    browser.click("approve-totp")
    assert "Not done" in browser.status(lambda s: "Approved" in s or "Not done" in s)
    assert state(gw, boot) == protocol.STATE_PENDING
    totp_field = browser.driver.find_element("id", "totp")
    totp_field.clear()
    totp_field.send_keys(pyotp.TOTP(secret).now())
    browser.click("approve-totp")
    assert browser.status(lambda s: "Approved" in s or "Not done" in s).startswith("Approved")
    assert client.opened(boot, client.poll(gw.url, boot.created.request_id, wait=5)) == gw.secret
