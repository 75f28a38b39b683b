"""``zkv heartbeat`` against the real gateway under gunicorn: alive, then wiped (the keystore
loses its repository slot, keeps its recovery slot, and the boot image is rebuilt); and what a
forged "wipe" from a fake gateway can cost: unattended unlock, never the data."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import PASSPHRASE, RAW_A, Zkv
from tests.harness import protocol_client as client
from tests.harness.gateway import running_gateway
from zkv import hostkey, keystore, protocol
from zkv.errors import KeystoreLocked


def prepared(zkv: Zkv, url: str) -> tuple[bytes, client.Host, Path]:
    """A keystore, a host key beside it, a fake update-initramfs on PATH, and early.conf."""
    repository_key = zkv.make_store(("tank/a", "raw", RAW_A))
    key_path = zkv.keystore.parent / "host.key"
    hostkey.generate(key_path)
    tools = zkv.tmp / "tools"
    tools.mkdir()
    rebuilt = zkv.tmp / "rebuilt"
    script = tools / "update-initramfs"
    script.write_text(f'#!/bin/sh\necho "$@" >> {rebuilt}\n')
    script.chmod(0o755)
    zkv.extra_env["PATH"] = f"{tools}:{zkv.fake.env()['PATH']}"
    conf = zkv.tmp / "early.conf"
    conf.write_text(f"[gateway]\nurl = {url}\n")
    return repository_key, client.Host("box1", hostkey.load(key_path)), rebuilt


def test_alive_then_wiped(zkv: Zkv, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw") as gw:
        repository_key, host, rebuilt = prepared(zkv, gw.url)
        conf = str(zkv.tmp / "early.conf")
        refused = zkv("heartbeat", "--config", conf)
        assert refused.code == 32 and "refused" in refused.error_line  # not enrolled yet
        gw.admit(host)
        assert zkv.ok("heartbeat", "--config", conf).stdout == b"heartbeat: ok\n"
        keystore.read(zkv.keystore).open_with_repository_key(repository_key)
        assert not rebuilt.exists()

        gw.cli("hosts", "wipe", host.host_id)
        out = zkv.ok("heartbeat", "--config", conf)
        assert out.stdout == b"heartbeat: wiped\n" and "recovery passphrase" in out.stderr
        assert rebuilt.read_text() == "-u -k all\n"
        sealed = keystore.read(zkv.keystore)
        with pytest.raises(KeystoreLocked):
            sealed.open_with_repository_key(repository_key)
        assert sealed.open_with_passphrase(PASSPHRASE).candidates("tank/a") == [RAW_A]
        assert [p.name for p in gw.directory.glob("zkv-box1-*.disabled")]
        assert any("wipe_sent" in line for line in gw.audit())


@pytest.fixture
def forger() -> Iterator[str]:
    """Anyone who can answer in the gateway's place, answering every heartbeat "wipe"."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == protocol.PATH_CHALLENGES:  # challenges are not vouched for either
                answer, status = {"challenge": "0" * 80, "now": int(time.time())}, 201
            else:
                answer, status = {"action": "wipe"}, 200
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_forged_wipe_costs_unattended_unlock_never_the_data(zkv: Zkv, forger: str) -> None:
    repository_key, _, _ = prepared(zkv, forger)
    zkv.ok("heartbeat", "--config", str(zkv.tmp / "early.conf"))
    sealed = keystore.read(zkv.keystore)
    assert [slot.kind for slot in sealed.slots] == [keystore.SLOT_RECOVERY]
    assert sealed.open_with_passphrase(PASSPHRASE).candidates("tank/a") == [RAW_A]
    # The admin puts unattended unlock back with the passphrase and the repository key.
    store = sealed.open_with_passphrase(PASSPHRASE)
    store.set_repository_key(repository_key)
    keystore.write(zkv.keystore, store)
    keystore.read(zkv.keystore).open_with_repository_key(repository_key)


def test_bad_settings_are_one_line(zkv: Zkv) -> None:
    zkv.make_store()
    missing = zkv("heartbeat", "--config", str(zkv.tmp / "nope.conf"))
    assert missing.code == 3 and "is missing" in missing.error_line
    (zkv.tmp / "early.conf").write_text("[gateway]\nurl = http://127.0.0.1:9\n")
    no_key = zkv("heartbeat", "--config", str(zkv.tmp / "early.conf"))
    assert no_key.code == 19 and no_key.error_line
    hostkey.generate(zkv.keystore.parent / "host.key")
    unreachable = zkv("heartbeat", "--config", str(zkv.tmp / "early.conf"))
    assert unreachable.code == 31 and "cannot reach the gateway" in unreachable.error_line
