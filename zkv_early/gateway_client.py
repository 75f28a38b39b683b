"""HTTPS to the gateway with ssl and a minimal HTTP/1.1 (http11.py): small and fast to import in
an initramfs. The TLS context trusts only the configured CA file, or (pin_sha256) only the
pinned public key, or both when both are set (pinning.py).

One connection is kept and reused. ``abort()`` may be called from another thread: it shuts the
socket down, so a long-poll in progress returns at once (the race's way to cancel it).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from zkv import protocol
from zkv.errors import (
    ConfigError,
    GatewayBusy,
    GatewayError,
    GatewayRefused,
    GatewayUnreachable,
    ProtocolError,
    RateLimited,
    SecretShared,
)
from zkv_early import pinning
from zkv_early.http11 import BadResponse, Connection, Disconnected, Url
from zkv_early.race import Cancelled

T = TypeVar("T")

USER_AGENT = "zkv-early/1"


class GatewayClient:
    def __init__(
        self, url: str, ca_file: str | None, timeout: float, pins: tuple[str, ...] = ()
    ) -> None:
        parts = Url(url)
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.host
        self.port = parts.port
        self.base = parts.path.rstrip("/")
        self.timeout = timeout
        self.ca_file, self.pins = ca_file, pins
        self._context: ssl.SSLContext | None = None  # built on first use, in the gateway thread
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._aborted = False

    # --- the three calls of the unlock flow -----------------------------------------------------

    def challenge(self) -> protocol.Challenge:
        return self._call("POST", protocol.PATH_CHALLENGES, b"", 201, protocol.Challenge.from_json)

    def create(self, request: protocol.UnlockRequest) -> protocol.UnlockCreated:
        body = json.dumps(request.to_json()).encode()
        return self._call("POST", protocol.PATH_UNLOCK, body, 201, protocol.UnlockCreated.from_json)

    def poll(self, request_id: str, wait: int) -> protocol.PollResult:
        wait = max(0, min(wait, protocol.MAX_WAIT))
        path = f"{protocol.PATH_UNLOCK}/{request_id}?wait={wait}"
        return self._call("GET", path, None, 200, protocol.PollResult.from_json, wait)

    def ahead(self, request: protocol.AheadRequest) -> protocol.UnlockCreated:
        """`zkv reboot --approve-ahead` (zkv_admin/reboot.py); poll it with ``poll``."""
        body = json.dumps(request.to_json()).encode()
        return self._call("POST", protocol.PATH_AHEAD, body, 201, protocol.UnlockCreated.from_json)

    def heartbeat(self, beat: protocol.Heartbeat) -> protocol.HeartbeatAnswer:
        """`zkv heartbeat` (zkv_admin/heartbeat.py): the same TLS trust as the boot."""
        body = json.dumps(beat.to_json()).encode()
        return self._call(
            "POST", protocol.PATH_HEARTBEAT, body, 200, protocol.HeartbeatAnswer.from_json
        )

    # --- repository key rotation (zkv_admin/repokey.py), the same TLS trust -------------------

    def rotation(self, request: protocol.RotationRequest) -> protocol.UnlockCreated:
        body = json.dumps(request.to_json()).encode()
        path = protocol.PATH_ROTATIONS
        return self._call("POST", path, body, 201, protocol.UnlockCreated.from_json)

    def poll_rotation(self, request_id: str, wait: int) -> protocol.PollResult:
        wait = max(0, min(wait, protocol.MAX_WAIT))
        path = f"{protocol.PATH_ROTATIONS}/{request_id}?wait={wait}"
        return self._call("GET", path, None, 200, protocol.decision_from_json, wait)

    def deliver(self, delivery: protocol.RepositoryKeyDelivery) -> protocol.RepositoryKeyStatus:
        body = json.dumps(delivery.to_json()).encode()
        path = f"{protocol.PATH_ROTATIONS}/{delivery.request_id}/key"
        return self._call("POST", path, body, 200, protocol.RepositoryKeyStatus.from_json)

    def key_status(self, query: protocol.RepositoryKeyQuery) -> protocol.RepositoryKeyStatus:
        body = json.dumps(query.to_json()).encode()
        path = protocol.PATH_REPOSITORY_KEY
        return self._call("POST", path, body, 200, protocol.RepositoryKeyStatus.from_json)

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        expected: int,
        parse: Callable[[Any], T],
        wait: float = 0,
    ) -> T:
        """One exchange: the answer parsed when its status is ``expected``, else the error."""
        status, answer = self._exchange(method, path, body, wait + self.timeout)
        if status != expected:
            raise _status_error(status, answer)
        return _decode(parse, answer)

    # --- plumbing ---------------------------------------------------------------------------------

    def _connection(self) -> Connection:
        with self._lock:
            if self._aborted:
                raise Cancelled
            if self._conn is None:
                context, verify = None, None
                if self.scheme == "https":
                    # A bad CA file fails the gateway side only; the prompt still runs.
                    context = self._context = self._context or _tls_context(self.ca_file, self.pins)
                    if self.pins:
                        verify = self._check_pin
                self._conn = Connection(self.host, self.port, context, verify)
            return self._conn

    def _exchange(
        self, method: str, path: str, body: bytes | None, timeout: float
    ) -> tuple[int, Any]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: retry once
            conn = self._connection()
            try:
                response = conn.request(
                    method, self.base + path, headers, body, timeout, protocol.MAX_BODY
                )
                if response.will_close:
                    self._drop()
            except (Disconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if self._aborted:
                    raise Cancelled from None
                if attempt == 1:
                    continue
                raise GatewayUnreachable(url=self.url, detail=_describe(exc)) from None
            except BadResponse as exc:
                self._drop()
                if self._aborted:
                    raise Cancelled from None
                raise ProtocolError(str(exc)) from None
            except OSError as exc:
                self._drop()
                if self._aborted:
                    raise Cancelled from None
                raise GatewayUnreachable(url=self.url, detail=_describe(exc)) from None
            return response.status, _json(response.body)
        raise AssertionError("unreachable")

    def _check_pin(self, sock: ssl.SSLSocket) -> None:
        pinning.check(sock, self.pins)

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Called from another thread: make a pending request fail now, and every later one."""
        with self._lock:
            self._aborted = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._drop()


def _tls_context(ca_file: str | None, pins: tuple[str, ...]) -> ssl.SSLContext:
    if not ca_file and not pins:  # config.validate says so first; never the system's by default
        raise ConfigError("no CA file and no pinned key for the gateway")
    if not ca_file:
        # The pinned key is the trust: no CA vouches for it (a self-signed gateway works).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the gateway CA file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _decode(parse: Callable[[Any], T], answer: Any) -> T:
    try:
        return parse(answer)
    except protocol.ProtocolViolation as exc:
        raise ProtocolError(str(exc)) from None


def _status_error(status: int, answer: Any) -> GatewayError:
    code = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(code, str) or code not in protocol.ERROR_STATUS:
        code = None  # the gateway's own words reach the console only as codes we know
    if status == 401:
        return GatewayRefused()
    if status == 429:
        return RateLimited()
    if status == 409 and code == "secret_shared":
        return SecretShared()
    if status == 400:
        return ProtocolError(f"the gateway rejected the request as malformed ({code or status})")
    if status in (502, 503, 504):  # the gateway's own 503, or a proxy's while it restarts
        return GatewayBusy(detail=code or str(status))
    return GatewayError(f"HTTP status {status}" + (f" ({code})" if code else ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pinning.PinMismatch):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
