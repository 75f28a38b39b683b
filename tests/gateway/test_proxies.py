"""Behind reverse proxies, against the real gateway under gunicorn. The test plays the proxy:
it connects from 127.0.0.1 and sends the X-Forwarded-For a proxy would add. Forwarded headers
are believed only from TRUSTED_PROXY_ADDRESSES; a configuration that would give every client
the proxy's address, or believe anyone, stops the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, refused_start, running_gateway

ATTACKER, BOOTING = "203.0.113.66", "198.51.100.7"
UNKNOWN_ID = "ab" * 16


def enrolled(gw: RunningGateway) -> client.Host:
    host = client.Host()
    gw.admit(host)
    return host


def test_behind_a_proxy_one_client_cannot_lock_out_the_fleet(tmp_path: Path) -> None:
    settings = {
        "PUBLIC_URL": "https://gw.example.org",
        "TRUSTED_PROXY_ADDRESSES": "127.0.0.1",
        "AUTH_FAILURES_PER_HOUR": 20,
    }
    with running_gateway(tmp_path, settings=settings) as gw:
        host = enrolled(gw)
        attacker = {"X-Forwarded-For": ATTACKER}
        answers = [client.poll(gw.url, UNKNOWN_ID, headers=attacker).status_code for _ in range(21)]
        assert answers == [401] * 20 + [429]
        boot = client.unlock(gw.url, host, headers={"X-Forwarded-For": BOOTING})
        assert boot.response.status_code == 201, boot.response.text
        assert gw.notifications()[-1].startswith(f"zkv: from {BOOTING}, ")


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "shown"),
    [
        # The proxy is elsewhere; the test is a client that reaches the gateway directly.
        ("192.0.2.10", BOOTING, "127.0.0.1"),
        # Each proxy appends what it saw: the rightmost address not one of ours is the client.
        ("127.0.0.1, 10.0.0.0/8", f"{ATTACKER}, {BOOTING}, 10.1.2.3", BOOTING),
        ("127.0.0.1", f"{BOOTING}:50123", BOOTING),  # Azure App Service adds the port
        ("127.0.0.1", "not an address", "127.0.0.1"),
    ],
)
def test_the_sms_shows_the_address_the_proxies_vouch_for(
    tmp_path: Path, proxies: str, forwarded_for: str, shown: str
) -> None:
    with running_gateway(tmp_path, settings={"TRUSTED_PROXY_ADDRESSES": proxies}) as gw:
        boot = client.unlock(gw.url, enrolled(gw), headers={"X-Forwarded-For": forwarded_for})
        assert boot.response.status_code == 201, boot.response.text
        assert gw.notifications()[-1].startswith(f"zkv: from {shown}, ")
        assert any(f"source_ip={shown} " in line for line in gw.audit(boot.created.request_id))


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"PUBLIC_URL": "https://gw.example.org"}, "TRUSTED_PROXY_ADDRESSES"),
        ({"TRUSTED_PROXIES": 1}, "TRUSTED_PROXY_ADDRESSES"),
        ({"TRUSTED_PROXIES": 1, "TRUSTED_PROXY_ADDRESSES": "127.0.0.1"}, "TRUSTED_PROXIES"),
        (
            {"PUBLIC_URL": "http://gw.example.org", "TRUSTED_PROXY_ADDRESSES": "127.0.0.1"},
            "https",
        ),
        ({"TRUSTED_PROXY_ADDRESSES": "0.0.0.0/0"}, "every address"),
        ({"TRUSTED_PROXY_ADDRESSES": "proxy.example.org"}, "proxy.example.org"),
        ({"TRUSTED_PROXY_ADDRESSES": "10.1.2.3/8"}, "10.1.2.3/8"),
    ],
)
def test_a_contradictory_configuration_stops_the_start(
    tmp_path: Path, settings: dict[str, Any], words: str
) -> None:
    result = refused_start(tmp_path, settings)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("zkv-gateway: configuration error: ")
    assert len(result.stderr.splitlines()) == 1 and words in result.stderr
