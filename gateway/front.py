"""gunicorn's gthread worker, except that only a complete request takes a thread.

gthread reads a request in a pool thread with a blocking socket: a client that sends half a
request line and stalls (slowloris) holds that thread until it hangs up, and one that sends
nothing holds it 5 s. gunicorn's ``timeout`` is the worker heartbeat, not a read timeout, and a
socket timeout would still hold the thread that long. So here the thread takes only the bytes
that have arrived, without waiting; while the request is incomplete the connection goes back to
the main loop's poller (gthread's own "deferred" path), where it costs a descriptor, not a thread.
A request still incomplete READ_TIMEOUT after its first byte, or a connection silent that long
(gunicorn's ``keepalive``, which server.py sets to READ_TIMEOUT), is closed.

Plain HTTP only: TLS ends at the reverse proxy (server.py configures no certificate).
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

from gunicorn.workers import gthread

from zkv import protocol

_CHUNK = 65536
_HEAD_LIMIT = 65536  # a head longer than this is handed on for gunicorn's parser to refuse
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,12})[ \t]*\r\n")


def complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole request (or more than we wait for)."""
    head, end, body = data.partition(b"\r\n\r\n")
    if not end:
        return len(data) > _HEAD_LIMIT
    head = head.lower() + b"\r\n"
    if b"\r\ntransfer-encoding:" in head:
        return _chunks_complete(body)
    length = _LENGTH.search(head)
    # Too long a body: the app refuses it without reading it.
    return not length or len(body) >= int(length[1]) or int(length[1]) > protocol.MAX_BODY


def _chunks_complete(body: bytes) -> bool:
    """Whether a chunked body has arrived up to its last chunk and trailers."""
    at = 0
    while (end := body.find(b"\r\n", at)) >= 0:
        try:
            size = int(body[at:end].partition(b";")[0].strip(), 16)
        except ValueError:
            return True  # malformed: gunicorn's parser refuses it
        if size == 0:
            return b"\r\n\r\n" in body[end:]
        if size > protocol.MAX_BODY:
            return True  # the app refuses it
        at = end + 2 + size + 2
    return False


class Worker(gthread.ThreadWorker):  # type: ignore[misc]
    def handle(self, conn: Any) -> Any:
        try:
            conn.init()
            ready = self._arrived(conn)
        except OSError:
            ready = None
        if ready is None:
            return False  # gthread closes it
        if not ready:
            # A stopping worker would put a deferred connection back at once: close it.
            return gthread._DEFER if self.alive else False
        conn.data_ready = True  # gthread must not wait for data either
        return super().handle(conn)

    def _arrived(self, conn: Any) -> bool | None:
        unreader = conn.parser.unreader
        data, closed = unreader.take_buffered(), False
        try:
            while len(data) <= _HEAD_LIMIT + protocol.MAX_BODY:
                chunk = conn.sock.recv(_CHUNK, socket.MSG_DONTWAIT)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except BlockingIOError:
            pass
        finally:
            unreader.unread(data)
        if not data:
            return None if closed else False
        now = time.monotonic()
        started = getattr(conn, "zkv_started", None) or now
        ready: bool | None = True if closed else complete(data)  # the parser reports a cut-off
        if ready is False and now - started > self.cfg.keepalive:
            ready = None
        conn.zkv_started = started if ready is False else None
        return ready
