"""Request freshness from the gateway's challenges, not the host's clock (issue 16 item 9).

Pure checks on a fake clock; then the real gateway under gunicorn: a boot client whose clock is
an hour off gets its unlock, a challenge is good once and only at the gateway that issued it.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from gateway import challenges
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from tests.unit.test_early_approval import REPO_KEY, gateway_flow, host_files, sealed
from tests.unit.test_early_net import FakeClock
from zkv import crypto, hostkey, protocol
from zkv_early.gateway_client import GatewayClient

KEY, OTHER_KEY = bytes(32), bytes([1]) * 32
NOW = 1_800_000_000.0
UNAUTHORIZED = (401, {"error": "unauthorized"})


# --- pure, fake clock -------------------------------------------------------------------------


def test_a_challenge_is_good_for_the_window_either_side() -> None:
    issued = challenges.issue(KEY, NOW)
    nonce = challenges.check(KEY, issued, NOW)
    assert len(nonce) == 32 and nonce in issued
    assert challenges.check(KEY, issued, NOW + protocol.REPLAY_WINDOW) == nonce
    assert challenges.check(KEY, issued, NOW - protocol.REPLAY_WINDOW) == nonce
    for late in (NOW + protocol.REPLAY_WINDOW + 1, NOW - protocol.REPLAY_WINDOW - 1):
        with pytest.raises(challenges.BadChallenge, match="issued"):
            challenges.check(KEY, issued, late)


def test_each_challenge_is_new() -> None:
    assert len({challenges.issue(KEY, NOW) for _ in range(100)}) == 100


def test_a_challenge_from_another_key_or_altered_is_refused() -> None:
    issued = challenges.issue(KEY, NOW)
    with pytest.raises(challenges.BadChallenge, match="not issued by this gateway"):
        challenges.check(OTHER_KEY, issued, NOW)
    later = f"{int(NOW) + 3600:016x}" + issued[16:]  # a forged issue time
    with pytest.raises(challenges.BadChallenge, match="not issued by this gateway"):
        challenges.check(KEY, later, NOW + 3600)
    for bad in (issued[:-2], issued + "00", "zz" * 40):
        with pytest.raises(challenges.BadChallenge):
            challenges.check(KEY, bad, NOW)


# --- the real gateway -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [3600, -3600])
def test_a_boot_client_an_hour_off_is_unlocked(tmp_path: Path, offset: int) -> None:
    """The boot client's own flow and HTTP client, its wall clock an hour off (injected)."""
    ttl = {"REQUEST_TTL": 120}  # under the flow's 300 s, so the countdown shows the gateway's
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=REPO_KEY.hex().encode(), settings=ttl
    ) as gw:
        host_files(tmp_path)
        host = client.Host("nas", hostkey.load(tmp_path / "host.key"))
        gw.admit(host)
        http = GatewayClient(gw.url, None, 10)
        flow, out = gateway_flow(tmp_path, http, FakeClock())  # FakeClock: the deadline's
        flow.wall_clock = lambda: time.time() + offset  # the host's wall clock, an hour off
        store = flow.run(sealed(tmp_path), threading.Event())
        http.close()
    assert store.candidates("rpool") == [bytes(32)]
    text = out.getvalue()
    side = "ahead of" if offset > 0 else "behind"
    said = re.search(rf"clock off by (\d+) s \({side} the gateway\); using its time\n", text)
    assert said and abs(int(said[1]) - 3600) <= 2  # whole seconds, and time passes on the way
    assert re.search(r" (2:00|1:5[0-9]) left", text)  # REQUEST_TTL, not an hour more or less


def test_a_challenge_is_accepted_once(tmp_path: Path) -> None:
    with running_gateway(tmp_path) as gw:
        host = enrolled(gw)
        fresh = client.challenge(gw.url).challenge
        first = signed_unlock(host, fresh)
        assert client.send(gw.url, first).status_code == 201
        again = signed_unlock(host, fresh)  # a new ephemeral key, newly signed: the same challenge
        response = client.send(gw.url, again)
        assert (response.status_code, response.json()) == UNAUTHORIZED
        assert any("replayed nonce" in line for line in gw.audit())


def test_a_challenge_from_another_gateway_is_refused(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "a") as ours, running_gateway(tmp_path / "b") as theirs:
        host = enrolled(ours)
        boot = client.unlock(ours.url, host, challenge_from=theirs.url)
        assert (boot.response.status_code, boot.response.json()) == UNAUTHORIZED
        assert any("challenge: not issued by this gateway" in line for line in ours.audit())
        assert client.unlock(ours.url, host).response.status_code == 201


def test_challenges_are_shared_by_the_workers_of_one_database(tmp_path: Path) -> None:
    with running_gateway(tmp_path, workers=2) as gw:
        host = enrolled(gw)
        fresh = [client.challenge(gw.url).challenge for _ in range(8)]  # from either worker
        answers = [client.send(gw.url, signed_unlock(host, c)).status_code for c in fresh]
        assert answers == [201] * 8


def test_challenges_cost_the_database_nothing(tmp_path: Path) -> None:
    with running_gateway(tmp_path) as gw:
        audit = gw.audit()
        size = database_size(tmp_path)
        for _ in range(300):
            client.challenge(gw.url)
        assert database_size(tmp_path) == size
        assert gw.audit() == audit


# --- helpers ----------------------------------------------------------------------------------


def database_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("gateway.sqlite*"))


def enrolled(gw: RunningGateway) -> client.Host:
    host = client.Host()
    gw.admit(host)
    return host


def signed_unlock(host: client.Host, challenge: str) -> protocol.UnlockRequest:
    _, public = crypto.x25519_generate()
    return protocol.UnlockRequest.create(
        host.private_key, host.hostname, ("tank/a",), public, challenge
    )
