"""Just enough HTTP/1.1 for the boot client: one server, small JSON bodies, bounded everything.

Why not http.client: it pulls in the email package (about 9 ms of imports on the host, half a
second and more under an emulated CPU at boot) to parse headers we read three of. What is
implemented: a request with Content-Length, and an answer framed by Content-Length, chunked
transfer coding or the connection's end; keep-alive. Anything else is a ``BadResponse``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from zkv.encoding import is_digits

if TYPE_CHECKING:  # config.py imports this module for Url; ssl loads only with the gateway client
    import ssl

MAX_LINE = 8190  # status line, header line, chunk-size line
MAX_HEADERS = 100


class BadResponse(OSError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class Disconnected(ConnectionError):
    """The server closed the connection before answering (a kept-alive one may be stale)."""


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, will_close: bool):
        self.status = status
        self.headers = headers  # names in lower case; a repeated header keeps its last value
        self.body = body
        self.will_close = will_close


class Url:
    """scheme://host[:port][/path] of an http(s) URL; ``valid`` is False for anything else."""

    def __init__(self, url: str) -> None:
        scheme, sep, rest = url.partition("://")
        self.scheme = scheme.lower()
        authority, slash, path = rest.partition("/")
        self.path = (slash + path).split("?", 1)[0].split("#", 1)[0]
        authority = authority.rpartition("@")[2]  # userinfo is never used; never sent either
        host, port = authority, ""
        if authority.startswith("["):  # [IPv6]:port
            host, _, port = authority[1:].partition("]")
            port = port.removeprefix(":")
        elif ":" in authority:
            host, _, port = authority.rpartition(":")
        self.host = host.lower()
        good_port = not port or (is_digits(port) and 0 < int(port) < 65536)
        self.port = int(port) if port and good_port else 443 if self.scheme == "https" else 80
        self.valid = bool(sep and self.scheme in ("http", "https") and self.host and good_port)


class Connection:
    """One connection to ``host:port`` (TLS when a context is given), opened on first use;
    ``verify`` sees the TLS socket after the handshake and may refuse it (a pinned key)."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        verify: Callable[[ssl.SSLSocket], None] | None = None,
    ) -> None:
        self.host, self.port, self.context, self.verify = host, port, context, verify
        self.sock: socket.socket | None = None
        self._buffer = b""

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        max_body: int,
    ) -> Response:
        if self.sock is None:
            self._open(timeout)
        assert self.sock is not None
        self.sock.settimeout(timeout)
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return self._response(max_body)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._buffer = b""
        if sock is not None:
            sock.close()

    # --- reading ----------------------------------------------------------------------------

    def _open(self, timeout: float) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if self.context is not None:
            try:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
                if self.verify is not None:
                    self.verify(sock)
            except BaseException:
                sock.close()
                raise
        self.sock = sock

    def _response(self, max_body: int) -> Response:
        first = self._line()
        if not first:
            raise Disconnected("the server closed the connection")
        version, _, rest = first.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise BadResponse("not an HTTP/1.x status line")
        headers: dict[str, str] = {}
        count = 0
        while line := self._line():
            count += 1
            if count > MAX_HEADERS:
                raise BadResponse("too many header lines")
            name, colon, value = line.partition(b":")
            if not colon:
                raise BadResponse("malformed header line")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        will_close = version == b"HTTP/1.0" or headers.get("connection", "").lower() == "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked(max_body)
        elif "content-length" in headers:
            length = headers["content-length"]
            if not is_digits(length) or int(length) > max_body:
                raise BadResponse("bad or too large Content-Length")
            body = self._exactly(int(length))
        else:
            body, will_close = self._until_close(max_body), True
        return Response(int(code), headers, body, will_close)

    def _chunked(self, max_body: int) -> bytes:
        body = b""
        while True:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise BadResponse("bad chunk size") from None
            if size == 0:
                while self._line():  # trailer fields, up to the blank line
                    pass
                return body
            if len(body) + size > max_body:
                raise BadResponse("answer too large")
            body += self._exactly(size)
            if self._line():
                raise BadResponse("chunk not followed by CRLF")

    def _line(self) -> bytes:
        """One line without its CRLF; b"" for an empty line or at the end of the stream."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise BadResponse("line too long")
            if not self._fill():
                if self._buffer:
                    raise BadResponse("connection closed mid-line")
                return b""
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > MAX_LINE:
            raise BadResponse("line too long")
        return line.rstrip(b"\r")

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise BadResponse("connection closed mid-body")
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _until_close(self, max_body: int) -> bytes:
        while len(self._buffer) <= max_body and self._fill():
            pass
        if len(self._buffer) > max_body:
            raise BadResponse("answer too large")
        data, self._buffer = self._buffer, b""
        return data

    def _fill(self) -> bool:
        assert self.sock is not None
        data = self.sock.recv(65536)
        self._buffer += data
        return bool(data)
