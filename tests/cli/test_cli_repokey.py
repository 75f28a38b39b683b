"""``zkv rotate --repository-key`` and ``zkv reconcile`` against the real gateway: a denial, a
timeout, a failing secret source and a power cut (SIGKILL, ZKV_TESTONLY_CRASH_AT) at each step
leave a keystore that the key the gateway holds opens; reconcile then keeps only that slot."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Zkv
from tests.cli.test_cli_heartbeat import prepared
from tests.early.conftest import pending_request
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from zkv import keystore
from zkv.errors import KeystoreLocked

DENIED = 38  # RepositoryKeyNotRotated


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path / "gw") as gateway:
        yield gateway


def enrolled(zkv: Zkv, gw: RunningGateway) -> tuple[bytes, Path]:
    """The keystore's repository key is the host's secret on the gateway; the secret's file."""
    key, host, _ = prepared(zkv, gw.url)
    token = gw.invite(host.hostname, secret=key.hex().encode())
    assert client.enroll(gw.url, host, token).status_code == 202
    (secret,) = (p for p in gw.directory.glob(f"zkv-{host.hostname}-*") if p.is_file())
    return key, secret


def start(zkv: Zkv, *env: str) -> subprocess.Popen[bytes]:
    for setting in env:
        name, value = setting.split("=", 1)
        zkv.extra_env[name] = value
    conf = str(zkv.tmp / "early.conf")
    args = ["--config", conf, "--recovery-passphrase-file", str(zkv.passphrase_file)]
    return zkv.popen(
        "rotate", "--repository-key", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def opens_with_gateway_key(zkv: Zkv, secret: Path) -> keystore.OpenKeystore:
    return keystore.read(zkv.keystore).open_with_repository_key(
        keystore.parse_repository_key(secret.read_bytes())
    )


def slots(zkv: Zkv) -> list[str]:
    return keystore.read(zkv.keystore).repository_key_ids()


def reconcile(zkv: Zkv) -> str:
    conf = str(zkv.tmp / "early.conf")
    return zkv.with_pass("reconcile", "--config", conf).stdout.decode()


def test_denied_keeps_the_old_key(zkv: Zkv, gw: RunningGateway) -> None:
    key, secret = enrolled(zkv, gw)
    proc = start(zkv)
    request_id, _ = pending_request(gw, "repokey")
    assert len(slots(zkv)) == 2
    gw.deny(request_id)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == DENIED and "was denied; the old key stays" in err.decode()
    assert slots(zkv) == [keystore.repository_key_id(key)]
    assert secret.read_bytes().strip() == key.hex().encode()
    opens_with_gateway_key(zkv, secret)


def test_expired_keeps_the_old_key(zkv: Zkv, tmp_path: Path) -> None:
    """Nobody answers: the request expires (REQUEST_TTL 5 s), the old key stays."""
    with running_gateway(tmp_path / "short", settings={"REQUEST_TTL": 5}) as gw:
        key, secret = enrolled(zkv, gw)
        proc = start(zkv)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == DENIED and "was expired" in err.decode()
    assert slots(zkv) == [keystore.repository_key_id(key)]
    opens_with_gateway_key(zkv, secret)


def test_usage_errors_never_echo_and_change_nothing(zkv: Zkv, gw: RunningGateway) -> None:
    key, _ = enrolled(zkv, gw)
    pasted = zkv.with_pass("rotate", "--repository-key", "ab" * 32)
    assert pasted.code == 2 and "ab" * 32 not in pasted.stderr and pasted.error_line
    refused = zkv.with_pass("rotate", "-k", "ab" * 32)
    assert refused.code != 0 and "ab" * 32 not in refused.stderr
    assert zkv.with_pass("rotate").code == 2
    assert slots(zkv) == [keystore.repository_key_id(key)]


def test_a_secret_source_failure_is_settled_by_reconcile(zkv: Zkv, gw: RunningGateway) -> None:
    """The gateway cannot write (nor read) the secret when the key arrives: it answers 503,
    the host keeps both slots, and reconcile asks again once the source works."""
    key, secret = enrolled(zkv, gw)
    proc = start(zkv)
    request_id, pin = pending_request(gw, "repokey")
    kept = secret.with_name("kept")
    secret.rename(kept)
    secret.mkdir()  # the file source can neither replace nor read a folder
    gw.approve(request_id, pin)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 30 and "secret_unavailable" in err.decode(), err
    assert len(slots(zkv)) == 2
    secret.rmdir()
    kept.rename(secret)
    opens_with_gateway_key(zkv, secret)
    assert f"repository key: {keystore.repository_key_id(key)}" in reconcile(zkv)
    assert slots(zkv) == [keystore.repository_key_id(key)]
    events = gw.audit(request_id)
    assert any("repokey_failed" in e for e in events), "\n".join(events)


@pytest.mark.parametrize("step", ["prepared", "requested", "approved", "confirmed"])
def test_a_power_cut_at_each_step(zkv: Zkv, gw: RunningGateway, step: str) -> None:
    key, secret = enrolled(zkv, gw)
    proc = start(zkv, f"ZKV_TESTONLY_CRASH_AT={step}")
    if step in ("approved", "confirmed"):
        gw.approve(*pending_request(gw, "repokey"))
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = opens_with_gateway_key(zkv, secret)  # whatever the gateway holds opens it
    held = keystore.repository_key_id(keystore.parse_repository_key(secret.read_bytes()))
    assert held in store.repository_key_ids()
    gateway_has_new = step == "confirmed"
    assert (held != keystore.repository_key_id(key)) == gateway_has_new
    assert len(slots(zkv)) == 2
    assert f"repository key: {held}" in reconcile(zkv)
    assert slots(zkv) == [held]
    opens_with_gateway_key(zkv, secret)
    if gateway_has_new:
        with pytest.raises(KeystoreLocked):
            keystore.read(zkv.keystore).open_with_repository_key(key)
