"""``zkv reboot --approve-ahead`` against the real gateway under gunicorn: it asks (signed by
the host key), says the request code and where to approve, waits for the owner, and only then
runs ``systemctl reboot`` (a recording stand-in on PATH); the next boot is approved at once.
A denial reboots nothing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.cli.conftest import Zkv
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import hostkey, protocol


def prepared(zkv: Zkv, gw: RunningGateway) -> tuple[client.Host, Path]:
    """An enrolled host key beside the keystore, early.conf, and a systemctl that records."""
    zkv.keystore.parent.mkdir(parents=True, exist_ok=True)
    key_path = zkv.keystore.parent / "host.key"
    hostkey.generate(key_path)
    host = client.Host("box1", hostkey.load(key_path))
    gw.admit(host)
    tools, calls = zkv.tmp / "tools", zkv.tmp / "systemctl-calls"
    tools.mkdir()
    (tools / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (tools / "systemctl").chmod(0o755)
    zkv.extra_env["PATH"] = f"{tools}:{zkv.fake.env()['PATH']}"
    (zkv.tmp / "early.conf").write_text(f"[gateway]\nurl = {gw.url}\n[host]\nname = box1\n")
    return host, calls


def asked(zkv: Zkv, *options: str) -> subprocess.Popen[bytes]:
    conf = str(zkv.tmp / "early.conf")
    return zkv.popen(
        "reboot", "--approve-ahead", "--config", conf, *options,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def pending(gw: RunningGateway) -> str:
    deadline = time.monotonic() + 20
    while "would approve" not in (out := gw.cli("approve", "--pending", "--host", "box1",
                                                "--dry-run").stdout):  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return out.split()[2]  # "would approve ID ..."


def test_approved_then_rebooted_and_the_boot_does_not_wait(zkv: Zkv, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw") as gw:
        host, calls = prepared(zkv, gw)
        proc = asked(zkv, "--within", "10m")
        request_id = pending(gw)
        assert not calls.exists()  # nothing before the owner decides
        gw.cli("approve", "--pending", "--host", "box1")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        pin = next(t for t in gw.notifications() if "planned reboot within 10 min" in t)
        assert "request code" in err.decode() and "zkv-gateway approve --pending" in err.decode()
        assert pin.split("Code ")[1][:6] in err.decode()  # the code the owner sees
        assert b"approved ahead" in out
        assert calls.read_text() == "reboot\n"
        boot = client.unlock(gw.url, host)
        assert boot.response.json().get("approved_ahead") is True
        assert client.opened(boot, client.poll(gw.url, boot.created.request_id)) == gw.secret
        assert any("ahead_used" in line for line in gw.audit(request_id))


def test_denied_reboots_nothing(zkv: Zkv, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw") as gw:
        _, calls = prepared(zkv, gw)
        proc = asked(zkv, "--no-reboot")
        gw.deny(pending(gw))
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 39 and "did not approve" in err.decode()
        assert "Traceback" not in err.decode() and not calls.exists()


def test_within_is_checked_before_anything_is_sent(zkv: Zkv) -> None:
    for bad in ("25h", "soon", "0"):
        result = zkv("reboot", "--approve-ahead", "--within", bad)
        assert result.code == 2 and "--within" in result.error_line
    assert protocol.AHEAD_MAX == 24 * 3600
