"""The built zkv-early.pyz against the real gateway on loopback (no prompt: the gateway alone)."""

from __future__ import annotations

import subprocess
import time
import zipfile
from pathlib import Path

from tests.early.conftest import (
    BOOT_FLAGS,
    DATA_KEY,
    PASSPHRASE,
    ROOT_KEY,
    TARGET_PYTHON,
    Machine,
    make_machine,
    pending_request,
)
from tests.harness.gateway import running_gateway
from zkv.encoding import b64
from zkv_early import build_pyz, handover


def assert_no_secret(text: str, *secrets: bytes) -> None:
    for secret in (ROOT_KEY, DATA_KEY, *secrets):
        for form in (secret.hex(), b64(secret), secret.decode("latin-1")):
            assert form not in text


def test_pyz_holds_only_the_allowlisted_modules(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as zf:
        names = set(zf.namelist())
    assert names == build_pyz.ALLOWED
    assert not any(n.endswith(".py") for n in names)
    assert not any(
        n.startswith(("zkv_early/admin", "gateway", "requests", "cryptography")) for n in names
    )
    assert pyz.read_bytes().startswith(b"#!/usr/bin/python3 -IS\n")


def test_help_documents_the_hook_contract(pyz: Path) -> None:
    top = subprocess.run(
        [TARGET_PYTHON, BOOT_FLAGS, str(pyz), "--help"], capture_output=True, text=True, check=True
    ).stdout
    sub = subprocess.run(
        [TARGET_PYTHON, BOOT_FLAGS, str(pyz), "unlock", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for word in ("--config", "--cmdline", "unlock", "handover-load", "zkv=off", "exit status"):
        assert word in top
    for word in ("--root", "--prompt", "ask-password", "--tty", "--handover"):
        assert word in sub


def test_approved_by_the_owner_loads_root_and_hands_over_the_rest(
    machine: Machine, tmp_path: Path
) -> None:
    machine.cmdline = "zkv.debug"  # even the debug output carries no key material
    with running_gateway(tmp_path / "gw", secret=machine.repository_key.hex().encode()) as gw:
        machine.enroll(gw)
        proc = machine.start()
        request_id, pin = pending_request(gw)
        gw.approve(request_id, pin)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # The code approves nothing under the page policy: a request code, and where to approve.
    assert f"request code {pin} - approve at " in err and f"PIN {pin}" not in err
    assert "boot flags: zkv.debug" in err  # reported, signed, in the request
    assert "keys loaded: rpool" in err
    assert machine.zfs.keystatus("rpool") == "available"
    # Keys travel on stdin only, never argv; nothing secret on the console.
    for argv, stdin in machine.zfs.calls():
        assert_no_secret(" ".join(argv), machine.repository_key)
        if "load-key" in argv:
            assert stdin == ROOT_KEY
    assert_no_secret(out + err, machine.repository_key)
    # tank's pool is not imported yet: its key waits in a root-only file on a tmpfs.
    assert machine.handover.stat().st_mode & 0o777 == 0o600
    assert machine.handover.parent.stat().st_mode & 0o777 == 0o700
    assert handover.read(str(machine.handover)).candidates("tank") == [DATA_KEY]


def test_handover_load_in_the_real_root_loads_then_wipes(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        assert machine.run().returncode == 0
    machine.import_data_pool()
    result = machine.run("handover-load")
    assert result.returncode == 0, result.stderr
    assert machine.zfs.keystatus("tank") == "available"
    assert not machine.handover.exists() and not machine.handover.parent.exists()
    again = machine.run("handover-load")  # nothing handed over: still success
    assert again.returncode == 0


def test_handover_load_fails_visibly_for_a_pool_not_imported(
    machine: Machine, tmp_path: Path
) -> None:
    """tank's import failed (or comes later): its key is dropped with the file, and the unit
    fails, saying how to load it afterwards, instead of succeeding with tank locked."""
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        assert machine.run().returncode == 0
    result = machine.run("handover-load")
    assert result.returncode == 48, result.stderr
    assert "tank" in result.stderr and "zkv unlock tank" in result.stderr
    assert "tank" not in machine.zfs.state()["datasets"]  # still not imported: nothing loaded
    assert not machine.handover.exists() and not machine.handover.parent.exists()
    assert_no_secret(result.stdout + result.stderr, machine.repository_key)


def test_denied(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw") as gw:
        machine.enroll(gw)
        proc = machine.start()
        request_id, _pin = pending_request(gw)
        gw.deny(request_id)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    assert proc.returncode == 33, err
    assert took < 5, "without a prompt a denial ends the run at once"
    assert "denied" in err
    assert machine.zfs.keystatus("rpool") == "unavailable"
    assert not machine.handover.exists()


def test_expired(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw", settings={"REQUEST_TTL": 30}) as gw:
        machine.enroll(gw)
        result = machine.run(timeout=90)
    assert result.returncode == 34, result.stderr
    assert "expired" in result.stderr


def test_unenrolled_host_is_refused(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw", approver="auto") as gw:
        machine.gateway_url = gw.url
        result = machine.run()
    assert result.returncode == 32, result.stderr


def test_host_past_its_deadman_window_is_refused(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw", approver="auto") as gw:
        host_id = machine.enroll(gw)
        gw.cli("hosts", "deadman", host_id, "--window", "1s")
        time.sleep(2)
        result = machine.run()
        audit = " ".join(gw.audit())
    assert result.returncode == 32 and "suspended" in result.stderr, result.stderr
    assert "host is suspended" in audit and "unlock_requested" not in audit
    assert machine.zfs.keystatus("rpool") == "unavailable"


def test_released_key_that_does_not_open_the_keystore(machine: Machine, tmp_path: Path) -> None:
    other = bytes(32).hex().encode()
    with running_gateway(tmp_path / "gw", approver="auto", secret=other) as gw:
        machine.enroll(gw)
        result = machine.run()
    assert result.returncode == 15, result.stderr
    assert machine.zfs.keystatus("rpool") == "unavailable"
    assert_no_secret(result.stderr, machine.repository_key, bytes(32))


def test_corrupt_keystore_fails_before_asking_anyone(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        data = machine.keystore.read_bytes()
        machine.keystore.write_bytes(data[: len(data) // 2])
        result = machine.run()
        assert not [line for line in gw.audit() if "unlock_requested" in line]
    assert result.returncode == 13, result.stderr


def test_gateway_down_without_prompt_gives_up_in_time(machine: Machine) -> None:
    machine.cmdline = "quiet zkv.timeout=3"
    started = time.monotonic()
    result = machine.run()
    assert result.returncode in (31, 43), result.stderr  # unreachable, or out of time
    assert time.monotonic() - started < 15
    assert "retrying" in result.stderr


def test_keys_already_loaded_needs_no_gateway(machine: Machine) -> None:
    state = machine.zfs.state()
    state["datasets"]["rpool"]["keystatus"] = "available"
    machine.zfs.write(state)
    result = machine.run("--root", "rpool/ROOT/debian")  # gateway url points at a closed port
    assert result.returncode == 0, result.stderr
    assert "already loaded" in result.stderr


def test_root_without_keystore_entry(machine: Machine) -> None:
    state = machine.zfs.state()
    state["datasets"]["other"] = {
        "encryptionroot": "other",
        "keyformat": "raw",
        "key": "",
        "keystatus": "unavailable",
    }
    machine.zfs.write(state)
    assert machine.run("--root", "other").returncode == 16


def test_root_given_as_child_dataset(tmp_path: Path, pyz: Path, shm: Path) -> None:
    with running_gateway(tmp_path / "gw", approver="auto") as gw:
        m = make_machine(tmp_path / "m", pyz, shm, bytes.fromhex(gw.secret.decode()))
        m.enroll(gw)
        result = m.run("--root", "rpool/ROOT/debian", "--root", "bpool")
    assert result.returncode == 0, result.stderr
    assert m.zfs.keystatus("rpool") == "available"


def test_sigterm_while_waiting_for_approval(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw") as gw:  # nobody approves
        machine.enroll(gw)
        proc = machine.start()
        request_id, _pin = pending_request(gw)
        started = time.monotonic()
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
        took = time.monotonic() - started
        gw.deny(request_id)  # ends the gateway's side of the long-poll: a quick shutdown
    assert proc.returncode == 130, err
    assert took < 5


def test_ask_password_prompt_wins_when_the_gateway_is_down(machine: Machine) -> None:
    """dracut with systemd: the passphrase comes from systemd-ask-password (a stand-in here)."""
    bin_dir = machine.root / "bin"
    bin_dir.mkdir()
    ask = bin_dir / "systemd-ask-password"
    ask.write_text('#!/bin/sh\n[ "$1" = --no-tty ] || exit 3\nprintf "%s\\n" "$ZKV_TEST_TYPED"\n')
    ask.chmod(0o755)
    env = {**machine.env(), "ZKV_TEST_TYPED": PASSPHRASE.decode()}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(
        machine.argv(prompt="ask-password"), env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "recovery passphrase accepted" in result.stderr
    assert machine.zfs.keystatus("rpool") == "available"
