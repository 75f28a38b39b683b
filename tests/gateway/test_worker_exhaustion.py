"""Slow or idle clients and long-poll floods must not take every gunicorn thread (issue 16):
/healthz and a real protocol request still answer fast, excess long-polls are refused at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import protocol

THREADS = 4  # a small pool, so a handful of sockets is "more than the server has threads"
FAST = 2.0  # seconds: what "answers fast" means here


@contextmanager
def sockets(gw: RunningGateway, payloads: list[bytes]) -> Iterator[list[socket.socket]]:
    """One connection per payload, each sending it and then stalling; all closed on exit."""
    port = int(gw.url.rsplit(":", 1)[1])
    with ExitStack() as stack:
        opened = []
        for payload in payloads:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            if payload:
                sock.sendall(payload)
            opened.append(sock)
        time.sleep(0.5)  # let the server take them up
        yield opened


def get(gw: RunningGateway, path: str) -> requests.Response:
    return requests.get(gw.url + path, timeout=FAST)  # before the fix: ReadTimeout


def answers_fast(gw: RunningGateway) -> None:
    started = time.monotonic()
    assert get(gw, protocol.PATH_HEALTH).status_code == 200
    unknown = get(gw, f"{protocol.PATH_UNLOCK}/{'0' * 32}")  # a protocol request, not our id
    assert unknown.status_code == 401 and unknown.json() == {"error": "unauthorized"}
    assert time.monotonic() - started < FAST


def test_slowloris_and_idle_sockets_do_not_pin_threads(tmp_path: Path) -> None:
    partial = [b"GET /healthz HTTP/1.1\r\nHost: gw\r\n", b"POST /v1/hosts HTTP/1.1\r\nHost:", b"GE"]
    payloads = partial * THREADS + [b""] * THREADS  # idle ones send nothing at all
    with running_gateway(tmp_path, threads=THREADS) as gw, sockets(gw, payloads):
        answers_fast(gw)
        time.sleep(1.5)
        answers_fast(gw)


def test_long_poll_flood_is_bounded(tmp_path: Path) -> None:
    with running_gateway(tmp_path, threads=THREADS) as gw:
        host = client.Host()
        gw.admit(host)
        request_id = client.unlock(gw.url, host).created.request_id
        path = f"{protocol.PATH_UNLOCK}/{request_id}?wait=25"
        with sockets(gw, [f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()] * 3 * THREADS):
            answers_fast(gw)
            excess = get(gw, path)
            assert excess.status_code == 429 and excess.json() == {"error": "rate_limited"}
