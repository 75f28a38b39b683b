"""Load benchmark for the gateway (not a test): N simulated hosts against one gunicorn gateway
on 127.0.0.1 with sqlite, each doing create -> long-poll -> (owner approves) -> release.

    python3 -m bench.gateway_load [--hosts 1000] [--concurrency 10,50] [--write-docs]

Each concurrency level is a separate run of all hosts: 10 in flight is a fleet rebooting
together at roughly the gateway's pace (the budget applies there); 50 is a burst well past this
2-core machine's capacity, where latency is queueing (Little's law), reported for honesty.

The owner's approvals go through the same code path as `zkv-gateway approve` (the gateway's
service layer on the shared database, from this process). Prints throughput and latency
percentiles; --write-docs puts them into docs/gateway.md between the bench markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from gateway.config import load
from gateway.errors import SecretUnavailable
from gateway.notify import ConsoleNotifier
from gateway.service import Gateway
from gateway.store import Store
from tests.harness.gateway import REPO, running_gateway
from zkv import crypto, protocol

DOCS = REPO / "docs" / "gateway.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


class _NoSource:
    def get(self, name: str | None) -> bytes:
        raise SecretUnavailable("bench owner process never releases")


class Timings:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def time(self, name: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = call()
        with self.lock:
            self.samples.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def row(self, name: str) -> str:
        values = sorted(self.samples[name])
        p = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
        return (
            f"| {name} | {len(values)} | {statistics.mean(values) * 1000:.1f} | {p(0.5):.1f} "
            f"| {p(0.99):.1f} | {values[-1] * 1000:.1f} |"
        )


def one_host(url: str, owner: Gateway, private: bytes, t: Timings) -> None:
    session = requests.Session()
    eph_private, eph_public = crypto.x25519_generate()
    req = protocol.UnlockRequest.create(private, "bench", ["tank/data"], eph_public)
    started = time.perf_counter()
    response = t.time(
        "create (POST)",
        lambda: session.post(url + protocol.PATH_UNLOCK, json=req.to_json(), timeout=30),
    )
    assert response.status_code == 201, response.text
    created = protocol.UnlockCreated.from_json(response.json())
    poll_url = f"{url}{protocol.PATH_UNLOCK}/{created.request_id}"
    pending = t.time("poll wait=0", lambda: session.get(poll_url + "?wait=0", timeout=30))
    assert pending.json() == {"state": "pending"}
    threading.Timer(
        0.05,
        lambda: t.time(
            "owner approve", lambda: owner.decide(created.request_id, created.pin, approve=True)
        ),
    ).start()
    for _ in range(5):  # bounded: approval comes within a second
        answer = session.get(poll_url + "?wait=25", timeout=60).json()
        if answer["state"] != "pending":
            break
    result = protocol.PollResult.from_json(answer)
    assert result.release is not None
    protocol.open_release(created.request_id, eph_private, result.release)
    with t.lock:
        t.samples.setdefault("end to end", []).append(time.perf_counter() - started)


def run(hosts: int, concurrency: int, workers: int, threads: int) -> str:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_gateway(
            Path(tmp), workers=workers, threads=threads, settings={"POLL_INTERVAL": 0.25}
        ) as gw,
    ):
        owner_settings = load(environ={"CONFIG_FILE": str(gw.config_file)})
        store = Store(owner_settings.SQLALCHEMY_DATABASE_URI)
        owner = Gateway(owner_settings, store, _NoSource(), ConsoleNotifier())
        keys = [crypto.ed25519_generate()[0] for _ in range(hosts)]
        session = requests.Session()
        for i, private in enumerate(keys):
            token, invite, _ = owner.invite(f"host{i}", 3600)
            gw.put_secret(invite.secret_name, gw.secret)
            enrol = protocol.EnrollRequest.create(f"host{i}", private, token)
            assert session.post(gw.url + protocol.PATH_HOSTS, json=enrol.to_json()).ok
        t = Timings()
        begin = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(one_host, gw.url, owner, k, t) for k in keys]:
                future.result()
        elapsed = time.perf_counter() - begin
    rows = "\n".join(
        t.row(name) for name in ("create (POST)", "poll wait=0", "owner approve", "end to end")
    )
    return (
        f"{hosts} hosts, {concurrency} at a time, gunicorn {workers} workers x {threads} threads, "
        f"sqlite, {os.cpu_count()} cores ({platform.python_implementation()} "
        f"{platform.python_version()}), {time.strftime('%Y-%m-%d')}.\n\n"
        f"Throughput: **{hosts / elapsed:.1f} complete unlocks/s** ({elapsed:.1f} s in all).\n\n"
        "| call | n | mean ms | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n"
        f"{rows}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--concurrency", default="10,50", help="comma-separated levels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    levels = [min(int(c), 200) for c in args.concurrency.split(",")]
    report = "\n".join(
        run(min(args.hosts, 10000), level, args.workers, args.threads) for level in levels
    )
    print(report)
    if args.write_docs:
        text = DOCS.read_text()
        head, rest = text.split(START, 1)
        DOCS.write_text(f"{head}{START}\n{report}{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
