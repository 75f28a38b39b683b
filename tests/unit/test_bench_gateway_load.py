"""The gateway load benchmark's own logic (bench/gateway_load.py, bench/gateway_traffic.py):
its percentiles, the settings it runs the gateway with, its verdict, and that the outsider's
calls are the protocol's messages (so the gateway refuses them for what they are, not as noise).
"""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from bench import gateway_load, gateway_traffic
from bench.gateway_traffic import Outcome, Timings
from gateway.config import Settings
from tests.harness.gateway import TEST_LIMITS
from zkv import protocol


def test_percentiles_are_read_from_the_sorted_samples() -> None:
    t = Timings()
    for ms in reversed(range(1, 101)):  # 100 ms down to 1 ms
        t.add("create", ms / 1000)
    n, p50, p95, p99, mean = t.percentiles("create") or (0, 0, 0, 0, 0)
    assert (n, round(p50), round(p95), round(p99), round(mean, 1)) == (100, 51, 96, 100, 50.5)
    assert t.percentiles("healthz") is None


def test_the_gateway_runs_production_limits_except_what_a_fleet_needs() -> None:
    settings = gateway_load.gateway_settings(1000, {"AUTH_FAILURES_PER_HOUR": 7})
    defaults = Settings()
    assert settings["AUTH_FAILURES_PER_HOUR"] == 7  # --set wins
    assert settings["RATE_HOST_PER_HOUR"] == defaults.RATE_HOST_PER_HOUR
    assert settings["POLL_INTERVAL"] == defaults.POLL_INTERVAL
    assert settings["SMS_PER_HOUR"] == 2000  # not the test harness's raised limits
    assert set(TEST_LIMITS) <= set(settings)


def test_set_takes_known_settings_only() -> None:
    assert gateway_load.parse_setting("AUTH_FAILURES_PER_HOUR=1000000") == (
        "AUTH_FAILURES_PER_HOUR",
        1000000,
    )
    assert gateway_load.parse_setting("LOG_LEVEL=DEBUG") == ("LOG_LEVEL", "DEBUG")
    with pytest.raises(argparse.ArgumentTypeError):
        gateway_load.parse_setting("NO_SUCH_SETTING=1")
    with pytest.raises(argparse.ArgumentTypeError):
        gateway_load.parse_setting("RATE_PER_SECOND")


def _run(unlocked: int, hosts: int, create_ms: float) -> gateway_load.Run:
    t = Timings()
    t.add("create", create_ms / 1000)
    t.add("approval to release", 0.5)  # a waiting call: not under the bar
    outcomes = [Outcome(f"{i:032x}", unlocked=i < unlocked) for i in range(hosts)]
    return gateway_load.Run(True, hosts, outcomes, t, 1.0, 0, {}, Counter(), {}, [], Counter(), [])


def test_the_bar_is_every_host_and_p99_of_the_calls_that_do_not_wait() -> None:
    assert _run(10, 10, 249).missed() == []
    assert _run(9, 10, 249).missed() == ["1 not unlocked"]
    assert _run(10, 10, 250).missed() == ["create p99 250 ms"]


class _Issuing(gateway_traffic._Http):
    """A connection whose gateway hands out one known challenge (no gateway here)."""

    def challenge(self) -> str:
        return "ab" * 40


def test_the_outsiders_calls_are_well_formed_protocol_messages() -> None:
    http_ = _Issuing("http://127.0.0.1:9")
    method, path, body = gateway_traffic._enrolment(http_)
    enrol = protocol.EnrollRequest.from_json(body)
    enrol.verify()  # a valid self-made key: refused only for being unknown
    assert (method, path) == ("POST", protocol.PATH_HOSTS)
    assert enrol.challenge == "ab" * 40 and protocol.is_invite_token(enrol.token)  # made up
    method, path, body = gateway_traffic._unknown_key(http_)
    assert (method, path) == ("POST", protocol.PATH_UNLOCK)
    assert protocol.UnlockRequest.from_json(body).datasets == gateway_traffic.DATASETS
    method, path = gateway_traffic._bogus_poll(http_)[:2]
    request_id, _, query = path.removeprefix(protocol.PATH_UNLOCK + "/").partition("?wait=")
    assert method == "GET" and len(request_id) == 32 and int(query) in (0, protocol.MAX_WAIT)
