"""The boot client's minimal HTTP/1.1 against a raw socket server sending exactly given bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from zkv_early.http11 import BadResponse, Connection, Disconnected, Url


class Raw:
    """Accepts connections; each request read gets the next canned answer. None: close the
    connection instead of answering, or right after the answer before it."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.server.accept()
            with conn:
                while self.answers:
                    data = conn.recv(65536)
                    if not data:
                        break
                    self.requests.append(data)
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                    if self.answers and self.answers[0] is None:  # close right after answering
                        self.answers.pop(0)
                        break


@pytest.fixture
def serve() -> Iterator[type[Raw]]:
    yield Raw


def get(raw: Raw, max_body: int = 1000) -> tuple[int, bytes, bool]:
    conn = Connection("127.0.0.1", raw.port, None)
    try:
        r = conn.request("GET", "/x", {"Accept": "application/json"}, None, 5, max_body)
        return r.status, r.body, r.will_close
    finally:
        conn.close()


def test_content_length_and_the_request_sent(serve: type[Raw]) -> None:
    raw = serve([b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}"])
    conn = Connection("127.0.0.1", raw.port, None)
    r = conn.request("POST", "/v1/x", {"Content-Type": "application/json"}, b'{"a":1}', 5, 100)
    assert (r.status, r.body, r.will_close, r.headers["x-a"]) == (201, b"{}", False, "b")
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /v1/x HTTP/1.1"
    assert b"Content-Length: 7" in head and b"Host: 127.0.0.1:" in head
    assert body == b'{"a":1}'
    conn.close()


def test_chunked_with_extension_and_trailer(serve: type[Raw]) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    )
    assert get(serve([answer])) == (200, b"abcde", False)


def test_body_until_close_and_http10(serve: type[Raw]) -> None:
    assert get(serve([b"HTTP/1.0 200 OK\r\n\r\nhello", None])) == (200, b"hello", True)


def test_keep_alive_reuses_the_connection(serve: type[Raw]) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"
    raw = serve([ok, ok])
    conn = Connection("127.0.0.1", raw.port, None)
    for _ in range(2):
        assert conn.request("GET", "/", {}, None, 5, 10).body == b"1"
    conn.close()
    assert len(raw.requests) == 2


def test_a_closed_kept_alive_connection_is_disconnected(serve: type[Raw]) -> None:
    with pytest.raises(Disconnected):
        get(serve([None]))


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n".encode("latin-1"),  # isdigit() says yes
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9999\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 1001,
    ],
)
def test_malformed_or_oversized_answers(serve: type[Raw], answer: bytes) -> None:
    with pytest.raises(BadResponse):
        get(serve([answer, None]))


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path", "valid"),
    [
        ("https://zkv.example.net:8443/base/", "https", "zkv.example.net", 8443, "/base/", True),
        ("https://GW.example.net", "https", "gw.example.net", 443, "", True),
        ("http://127.0.0.1/x?y#z", "http", "127.0.0.1", 80, "/x", True),
        ("https://[fd00::1]:9/", "https", "fd00::1", 9, "/", True),
        ("https://[fd00::1]/", "https", "fd00::1", 443, "/", True),
        ("https://user:pw@host/", "https", "host", 443, "/", True),
        ("ftp://host/", "ftp", "host", 80, "/", False),
        ("https://host:99999/", "https", "host", 443, "/", False),
        ("https://host:port/", "https", "host", 443, "/", False),
        ("https://host:٤٤٣/", "https", "host", 443, "/", False),  # digits, but not ASCII ones
        ("https:///path", "https", "", 443, "/path", False),
        ("host:443", "host:443", "", 80, "", False),
    ],
)
def test_url(url: str, scheme: str, host: str, port: int, path: str, valid: bool) -> None:
    u = Url(url)
    assert (u.scheme, u.host, u.port, u.path, u.valid) == (scheme, host, port, path, valid)
