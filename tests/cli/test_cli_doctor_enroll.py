"""``zkv doctor`` (in process, with installed paths moved into tmp) and ``zkv enroll``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import RAW_A, Zkv
from zkv import hostkey, keystore, protocol
from zkv.zfs import Zfs
from zkv_admin import doctor


def installed(zkv: Zkv, tmp: Path) -> doctor.Places:
    zkv.make_store(("tank/a", "raw", RAW_A))
    hostkey.generate(zkv.keystore.parent / "host.key")
    (tmp / "early.conf").write_text("[gateway]\nurl = https://zkv.example.net\n")
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


def test_doctor_cli_exit_code(zkv: Zkv) -> None:
    zkv.make_store()
    result = zkv("doctor")
    assert result.code == 55
    assert "PROBLEM" in result.stdout.decode()
    assert result.error_line.startswith("zkv: error: ") and "problem(s) found" in result.error_line


# --- enroll against a stand-in gateway ------------------------------------------------------


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "body": body})
            request = protocol.EnrollRequest.from_json(body)
            request.verify()
            answer = json.dumps(protocol.EnrollAccepted(request.host_id, "pending").to_json())
            self.send_response(202)
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
    out = zkv.ok("enroll", "--gateway", url + "/", "--hostname", "box1")
    key_path = zkv.keystore.parent / "host.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    public = hostkey.load(key_path)
    host_id = protocol.host_id_of(protocol.crypto.ed25519_public(public))
    assert out.stdout.decode().splitlines() == [f"host id: {host_id}", "status:  pending"]
    assert "approve" in out.stderr
    assert received[0]["path"] == protocol.PATH_HOSTS
    assert received[0]["body"]["hostname"] == "box1"
    zkv.ok("enroll", "--gateway", url, "--hostname", "box1")  # the same key again
    assert hostkey.load(key_path) == public


def test_enroll_unreachable(zkv: Zkv) -> None:
    zkv.make_store()
    hostkey.generate(zkv.keystore.parent / "host.key")
    result = zkv("enroll", "--gateway", "http://127.0.0.1:9")
    assert result.code == 31 and "cannot reach the gateway" in result.error_line
