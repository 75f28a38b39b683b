"""The boot client's HTTPS layer against a local TLS stub: trust, status mapping, cancelling."""

from __future__ import annotations

import io
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.unit.test_early_approval import gateway_flow, host_files, sealed
from tests.unit.test_early_main import CONTROLS
from tests.unit.test_early_net import FakeClock
from zkv import crypto, protocol
from zkv.errors import (
    ApprovalDenied,
    ConfigError,
    GatewayBusy,
    GatewayError,
    GatewayRefused,
    GatewayUnreachable,
    ProtocolError,
    RateLimited,
)
from zkv_early.console import Console
from zkv_early.gateway_client import GatewayClient
from zkv_early.race import Cancelled

RID = "cd" * 16


class Stub(BaseHTTPRequestHandler):
    """Answers from ``server.answers[path] = (status, body)``, or a list of them given out in
    turn (the last one stays); a ``None`` body blocks (a poll that nobody answers) until the
    server's ``release`` event is set."""

    server: Any

    def _answer(self) -> None:
        answer = self.server.answers.get(self.path.split("?")[0], (404, {"error": "x"}))
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        status, body = answer
        self.server.seen.append((self.command, self.path))
        if body is None:
            self.server.release.wait(30)
            return
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[Any, str, Path]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.answers, server.seen, server.release = {}, [], threading.Event()
    server.answers[protocol.PATH_CHALLENGES] = (201, {"challenge": "ab" * 40, "now": 0})
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"https://localhost:{server.server_address[1]}", ca_file
    server.release.set()
    server.shutdown()
    server.server_close()


def request() -> protocol.UnlockRequest:
    private, _ = crypto.ed25519_generate()
    _, ephemeral = crypto.x25519_generate()
    return protocol.UnlockRequest.create(private, "nas", ["rpool"], ephemeral, "ab" * 40)


def test_create_and_poll_over_tls(tls: tuple[Any, str, Path]) -> None:
    server, url, ca_file = tls
    server.answers[protocol.PATH_UNLOCK] = (
        201,
        {"request_id": RID, "pin": "123456", "expires_at": 2_000_000_000},
    )
    server.answers[f"{protocol.PATH_UNLOCK}/{RID}"] = (200, {"state": "pending"})
    client = GatewayClient(url, str(ca_file), 5)
    assert client.challenge() == protocol.Challenge("ab" * 40, 0)
    created = client.create(request())
    assert created.pin == "123456"
    assert client.poll(RID, 99).state == "pending"
    assert server.seen[-1] == ("GET", f"{protocol.PATH_UNLOCK}/{RID}?wait={protocol.MAX_WAIT}")
    client.close()


def test_untrusted_certificate(tls: tuple[Any, str, Path]) -> None:
    _server, url, _ca = tls
    client = GatewayClient(url, "/etc/ssl/certs/ca-certificates.crt", 5)
    with pytest.raises(GatewayUnreachable, match="not trusted"):
        client.create(request())


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"error": "unauthorized"}, GatewayRefused),
        (429, {"error": "rate_limited"}, RateLimited),
        (503, {"error": "approver_unavailable"}, GatewayBusy),
        (502, b"<html>Bad Gateway</html>", GatewayBusy),  # a proxy in front, while it restarts
        (400, {"error": "bad_request"}, ProtocolError),
        (201, b"not json", ProtocolError),
        (201, {"request_id": "short", "pin": "1", "expires_at": 1}, ProtocolError),
    ],
)
def test_answers_become_typed_errors(
    tls: tuple[Any, str, Path], status: int, body: Any, error: type[Exception]
) -> None:
    server, url, ca_file = tls
    server.answers[protocol.PATH_UNLOCK] = (status, body)
    with pytest.raises(error):
        GatewayClient(url, str(ca_file), 5).create(request())


def test_what_the_gateway_says_reaches_the_console_without_control_characters(
    tls: tuple[Any, str, Path],
) -> None:
    server, url, ca_file = tls
    server.answers[protocol.PATH_UNLOCK] = (503, {"error": "\x1b[2J\x1b[Hzkv: approved\r\n"})
    with pytest.raises(GatewayError) as refused:
        GatewayClient(url, str(ca_file), 5).create(request())
    out = io.StringIO()
    Console(out).say(refused.value.message)
    assert out.getvalue().count("\n") == 1 and not set(out.getvalue()[:-1]) & set(CONTROLS)


def test_429_and_503_are_retried_with_backoff_within_the_deadline(
    tls: tuple[Any, str, Path], tmp_path: Path
) -> None:
    """The gateway contender with this client: busy answers are waited out, not the end."""
    server, url, ca_file = tls
    busy = [(429, {"error": "rate_limited"}), (503, {"error": "approver_unavailable"})]
    created = {"request_id": RID, "pin": "123456", "expires_at": 600}
    server.answers[protocol.PATH_UNLOCK] = [*busy, (201, created)]
    server.answers[f"{protocol.PATH_UNLOCK}/{RID}"] = [*busy, (200, {"state": "denied"})]
    host_files(tmp_path)
    flow, out = gateway_flow(tmp_path, GatewayClient(url, str(ca_file), 5), FakeClock())
    with pytest.raises(ApprovalDenied):
        flow.run(sealed(tmp_path), threading.Event())
    assert [path for _method, path in server.seen if "?" not in path] == [
        protocol.PATH_CHALLENGES,
        protocol.PATH_UNLOCK,
    ] * 3
    assert [method for method, path in server.seen if "?" in path] == ["GET"] * 3
    text = out.getvalue()
    assert "rate limiting this host; retrying in 1 s" in text
    assert "(approver_unavailable); retrying in 2 s" in text and "PIN 123456" in text


def test_busy_until_the_deadline(tls: tuple[Any, str, Path], tmp_path: Path) -> None:
    server, url, ca_file = tls
    server.answers[protocol.PATH_UNLOCK] = (429, {"error": "rate_limited"})
    host_files(tmp_path)
    client = GatewayClient(url, str(ca_file), 5)
    flow, _out = gateway_flow(tmp_path, client, FakeClock(), total=20)
    with pytest.raises(RateLimited):
        flow.run(sealed(tmp_path), threading.Event())
    creates = [path for _method, path in server.seen if path == protocol.PATH_UNLOCK]
    assert 3 <= len(creates) <= 6  # 1 + 2 + 4 + 8 s of backoff fit in 20 s


def test_nothing_listening() -> None:
    with pytest.raises(GatewayUnreachable):
        GatewayClient("http://127.0.0.1:9", None, 2).poll(RID, 1)


def test_abort_ends_a_pending_long_poll_at_once(tls: tuple[Any, str, Path]) -> None:
    server, url, ca_file = tls
    server.answers[f"{protocol.PATH_UNLOCK}/{RID}"] = (200, None)  # never answered
    client = GatewayClient(url, str(ca_file), 5)
    outcome: list[BaseException] = []

    def poll() -> None:
        try:
            client.poll(RID, 25)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    client.abort()
    thread.join(5)
    assert time.monotonic() - started < 1
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    with pytest.raises(Cancelled):  # and every later call
        client.poll(RID, 1)


def test_a_bad_ca_file_fails_the_gateway_side_only_when_used() -> None:
    client = GatewayClient("https://localhost:1", "/nonexistent/ca.pem", 2)  # no error yet
    with pytest.raises(ConfigError, match="CA file"):
        client.challenge()
