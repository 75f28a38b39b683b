"""Dead-man switch and remote wipe against the real gateway under gunicorn: a host past its
window is refused while one within its window is not; the worker's schedule suspends without
any unlock; `hosts wipe` disables the Key Vault secret through the real Azure SDK."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.harness import protocol_client as client
from tests.harness.cloud_standins import SECRET_NAME
from tests.harness.gateway import RunningGateway, running_gateway

UNAUTHORIZED = (401, {"error": "unauthorized"})


def admitted(gw: RunningGateway, hostname: str, secret: str | None = None) -> client.Host:
    host = client.Host(hostname)
    gw.admit(host, *(("--secret", secret) if secret else ()))
    return host


def refused(response: requests.Response) -> bool:
    return (response.status_code, response.json()) == UNAUTHORIZED


def test_past_its_window_refused_within_its_window_not(tmp_path: Path) -> None:
    with running_gateway(tmp_path) as gw:
        silent, alive = admitted(gw, "silent01"), admitted(gw, "alive01")
        gw.cli("hosts", "deadman", silent.host_id, "--window", "3s")
        gw.cli("hosts", "deadman", alive.host_id, "--window", "1h")
        for host in (silent, alive):
            assert client.heartbeat(gw.url, host).json() == {"action": "none"}
        time.sleep(4)
        assert refused(client.unlock(gw.url, silent).response)
        assert client.unlock(gw.url, alive).response.status_code == 201
        listing = gw.cli("hosts", "list").stdout
        assert f"{silent.host_id}  suspended" in listing
        assert f"{alive.host_id}  approved " in listing
        assert any("silent01" in t and "suspended" in t for t in gw.notifications())
        assert any("host_suspended" in line and silent.host_id in line for line in gw.audit())
        assert "resumed" not in listing
        gw.cli("hosts", "resume", silent.host_id)
        assert client.unlock(gw.url, silent).response.status_code == 201


def test_the_schedule_suspends_and_tells_the_owner_once(tmp_path: Path) -> None:
    with running_gateway(tmp_path, settings={"HOUSEKEEPING_INTERVAL": 1}, workers=2) as gw:
        host = admitted(gw, "gone01")
        gw.cli("hosts", "deadman", host.host_id, "--window", "2s")
        deadline = time.monotonic() + 20
        while "suspended" not in gw.cli("hosts", "list").stdout:
            assert time.monotonic() < deadline, gw.output()[-2000:]
            time.sleep(0.5)
        time.sleep(2.5)  # both workers have swept again since
        told = [t for t in gw.notifications() if "gone01" in t and "heartbeat" in t]
        assert len(told) == 1


def test_wipe_disables_the_vault_secret_and_answers_the_heartbeat(tmp_path: Path) -> None:
    with running_gateway(tmp_path, secret_source="azure") as gw:
        wiped = admitted(gw, "stolen01", SECRET_NAME)
        sharing = admitted(gw, "other01", SECRET_NAME)
        refusal = gw.cli("hosts", "wipe", wiped.host_id, check=False)
        assert refusal.returncode == 5 and "also used by other01" in refusal.stderr
        assert gw.standins.vault_disabled == set()
        boot = client.unlock(gw.url, sharing)
        gw.approve(boot.created.request_id, boot.created.pin)
        assert client.opened(boot, client.poll(gw.url, boot.created.request_id)) == gw.secret

        done = gw.cli("hosts", "wipe", wiped.host_id, "--shared")
        assert "1 version(s) disabled" in done.stdout
        assert gw.standins.vault_disabled == {SECRET_NAME}
        assert client.heartbeat(gw.url, wiped).json() == {"action": "wipe"}
        assert client.heartbeat(gw.url, sharing).json() == {"action": "none"}
        assert refused(client.unlock(gw.url, wiped).response)
        assert gw.cli("hosts", "resume", wiped.host_id, check=False).returncode == 5
        # The secret is disabled as Key Vault disables it: get_secret is refused.
        boot = client.unlock(gw.url, sharing)
        gw.approve(boot.created.request_id, boot.created.pin)
        answer = client.poll(gw.url, boot.created.request_id)
        assert (answer.status_code, answer.json()) == (503, {"error": "secret_unavailable"})
        assert any("SecretDisabled" in line or "403" in line for line in gw.audit())
        assert gw.secret.decode() not in gw.output()
