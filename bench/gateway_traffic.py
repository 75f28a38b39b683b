"""Who sends what in the gateway load benchmark (bench/gateway_load.py runs it):

- ``boot``: one real host booting, as the boot client does it (zkv_early's own HTTP client, its
  retry policy for 429/503, a deadline): a challenge and a signed create (a fresh challenge for
  every attempt), a status poll (wait=0), long-polls until the owner has approved, then the
  sealed secret opened with the boot's ephemeral key;
- ``Owner``: the owner approving each request a moment after it was made, through the
  gateway's service layer (what `zkv-gateway approve` runs);
- ``Outsider``: someone holding no key and no invite, flooding enrolments with self-made keys
  and made-up tokens, polls of random request ids and signed requests from unknown keys, at a
  fixed rate per kind (the signed ones with a real challenge fetched first, as a client would);
- ``HealthProbe``: a monitor asking /healthz ten times a second.
"""

from __future__ import annotations

import functools
import http.client
import json
import queue
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.errors import GatewayCliError
from gateway.service import Gateway
from zkv import crypto, protocol
from zkv.errors import GatewayError
from zkv_early.gateway_client import GatewayClient
from zkv_early.gateway_contender import RETRY_MAX, TRANSIENT

T = TypeVar("T")
DATASETS = ("tank/data",)
REQUEST_TIMEOUT = 15.0  # the boot client's default request_timeout (zkv_early/config.py)


class Timings:
    """Latency samples per call name, from many threads."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.samples.setdefault(name, []).append(seconds)

    def time(self, name: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = call()
        self.add(name, time.perf_counter() - start)
        return result

    def percentiles(self, name: str) -> tuple[int, float, float, float, float] | None:
        """(n, p50, p95, p99, mean) in milliseconds, or None without samples."""
        values = sorted(self.samples.get(name, []))
        if not values:
            return None

        def at(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))] * 1000

        return len(values), at(0.5), at(0.95), at(0.99), statistics.mean(values) * 1000


@dataclass
class Outcome:
    host_id: str
    unlocked: bool = False
    why: str = ""  # what stopped it, when it did not unlock
    refusals: Counter[str] = field(default_factory=Counter)  # "create RateLimited" -> count


@dataclass(frozen=True)
class BenchHost:
    hostname: str
    private_key: bytes

    @property
    def host_id(self) -> str:
        return protocol.host_id_of(crypto.ed25519_public(self.private_key))


class Owner:
    """Approves each request ``delay`` seconds after it was made, in a few threads."""

    def __init__(self, service: Gateway, delay: float, timings: Timings, threads: int = 4):
        self.service, self.delay, self.timings = service, delay, timings
        self._queue: queue.Queue[tuple[float, protocol.UnlockCreated] | None] = queue.Queue()
        self._approved: dict[str, float] = {}
        self._done: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def approve_later(self, created: protocol.UnlockCreated) -> None:
        with self._lock:
            self._done[created.request_id] = threading.Event()
        self._queue.put((time.monotonic() + self.delay, created))

    def approved_at(self, request_id: str, timeout: float = 5.0) -> float | None:
        """When the owner's approval returned (waits briefly: a release can overtake it)."""
        with self._lock:
            done = self._done.get(request_id)
        if done is None or not done.wait(timeout):
            return None
        with self._lock:
            return self._approved.get(request_id)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            due, created = item
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                decide = self.service.decide
                self.timings.time(
                    "owner approve",
                    functools.partial(decide, created.request_id, created.pin, approve=True),
                )
                with self._lock:
                    self._approved[created.request_id] = time.monotonic()
            except GatewayCliError as exc:
                self.failures[exc.message] += 1
            finally:
                with self._lock:
                    self._done[created.request_id].set()


def boot(
    url: str, host: BenchHost, owner: Owner, secret: bytes, deadline: float, t: Timings
) -> Outcome:
    """One host's unlock, from its boot to the opened secret or to ``deadline`` (monotonic)."""
    outcome = Outcome(host.host_id)
    client = GatewayClient(url, None, REQUEST_TIMEOUT)
    started = time.monotonic()
    try:
        eph_private, eph_public = crypto.x25519_generate()
        created = _create(client, host, eph_public, deadline, outcome, t)
        if created is None:
            return outcome
        pending = t.time("poll wait=0", lambda: client.poll(created.request_id, 0))
        if pending.state != protocol.STATE_PENDING:
            outcome.why = f"status poll answered {pending.state}"
            return outcome
        owner.approve_later(created)
        release = _wait_for_release(client, created.request_id, deadline, outcome)
        if release is None:
            return outcome
        received = time.monotonic()
        approved = owner.approved_at(created.request_id)
        if approved is not None:
            t.add("approval to release", max(0.0, received - approved))
        if protocol.open_release(created.request_id, eph_private, release) != secret:
            outcome.why = "released a different secret"
            return outcome
        t.add("end to end", time.monotonic() - started)
        outcome.unlocked = True
        return outcome
    except GatewayError as exc:  # the ones the boot client gives up on (401, 400, ...)
        outcome.refusals[f"{type(exc).__name__}"] += 1
        outcome.why = type(exc).__name__
        return outcome
    finally:
        client.close()


def _create(
    client: GatewayClient,
    host: BenchHost,
    eph_public: bytes,
    deadline: float,
    outcome: Outcome,
    t: Timings,
) -> protocol.UnlockCreated | None:
    delay = 1.0  # the boot client's backoff (gateway_contender.py): 1, 2, 4 ... RETRY_MAX s
    while True:
        try:
            # A fresh challenge for every attempt: the gateway accepts each one once.
            challenge = t.time("challenge", client.challenge).challenge
            request = protocol.UnlockRequest.create(
                host.private_key, host.hostname, DATASETS, eph_public, challenge
            )
            return t.time("create", functools.partial(client.create, request))
        except TRANSIENT as exc:
            outcome.refusals[f"create {type(exc).__name__}"] += 1
            if time.monotonic() + delay > deadline:
                outcome.why = f"create: {type(exc).__name__} until the deadline"
                return None
        time.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


def _wait_for_release(
    client: GatewayClient, request_id: str, deadline: float, outcome: Outcome
) -> crypto.Sealed | None:
    failures = 0
    while (left := deadline - time.monotonic()) > 0:
        try:
            result = client.poll(request_id, max(1, int(min(protocol.MAX_WAIT, left))))
        except TRANSIENT as exc:
            outcome.refusals[f"long-poll {type(exc).__name__}"] += 1
            failures += 1
            time.sleep(min(RETRY_MAX, 2.0**failures, max(0.0, left)))
            continue
        if result.state == protocol.STATE_APPROVED and result.release is not None:
            return result.release
        if result.state != protocol.STATE_PENDING:
            outcome.why = f"request {result.state}"
            return None
    outcome.why = "no release before the deadline"
    return None


class _Http:
    """One kept-alive connection to one gateway; a status code, or -1 when the call failed."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> int:
        return self.exchange(method, path, body)[0]

    def exchange(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            answer = response.read()
            if response.will_close:
                self.close()
            return response.status, answer
        except (OSError, http.client.HTTPException):
            self.close()
            return -1, b""

    def challenge(self) -> str:
        """A challenge from the gateway, as any client gets one (a made-up one if refused)."""
        status, answer = self.exchange("POST", protocol.PATH_CHALLENGES)
        if status == 201:
            try:
                return protocol.Challenge.from_json(json.loads(answer)).challenge
            except (ValueError, protocol.ProtocolViolation):
                pass
        return secrets.token_hex(40)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _paced(rate: float, stop: threading.Event) -> Iterator[None]:
    """Yield ``rate`` times a second until ``stop``, without bursts to catch up."""
    interval, due = 1.0 / rate, time.monotonic()
    while not stop.is_set():
        yield
        due = max(due + interval, time.monotonic())
        stop.wait(max(0.0, due - time.monotonic()))


def _enrolment(http_: _Http) -> tuple[str, str, Any]:
    private, _ = crypto.ed25519_generate()
    name = f"intruder{secrets.randbelow(10**6)}"
    token = protocol.new_invite_token()  # well-formed, but no invite of the owner's
    req = protocol.EnrollRequest.create(name, private, token, http_.challenge())
    return "POST", protocol.PATH_HOSTS, req.to_json()


def _bogus_poll(http_: _Http) -> tuple[str, str, Any]:
    wait = secrets.choice((0, protocol.MAX_WAIT))
    return "GET", f"{protocol.PATH_UNLOCK}/{secrets.token_hex(16)}?wait={wait}", None


def _unknown_key(http_: _Http) -> tuple[str, str, Any]:
    private, _ = crypto.ed25519_generate()
    _, eph_public = crypto.x25519_generate()
    req = protocol.UnlockRequest.create(private, "web01", DATASETS, eph_public, http_.challenge())
    return "POST", protocol.PATH_UNLOCK, req.to_json()


ATTACKS: dict[str, Callable[[_Http], tuple[str, str, Any]]] = {
    "enrolment, self-made key": _enrolment,
    "poll of a random request id": _bogus_poll,
    "signed create, unknown key": _unknown_key,
}


class Looping:
    """Threads calling ``step`` until stopped."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def spawn(self, step: Callable[[], None], rate: float) -> None:
        def loop() -> None:
            for _ in _paced(rate, self.stop_event):
                step()

        self.threads.append(threading.Thread(target=loop, daemon=True))
        self.threads[-1].start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join()


class Outsider(Looping):
    """ATTACKS at ``rate`` calls/s in all (a third each), spread over the gateways' URLs."""

    def __init__(self, urls: list[str], rate: float, threads_per_kind: int = 2) -> None:
        super().__init__()
        self.answers: dict[str, Counter[int]] = {kind: Counter() for kind in ATTACKS}
        self._lock = threading.Lock()
        for kind, make in ATTACKS.items():
            for i in range(threads_per_kind):
                one = functools.partial(self._one, kind, make, _Http(urls[i % len(urls)]))
                self.spawn(one, rate / len(ATTACKS) / threads_per_kind)

    def _one(self, kind: str, make: Callable[[_Http], tuple[str, str, Any]], http_: _Http) -> None:
        status = http_.call(*make(http_))
        with self._lock:
            self.answers[kind][status] += 1


class HealthProbe(Looping):
    """GET /healthz ten times a second on each gateway, timed."""

    def __init__(self, urls: list[str], timings: Timings, rate: float = 10.0) -> None:
        super().__init__()
        self.answers: Counter[int] = Counter()
        self._lock = threading.Lock()
        for url in urls:
            self.spawn(functools.partial(self._one, _Http(url), timings), rate)

    def _one(self, http_: _Http, timings: Timings) -> None:
        start = time.perf_counter()
        status = http_.call("GET", protocol.PATH_HEALTH)
        if status == 200:
            timings.add("healthz", time.perf_counter() - start)
        with self._lock:
            self.answers[status] += 1
