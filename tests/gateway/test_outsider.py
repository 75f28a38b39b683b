"""What an outsider holding no invite and no host key can do to the fleet, against the real
gateway under gunicorn with the production limits: nothing that costs a notification, and
nothing that stops a real host's unlock, even from the same address (one NAT, one proxy)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import protocol

PRODUCTION_LIMITS = {  # gateway/config.py's defaults, but a small fleet notification cap
    "RATE_PER_SECOND": 1,
    "RATE_HOST_PER_HOUR": 10,
    "SMS_PER_HOUR": 5,
    "AUTH_FAILURES_PER_HOUR": 20,
}
UNKNOWN_ID = "cd" * 16


def unlocks(gw: RunningGateway, host: client.Host, secret: bytes) -> None:
    sent = len(gw.notifications())
    boot = client.unlock(gw.url, host)
    assert boot.response.status_code == 201, boot.response.text
    assert len(gw.notifications()) == sent + 1 and boot.created.pin in gw.notifications()[-1]
    gw.approve(boot.created.request_id, boot.created.pin)
    assert client.opened(boot, client.poll(gw.url, boot.created.request_id, wait=5)) == secret


def test_a_flood_from_a_hosts_own_address_stops_neither_its_unlock_nor_its_sms(
    tmp_path: Path,
) -> None:
    with running_gateway(tmp_path, settings=PRODUCTION_LIMITS) as gw:
        host = client.Host(hostname="db01")
        gw.admit(host)
        sent = len(gw.notifications())
        # From 127.0.0.1 too: enrolments with self-made keys and made-up tokens, bogus polls,
        # unlock requests from unknown keys; 40 of each, far past the lockout and the SMS cap.
        codes = set()
        for i in range(40):
            outsider = client.Host(hostname=f"evil{i}")
            codes.add(client.enroll(gw.url, outsider, protocol.new_invite_token()).status_code)
            codes.add(client.poll(gw.url, UNKNOWN_ID).status_code)
            codes.add(client.unlock(gw.url, outsider).response.status_code)
        assert codes == {401, 429}  # refused, then locked out
        assert len(gw.notifications()) == sent  # the owner heard nothing of it
        assert "evil" not in gw.cli("hosts", "list").stdout
        unlocks(gw, host, gw.secret)  # the real host, same address, right after


def test_after_revocation_a_thief_gets_nothing_and_a_new_invite_a_new_secret(
    tmp_path: Path,
) -> None:
    with running_gateway(tmp_path, settings=PRODUCTION_LIMITS) as gw:
        host = client.Host(hostname="db01")
        gw.admit(host)
        old_secret = gw.cli("hosts", "list").stdout.split("secret=")[1].split()[0]
        gw.revoke_host(host.host_id)
        sent = len(gw.notifications())
        thief = client.Host(hostname="db01")
        for who in (thief, host):  # a new key under the name, or the stolen key itself
            refused = client.enroll(gw.url, who, protocol.new_invite_token())
            assert (refused.status_code, refused.json()) == (401, {"error": "unauthorized"})
        assert client.unlock(gw.url, host).response.status_code == 401
        assert len(gw.notifications()) == sent
        taken = gw.cli("hosts", "invite", "db01", "--secret", old_secret, check=False)
        assert taken.returncode == 5 and "revoked host" in taken.stderr
        # The owner re-admits the machine (a new invite): it gets a new secret, never the old.
        new_key = b"n" * 64
        token = gw.invite("db01", secret=new_key)
        assert client.enroll(gw.url, host, token).json()["status"] == "approved"
        listed = gw.cli("hosts", "list").stdout
        assert f"secret={old_secret}" not in listed and host.host_id in listed
        unlocks(gw, host, new_key)


def test_a_second_host_of_one_name_needs_replace_and_revokes_the_first(tmp_path: Path) -> None:
    with running_gateway(tmp_path) as gw:
        first, second = client.Host(hostname="db01"), client.Host(hostname="db01")
        gw.admit(first)
        refused = gw.cli("hosts", "invite", "db01", check=False)
        assert refused.returncode == 5 and "already has the name db01" in refused.stderr
        gw.admit(second, "--replace")
        assert "replacing" in gw.notifications()[-1]
        assert f"replaces {first.host_id}" in " ".join(gw.audit())
        assert client.unlock(gw.url, first).response.status_code == 401
        unlocks(gw, second, gw.secret)


def test_two_hosts_behind_one_nat_booting_in_the_same_second_both_unlock(
    tmp_path: Path,
) -> None:
    """Both from 127.0.0.1 at once, with one request a second allowed: per host, so neither
    is refused for the other's request (once limited by address, the second got 429)."""
    # The default notification cap (the module's small one would be spent by the enrolments).
    with running_gateway(tmp_path, settings={**PRODUCTION_LIMITS, "SMS_PER_HOUR": 30}) as gw:
        hosts = [client.Host(hostname=f"nat{i}") for i in range(2)]
        for host in hosts:
            gw.admit(host)
        for _ in range(3):  # three power cuts: both boot together each time
            with ThreadPoolExecutor(max_workers=2) as pool:
                boots = list(pool.map(lambda h: client.unlock(gw.url, h), hosts))
            assert [b.response.status_code for b in boots] == [201, 201], boots[1].response.text
            for boot in boots:
                gw.approve(boot.created.request_id, boot.created.pin)
                final = client.poll(gw.url, boot.created.request_id, wait=5)
                assert client.opened(boot, final) == gw.secret
            time.sleep(1.1)  # the next boot of each host: past its one request a second
