"""Load benchmark for the gateway (not a test): a fleet booting at once, with and without an
outsider flooding the gateway, on sqlite (one gunicorn process) and on PostgreSQL (two gunicorn
processes on two ports sharing one database, the hosts split between them).

    python3 -m bench.gateway_load [--hosts 1000] [--spread 60] [--backends sqlite,postgres]
                                  [--attack-rate 60] [--set NAME=VALUE ...] [--write-docs]

Every host is enrolled and approved before the clock starts (through the store, as
an invite's enrolment leaves it), then boots at its moment of the spread: a challenge and
a signed create, a status poll, long-polls until the owner approves (through the service
layer, half a second later), and the sealed secret (the file secret source) opened and
compared. The outsider's
calls come from 127.0.0.1 like the hosts' (all traffic here does), so a per-source lockout
locks out the whole fleet: the situation of hosts behind one NAT or one proxy.

The gateway runs with the production defaults, except what a fleet of this size behind one
address needs (FLEET below: per-address rates, poll slots per address, the notification budget)
and what --set overrides, e.g. ``--set AUTH_FAILURES_PER_HOUR=1000000`` to see the next limit.
Prints, per run, hosts unlocked, latency percentiles, throughput, what the outsider got, the
database's growth and, under attack, which limit refused the real hosts; --write-docs puts the
report into docs/gateway.md between the bench markers. Exit status 1 when the bar is missed.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import secrets
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench.gateway_traffic import (
    ATTACKS,
    BenchHost,
    HealthProbe,
    Looping,
    Outcome,
    Outsider,
    Owner,
    Timings,
    boot,
)
from gateway import audit, ratelimit, secrets_source
from gateway.config import Settings, load
from gateway.notify import ConsoleNotifier
from gateway.ratelimit import HOUR
from gateway.service import HOST_APPROVED, Gateway
from gateway.store import Host, Store
from tests.harness import postgres
from tests.harness.gateway import REPO, TEST_LIMITS, RunningGateway, running_gateway
from zkv import crypto
from zkv.encoding import b64

DOCS = REPO / "docs" / "gateway.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SOURCE = "127.0.0.1"  # every client's address here
SECRET_NAME = "bench-fleet"  # a file beside SECRET_FILE
THREADS = 32  # `zkv-gateway serve` default threads per worker
BAR_MS = 250.0
NOT_WAITING = ("challenge", "create", "poll wait=0", "healthz")
ROWS = (*NOT_WAITING, "approval to release", "owner approve", "end to end")


def fleet(hosts: int) -> dict[str, Any]:
    """What an owner of ``hosts`` hosts behind one address must raise; the rest stays default."""
    return {
        "RATE_PER_SECOND": max(100, hosts),
        "SMS_PER_HOUR": 2 * hosts,  # each unlock is one notification, with room to spare
        "MAX_POLLS_PER_SOURCE": 10**5,  # the threads bound the long-polls (server.py)
    }


def gateway_settings(hosts: int, overrides: dict[str, Any]) -> dict[str, Any]:
    defaults = Settings()
    production = {k: getattr(defaults, k) for k in (*TEST_LIMITS, "POLL_INTERVAL")}
    return {**production, **fleet(hosts), **overrides}


@dataclass
class Run:
    attacked: bool
    hosts: int
    outcomes: list[Outcome]
    timings: Timings
    elapsed: float
    http_calls: int
    attack: dict[str, Counter[int]]
    health: Counter[int]
    growth: dict[str, int]
    causes: list[str]
    owner_failures: Counter[str]
    lock_waiters: list[int]  # PostgreSQL sessions waiting on a lock, sampled twice a second

    @property
    def unlocked(self) -> int:
        return sum(o.unlocked for o in self.outcomes)

    def missed(self) -> list[str]:
        """Why this run misses the bar (empty: met)."""
        out = [] if self.unlocked == self.hosts else [f"{self.hosts - self.unlocked} not unlocked"]
        for name in NOT_WAITING:
            p = self.timings.percentiles(name)
            if p is not None and p[3] >= BAR_MS:
                out.append(f"{name} p99 {p[3]:.0f} ms")
        return out


@contextmanager
def gateways(
    backend: str, directory: Path, settings: dict[str, Any], secret: bytes, cluster: Any
) -> Iterator[list[RunningGateway]]:
    """sqlite: one gunicorn process; postgres: two, on two ports, sharing one new database."""
    count = 1
    if backend == "postgres":
        settings, count = {**settings, "SQLALCHEMY_DATABASE_URI": cluster.new_database()}, 2
    with ExitStack() as stack:
        started = []
        for i in range(count):
            gw = stack.enter_context(
                running_gateway(
                    directory / f"gw{i}", secret=secret, settings=settings, threads=THREADS
                )
            )
            (gw.directory / SECRET_NAME).write_bytes(secret)  # the hosts' named secret
            (gw.directory / SECRET_NAME).chmod(0o600)
            started.append(gw)
        yield started


def enrol(store: Store, hosts: list[BenchHost]) -> None:
    """The fleet as invites' enrolments leave it: approved, each its own secret (set up
    through the store, not the enrolment API)."""
    now = time.time()
    with store.write() as conn:
        for host in hosts:
            public = b64(crypto.ed25519_public(host.private_key))
            store.add_host(
                conn,
                Host(
                    host_id=host.host_id,
                    hostname=host.hostname,
                    public_key=public,
                    status=HOST_APPROVED,
                    secret_name=SECRET_NAME,
                    source_ip=SOURCE,
                    enrolled_at=now,
                    decided_at=now,
                ),
            )


def counts(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return store.row_counts(conn)


def access_lines(gws: list[RunningGateway]) -> int:
    """HTTP calls answered so far: gunicorn's access log (server.py) has one line per call."""
    return sum(gw.output().count(f'\n{SOURCE} "') for gw in gws)


def run(
    backend: str, args: argparse.Namespace, attacked: bool, cluster: Any, overrides: dict[str, Any]
) -> Run:
    secret = secrets.token_hex(32).encode()
    hosts = [BenchHost(f"host{i:04d}", crypto.ed25519_generate()[0]) for i in range(args.hosts)]
    settings = gateway_settings(args.hosts, overrides)
    with (
        tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp,
        gateways(backend, Path(tmp), settings, secret, cluster) as gws,
    ):
        owner_settings = load(environ={"CONFIG_FILE": str(gws[0].config_file)})
        store = Store(owner_settings.SQLALCHEMY_DATABASE_URI)
        service = Gateway(
            owner_settings, store, secrets_source.from_settings(owner_settings), ConsoleNotifier()
        )
        enrol(store, hosts)
        before, calls_before = counts(store), access_lines(gws)
        urls = [gw.url for gw in gws]
        t = Timings()
        owner = Owner(service, args.approve_after, t)
        probe = HealthProbe(urls, t)
        outsider = Outsider(urls, args.attack_rate) if attacked else None
        waiters: list[int] = []
        sampler = Looping()
        if cluster is not None:
            sampler.spawn(lambda: waiters.append(cluster.lock_waiters()), 2.0)
        outcomes, elapsed = boot_fleet(urls, hosts, owner, secret, args, t)
        for looping in (outsider, probe, sampler):
            if looping is not None:
                looping.stop()
        owner.stop()
        growth = {k: v - before.get(k, 0) for k, v in counts(store).items()}
        causes = refusal_causes(store, outcomes, owner_settings.AUTH_FAILURES_PER_HOUR)
        http_calls = access_lines(gws) - calls_before
        store.dispose()
    return Run(
        attacked,
        args.hosts,
        outcomes,
        t,
        elapsed,
        http_calls,
        outsider.answers if outsider else {},
        probe.answers,
        growth,
        causes,
        owner.failures,
        waiters,
    )


def boot_fleet(
    urls: list[str],
    hosts: list[BenchHost],
    owner: Owner,
    secret: bytes,
    args: argparse.Namespace,
    t: Timings,
) -> tuple[list[Outcome], float]:
    """Each host boots at its moment of the spread, alternating between the gateways."""
    outcomes: list[Outcome | None] = [None] * len(hosts)

    def one(i: int, deadline: float) -> None:
        try:
            outcomes[i] = boot(urls[i % len(urls)], hosts[i], owner, secret, deadline, t)
        except Exception as exc:  # a host that fails otherwise (a bad release) still counts
            outcomes[i] = Outcome(hosts[i].host_id, why=f"{type(exc).__name__}: {exc}"[:200])

    threads = []
    start = time.monotonic()
    for i in range(len(hosts)):
        due = start + i * args.spread / len(hosts)
        time.sleep(max(0.0, due - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(i, due + args.deadline)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return [o for o in outcomes if o is not None], time.monotonic() - start


def refusal_causes(store: Store, outcomes: list[Outcome], auth_limit: int) -> list[str]:
    """What refused the real hosts: their refusals, the audited limits, and the lockout."""
    refused: Counter[str] = Counter()
    for outcome in outcomes:
        refused.update(outcome.refusals)
    ids = {o.host_id for o in outcomes}
    with store.read() as conn:
        entries = audit.entries(conn, limit=10**8)
        failures = ratelimit.count(conn, f"authfail:{SOURCE}", time.time() - HOUR)
    audited = Counter(e.detail for e in entries if e.event == "rate_limited" and e.host_id in ids)
    causes = [f"{what} x{n}" for what, n in refused.most_common()]
    causes += [f"audited rate limit `{detail}` x{n}" for detail, n in audited.most_common()]
    if failures >= auth_limit:
        causes.append(
            f"lockout: {failures} authentication failures from {SOURCE} in the hour "
            f"(AUTH_FAILURES_PER_HOUR {auth_limit}): every create, enrolment and poll of an "
            f"unknown id from {SOURCE} is refused before it is looked at, unaudited"
        )
    why = Counter(o.why for o in outcomes if not o.unlocked)
    return causes + [f"{n} hosts gave up: {reason}" for reason, n in why.most_common()]


# --- the report -------------------------------------------------------------------------------


def _ms(t: Timings, name: str) -> str:
    p = t.percentiles(name)
    return "—" if p is None else f"{p[1]:.0f} / {p[2]:.0f} / {p[3]:.0f} (n={p[0]})"


def _ratio(base: Run, attacked: Run, name: str) -> str:
    a, b = base.timings.percentiles(name), attacked.timings.percentiles(name)
    return "—" if a is None or b is None or not a[3] else f"p99 x{b[3] / a[3]:.2f}"


def _answers(counts: Counter[int]) -> str:
    parts = [f"{'no answer' if s == -1 else s} x{n}" for s, n in sorted(counts.items())]
    return f"{sum(counts.values())}: " + ", ".join(parts) if counts else "—"


def _growth(r: Run) -> str:
    return ", ".join(f"{table} +{n}" for table, n in sorted(r.growth.items()) if n) or "none"


def table(backend: str, base: Run, attacked: Run, args: argparse.Namespace) -> str:
    gws = "1 gunicorn process" if backend == "sqlite" else "2 gunicorn processes, 1 database"
    out = [
        f"**{backend}, {gws}, {THREADS} threads each**: {args.hosts} hosts booting over "
        f"{args.spread:g} s (each one's deadline {args.deadline:g} s); under attack an outsider "
        f"adds {args.attack_rate:g} calls/s from the hosts' own address.",
        "",
        "| | no attack | under attack | attack / no attack |",
        "|---|---|---|---|",
        f"| real hosts unlocked | {base.unlocked} / {base.hosts} | "
        f"{attacked.unlocked} / {attacked.hosts} | |",
    ]
    for name in ROWS:
        out.append(
            f"| {name}, ms p50 / p95 / p99 | {_ms(base.timings, name)} | "
            f"{_ms(attacked.timings, name)} | {_ratio(base, attacked, name)} |"
        )
    rates = [(r.unlocked / r.elapsed, r.http_calls / r.elapsed) for r in (base, attacked)]
    out.append(
        f"| unlocks/s, HTTP calls/s | {rates[0][0]:.1f}, {rates[0][1]:.0f} | "
        f"{rates[1][0]:.1f}, {rates[1][1]:.0f} | x{rates[1][1] / rates[0][1]:.2f} calls |"
    )
    out.append(f"| healthz answers | {_answers(base.health)} | {_answers(attacked.health)} | |")
    for kind in ATTACKS:
        out.append(f"| outsider: {kind} | — | {_answers(attacked.attack.get(kind, Counter()))} | |")
    out.append(f"| database rows added | {_growth(base)} | {_growth(attacked)} | |")
    if base.lock_waiters:
        waits = [
            f"{statistics.mean(r.lock_waiters):.1f} / {max(r.lock_waiters)}"
            for r in (base, attacked)
        ]
        out.append(f"| sessions waiting on a lock, mean / max | {waits[0]} | {waits[1]} | |")
    out.append("")
    for r in (base, attacked):
        label = "under attack" if r.attacked else "no attack"
        missed = r.missed()
        verdict = "bar met" if not missed else "bar MISSED: " + "; ".join(missed)
        out.append(f"- {label}: {verdict}.")
        out += [f"  - {cause}" for cause in r.causes]
        out += [f"  - owner's approval refused: {m} x{n}" for m, n in r.owner_failures.items()]
    return "\n".join(out) + "\n"


def header(args: argparse.Namespace, overrides: dict[str, Any]) -> str:
    limits = gateway_settings(args.hosts, overrides)
    shown = ", ".join(f"{k}={v}" for k, v in limits.items())
    return (
        f"{os.cpu_count()} cores ({platform.python_implementation()} "
        f"{platform.python_version()}), {time.strftime('%Y-%m-%d')}; the benchmark's clients "
        f"share the cores. Gateway settings: production defaults except {shown}. "
        f"Owner approves {args.approve_after:g} s after each create. Outsider: "
        f"{', '.join(ATTACKS)}, a third each.\n\n"
    )


def parse_setting(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    known = {f.name for f in fields(Settings)}
    if not sep or name not in known:
        raise argparse.ArgumentTypeError(f"--set NAME=VALUE with a gateway setting, not {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds the boots span")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds a host may take")
    parser.add_argument("--approve-after", type=float, default=0.5, help="owner's delay, s")
    parser.add_argument("--attack-rate", type=float, default=60.0, help="outsider calls/s")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--set", type=parse_setting, action="append", default=[])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.hosts <= 10000 or args.attack_rate <= 0 or args.spread < 0:
        parser.error("--hosts must be 1..10000, --attack-rate above 0, --spread 0 or more")
    overrides = dict(args.set)
    report, missed = header(args, overrides), False
    with ExitStack() as stack:
        for backend in args.backends.split(","):
            cluster = None
            if backend == "postgres":
                bindir = postgres.bindir()
                if bindir is None:
                    report += "**postgres**: skipped, no PostgreSQL server or psycopg here.\n\n"
                    continue
                cluster = postgres.Cluster(bindir)
                stack.callback(cluster.remove)
            elif backend != "sqlite":
                parser.error(f"unknown backend {backend}: sqlite or postgres")
            base, attacked = (run(backend, args, a, cluster, overrides) for a in (False, True))
            section = table(backend, base, attacked, args)
            print(section, flush=True)
            report += section + "\n"
            missed = missed or bool(base.missed() or attacked.missed())
    print(report)
    if args.write_docs:
        text = DOCS.read_text()
        head, rest = text.split(START, 1)
        DOCS.write_text(f"{head}{START}\n{report.rstrip()}\n{END}{rest.split(END, 1)[1]}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
