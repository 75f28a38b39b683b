"""``zkv doctor`` (in process, with installed paths moved into tmp) and ``zkv enroll``."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import RAW_A, Zkv
from tests.harness.gateway import running_gateway
from zkv import hostkey, keystore, protocol
from zkv.zfs import Zfs
from zkv_admin import doctor


def installed(zkv: Zkv, tmp: Path) -> doctor.Places:
    zkv.make_store(("tank/a", "raw", RAW_A))
    hostkey.generate(zkv.keystore.parent / "host.key")
    (tmp / "gateway-ca.pem").write_text("the gateway's CA\n")
    (tmp / "early.conf").write_text(
        f"[gateway]\nurl = https://zkv.example.net\nca_file = {tmp / 'gateway-ca.pem'}\n"
    )
    (tmp / "hook").write_text("#!/bin/sh\n")
    image = tmp / "initrd.img-test"
    image.write_bytes(b"")
    os.utime(image, (zkv.keystore.stat().st_mtime + 10,) * 2)
    return doctor.Places(
        config=str(tmp / "early.conf"),
        hooks=(str(tmp / "hook"),),
        dracut_modules=str(tmp / "nothing*"),
        boot_images=(str(tmp / "initrd.img-{release}"),),
        release="test",
    )


def findings(zkv: Zkv, places: doctor.Places, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(zkv.fake.state_dir))
    monkeypatch.setattr(doctor, "_list_image", lambda image: None)
    zfs = Zfs(binary=zkv.env()["ZKV_ZFS"])
    return [text for ok, text in doctor.check_all(zkv.keystore, places, zfs) if not ok]


def test_doctor_healthy(zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert findings(zkv, installed(zkv, tmp_path), monkeypatch) == []


def test_doctor_explains_each_problem(
    zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = installed(zkv, tmp_path)
    zkv.keystore.chmod(0o644)
    (zkv.keystore.parent / "host.key").unlink()
    (tmp_path / "hook").unlink()
    (tmp_path / "early.conf").write_text("[gateway]\nurll = x\n")
    os.utime(tmp_path / "initrd.img-test", (0, 0))
    state = zkv.fake.state()
    del state["datasets"]["tank/a"]
    zkv.fake.write(state)
    problems = findings(zkv, places, monkeypatch)
    assert len(problems) == 6, problems
    for expected in ("settings", "chmod 600", "host key", "tank/a", "boot hook", "older"):
        assert any(expected in p for p in problems), (expected, problems)
    assert all(p.count("\n") == 0 and p.endswith(".") for p in problems)


def test_doctor_says_when_a_remote_wipe_would_fail(
    zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = installed(zkv, tmp_path)
    Path(keystore.recovery_only_path(zkv.keystore)).unlink()  # as left by an older zkv
    (problem,) = findings(zkv, places, monkeypatch)
    assert "remote wipe would fail" in problem and "zkv passwd" in problem


def trust(places: doctor.Places) -> list[str]:
    """What doctor says about the settings, but that they parse."""
    return [f"{ok} {text}" for ok, text in doctor._config(places) if " is valid (" not in text]


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        (
            "",
            "False the boot client's settings are not usable: configuration error: early.conf "
            "must name the gateway's CA ([gateway] ca_file = PATH, or ca_file = system for the "
            "system bundle) or pin its key ([gateway] pin_sha256).",
        ),
        (
            "ca_file = /nonexistent/ca.pem",
            "False the gateway CA file /nonexistent/ca.pem is missing: no image can be built.",
        ),
        (
            "ca_file = system",
            "True the boot trusts the gateway on the word of any CA of the system bundle "
            "(ca_file = system; its own CA is narrower).",
        ),
        (
            "pin_sha256 = 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "True the boot trusts the gateway on the word of its pinned key (1 pin_sha256).",
        ),
    ],
)
def test_doctor_says_what_the_boot_trusts(
    zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str, said: str
) -> None:
    places = installed(zkv, tmp_path)
    (tmp_path / "early.conf").write_text(f"[gateway]\nurl = https://zkv.example.net\n{lines}\n")
    assert trust(places) == [said]


def test_doctor_names_the_gateways_own_ca(
    zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "gateway-ca.pem"
    assert trust(installed(zkv, tmp_path)) == [
        f"True the boot trusts the gateway on the word of its own CA {ca}."
    ]


def test_doctor_sees_a_host_key_newer_than_the_image_and_an_interrupted_rotation(
    zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = installed(zkv, tmp_path)
    key = zkv.keystore.parent / "host.key"
    os.utime(key, (key.stat().st_mtime + 20,) * 2)
    state = zkv.fake.state()
    state["datasets"]["tank/a"]["props"] = {"zkv:epoch:pending": "2"}
    zkv.fake.write(state)
    problems = findings(zkv, places, monkeypatch)
    assert len(problems) == 2, problems
    assert "older than the host key" in problems[1] and "zkv reconcile" in problems[0]


def test_doctor_cli_exit_code(zkv: Zkv) -> None:
    zkv.make_store()
    result = zkv("doctor")
    assert result.code == 55
    assert "PROBLEM" in result.stdout.decode()
    assert result.error_line.startswith("zkv: error: ") and "problem(s) found" in result.error_line


# --- enroll against a stand-in gateway ------------------------------------------------------


GATEWAY_CLOCK = {"offset": 0.0}  # how far the stand-in's clock is ahead of ours


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    issued: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw) if raw else None
            received.append({"path": self.path, "body": body})
            if self.path == protocol.PATH_CHALLENGES:
                issued.append(os.urandom(40).hex())
                now = int(time.time() + GATEWAY_CLOCK["offset"])
                self._answer(201, protocol.Challenge(issued[-1], now).to_json())
                return
            request = protocol.EnrollRequest.from_json(body)
            request.verify()
            assert request.challenge == issued[-1]
            self._answer(202, protocol.EnrollAccepted(request.host_id, "approved").to_json())

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            answer = json.dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_enroll_creates_host_key_and_registers(
    zkv: Zkv, gateway: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = gateway
    zkv.make_store()
    token = protocol.new_invite_token()
    out = zkv.ok(
        "enroll", "--gateway", url + "/", "--hostname", "box1", stdin=token.encode() + b"\n"
    )
    key_path = zkv.keystore.parent / "host.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    public = hostkey.load(key_path)
    host_id = protocol.host_id_of(protocol.crypto.ed25519_public(public))
    assert out.stdout.decode().splitlines() == [f"host id: {host_id}", "status:  approved"]
    assert [r["path"] for r in received] == [protocol.PATH_CHALLENGES, protocol.PATH_HOSTS]
    assert received[1]["body"]["hostname"] == "box1"
    assert received[1]["body"]["token"] == token  # in the signed body (verified above)
    assert "clock" not in out.stderr
    token_file = zkv.keystore.parent / "token"
    token_file.write_text(protocol.new_invite_token())
    zkv.ok("enroll", "--gateway", url, "--hostname", "box1", "--token-file", str(token_file))
    assert received[3]["body"]["token"] == token_file.read_text()
    assert hostkey.load(key_path) == public  # the same key again


def test_enroll_never_takes_the_token_from_argv_nor_repeats_it(
    zkv: Zkv, gateway: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = gateway
    zkv.make_store()
    token = protocol.new_invite_token()
    result = zkv("enroll", "--gateway", url, "--token", token)
    assert result.code == 2 and token not in result.error_line and not received
    result = zkv(
        "enroll", "--gateway", url, "--hostname", "box1", stdin=b"not-a-token-" + token[5:].encode()
    )
    assert result.code != 0 and "not an invite token" in result.error_line
    assert token[5:] not in result.error_line and not received


@pytest.mark.parametrize("offset", [3600.0, -3600.0])
def test_enroll_with_a_clock_an_hour_off(
    zkv: Zkv, gateway: tuple[str, list[dict[str, Any]]], offset: float
) -> None:
    url, _received = gateway
    zkv.make_store()
    GATEWAY_CLOCK["offset"] = offset
    try:
        token = protocol.new_invite_token().encode()
        out = zkv.ok("enroll", "--gateway", url, "--hostname", "box1", stdin=token)
    finally:
        GATEWAY_CLOCK["offset"] = 0.0
    said = re.search(r"clock is off by (\d+) s from the gateway's; fix NTP\n", out.stderr)
    assert said and abs(int(said[1]) - 3600) <= 2  # whole seconds, and time passes on the way


def test_enroll_with_the_real_gateway(zkv: Zkv, tmp_path: Path) -> None:
    zkv.make_store()
    with running_gateway(tmp_path / "gw") as gw:
        token = gw.invite("box1").encode()
        out = zkv.ok("enroll", "--gateway", gw.url, "--hostname", "box1", stdin=token)
        host_id = out.stdout.decode().split()[2]
        listed = [line.split()[:3] for line in gw.cli("hosts", "list").stdout.splitlines()]
        assert [host_id, "approved", "box1"] in listed
        used = zkv("enroll", "--gateway", gw.url, "--hostname", "box1", stdin=token)
        assert used.code == 32  # a new challenge, but the invite is used up
        token = gw.invite("box1", "--replace").encode()
        again = zkv("enroll", "--gateway", gw.url, "--hostname", "box1", stdin=token)
        assert again.code == 0 and b"status:  approved" in again.stdout


def test_enroll_unreachable(zkv: Zkv) -> None:
    zkv.make_store()
    hostkey.generate(zkv.keystore.parent / "host.key")
    token = protocol.new_invite_token().encode()
    result = zkv("enroll", "--gateway", "http://127.0.0.1:9", stdin=token)
    assert result.code == 31 and "cannot reach the gateway" in result.error_line


def test_doctor_sees_an_interrupted_repository_key_rotation(
    zkv: Zkv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = installed(zkv, tmp_path)
    store = zkv.open()
    store.add_repository_key(keystore.new_repository_key())
    keystore.write(zkv.keystore, store)
    os.utime(tmp_path / "initrd.img-test", (zkv.keystore.stat().st_mtime + 10,) * 2)
    (problem,) = findings(zkv, places, monkeypatch)
    assert "repository key rotation was interrupted" in problem and "zkv reconcile" in problem
