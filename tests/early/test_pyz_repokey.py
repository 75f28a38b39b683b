"""After ``zkv rotate --repository-key`` (the admin CLI against the real gateway, approved by
the owner), the built zkv-early.pyz's next approved boot opens the keystore with the new key,
and the old key opens nothing any more."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.early.conftest import PASSPHRASE, ROOT_KEY, Machine, pending_request
from tests.harness.gateway import REPO, running_gateway
from zkv import keystore
from zkv.errors import KeystoreLocked


def rotate(machine: Machine, tmp_path: Path) -> subprocess.Popen[str]:
    """The admin CLI on the same machine: its keystore and host key, its early.conf."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "update-initramfs").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "rebuilt"}\n')
    (tools / "update-initramfs").chmod(0o755)
    (tmp_path / "passphrase").write_bytes(PASSPHRASE + b"\n")
    env = {
        **machine.env(),
        "PATH": f"{tools}:{machine.env()['PATH']}",
        "PYTHONPATH": str(REPO),
        "ZKV_KEYSTORE": str(machine.keystore),
        "ZKV_TESTONLY_WEAKEN_KDF": "1",
    }
    argv = ["rotate", "--repository-key", "--config", str(machine.write_config())]
    argv += ["--recovery-passphrase-file", str(tmp_path / "passphrase")]
    return subprocess.Popen(
        [sys.executable, "-m", "zkv_admin", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_the_next_boot_unlocks_with_the_new_key_only(machine: Machine, tmp_path: Path) -> None:
    old = machine.repository_key
    with running_gateway(tmp_path / "gw", secret=old.hex().encode()) as gw:
        machine.enroll(gw)
        proc = rotate(machine, tmp_path)
        request_id, pin = pending_request(gw, "repokey")
        in_flight = keystore.read(machine.keystore)
        assert len(in_flight.repository_key_ids()) == 2  # old slot kept until confirmed
        in_flight.open_with_repository_key(old)
        gw.approve(request_id, pin)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"PIN {pin}" in err and "holds the new repository key" in err
        (secret_file,) = (p for p in gw.directory.glob("zkv-testhost-*") if p.is_file())
        new = keystore.parse_repository_key(secret_file.read_bytes())
        assert new != old and new.hex() not in out + err + gw.output()
        sealed = keystore.read(machine.keystore)
        assert sealed.repository_key_ids() == [keystore.repository_key_id(new)]
        with pytest.raises(KeystoreLocked):
            sealed.open_with_repository_key(old)
        assert (tmp_path / "rebuilt").read_text() == "-u -k all\n" * 2

        boot = machine.start()
        request_id, pin = pending_request(gw)
        gw.approve(request_id, pin)
        _, err = boot.communicate(timeout=60)
    assert boot.returncode == 0, err
    assert "keys loaded: rpool" in err
    assert machine.zfs.keystatus("rpool") == "available"
    assert [stdin for argv, stdin in machine.zfs.calls() if "load-key" in argv] == [ROOT_KEY]
