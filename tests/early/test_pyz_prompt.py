"""The console fallback racing the gateway, typed through a pty (pexpect) into the built pyz."""

from __future__ import annotations

import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from tests.early.conftest import PASSPHRASE, Machine, pending_request
from tests.harness.gateway import running_gateway


def spawn(machine: Machine) -> pexpect.spawn:
    argv = machine.argv("--tty", "/dev/tty", prompt="console")
    return pexpect.spawn(argv[0], argv[1:], env=machine.env(), encoding="utf-8", timeout=30)


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF, timeout=60)
    echo_on = bool(termios.tcgetattr(child.child_fd)[3] & termios.ECHO)
    child.close()
    assert echo_on, "terminal echo was not restored"
    return child.exitstatus, child.before or ""


@pytest.fixture
def down(machine: Machine) -> Machine:
    machine.gateway_url = "http://127.0.0.1:9"  # nothing listens there
    return machine


def test_gateway_down_passphrase_wins(down: Machine) -> None:
    child = spawn(down)
    child.expect("Recovery passphrase: ")
    child.sendline(PASSPHRASE.decode())
    status, rest = finish(child)
    assert status == 0, rest
    assert PASSPHRASE.decode() not in rest  # echo was off
    assert down.zfs.keystatus("rpool") == "available"
    assert "keys loaded: rpool" in rest


def test_wrong_passphrase_asks_again_then_gives_up(down: Machine) -> None:
    down.cmdline = "zkv.timeout=8"
    child = spawn(down)
    for _ in range(3):
        child.expect(r"Recovery passphrase( \(\d attempts left\))?: ")
        child.sendline("not the passphrase")
        child.expect("wrong recovery passphrase")
    child.expect("too many wrong recovery passphrases")
    status, rest = finish(child)
    # The gateway goes on until its own end; when both fail, the gateway's error is reported.
    assert status == 31, rest
    assert "Recovery passphrase" not in rest
    assert down.zfs.keystatus("rpool") == "unavailable"


def test_interrupt_after_wrong_passphrases_restores_the_terminal(down: Machine) -> None:
    down.settings = {"gateway": {"url": "http://127.0.0.1:9"}}
    # Long enough that the client still runs after three checks on a loaded machine (with 30 s
    # it once ended on its own first, status 31); the interrupt ends it long before.
    down.cmdline = "zkv.timeout=300"
    child = spawn(down)
    for _ in range(3):
        child.expect(r"Recovery passphrase( \(\d attempts left\))?: ")
        child.sendline("not the passphrase")
    child.expect("too many wrong recovery passphrases")
    child.sendintr()  # the hooks stop us the same way (SIGTERM/SIGINT): status 130
    status, _rest = finish(child)
    assert status == 130


def test_wrong_then_right_passphrase(down: Machine) -> None:
    child = spawn(down)
    child.expect("Recovery passphrase: ")
    child.sendline("not the passphrase")
    child.expect(r"\(2 attempts left\): ")
    child.sendline(PASSPHRASE.decode())
    status, rest = finish(child)
    assert status == 0, rest


def test_slow_gateway_passphrase_wins_while_a_poll_is_pending(
    machine: Machine, tmp_path: Path
) -> None:
    with running_gateway(tmp_path / "gw") as gw:  # nobody approves
        machine.enroll(gw)
        child = spawn(machine)
        child.expect("Recovery passphrase: ")
        child.expect(r"(request code|PIN) \d+ - ")
        request_id, _pin = pending_request(gw)
        started = time.monotonic()
        child.sendline(PASSPHRASE.decode())
        status, rest = finish(child)
        took = time.monotonic() - started
        requests = gw.cli("requests").stdout
        gw.deny(request_id)  # ends the gateway's side of the long-poll: a quick shutdown
    assert status == 0, rest
    assert took < 10, "the pending long-poll (25 s) must not hold up the unlock"
    assert " pending " in requests
    assert machine.zfs.keystatus("rpool") == "available"


def test_gateway_approval_withdraws_the_prompt(machine: Machine, tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw", secret=machine.repository_key.hex().encode()) as gw:
        machine.enroll(gw)
        child = spawn(machine)
        child.expect("Recovery passphrase: ")
        request_id, pin = pending_request(gw)
        gw.approve(request_id, pin)
        status, rest = finish(child)
    assert status == 0, rest
    assert "approved" in rest
    assert machine.zfs.keystatus("rpool") == "available"


# --- the gateway gives up while the prompt is open: say so, keep asking for a bounded while ----


@contextmanager
def denied_at_the_prompt(
    machine: Machine, tmp_path: Path, fallback: str
) -> Iterator[tuple[pexpect.spawn, float]]:
    """The client at its prompt, the owner's denial just sent; the gateway runs until exit.

    Yields the child and the monotonic time just before the denial: the client cannot
    learn of it earlier, so its fallback time is measured from there (timing from after
    the denial races the client under load)."""
    machine.settings = {"timeouts": {"fallback": fallback}}
    with running_gateway(tmp_path / "gw") as gw:
        machine.enroll(gw)
        child = spawn(machine)
        child.expect("Recovery passphrase: ")
        request_id, _pin = pending_request(gw)
        before_denial = time.monotonic()
        gw.deny(request_id)
        yield child, before_denial


def test_denial_is_announced_at_once_and_the_passphrase_still_works(
    machine: Machine, tmp_path: Path
) -> None:
    with denied_at_the_prompt(machine, tmp_path, "60") as (child, _):
        child.expect(
            r"the owner denied the unlock request; type the recovery passphrase "
            # m:ss of the 60 s left: how much already went depends on the machine's load
            r"\((?:0:[0-5]\d|1:00) left, then OpenZFS asks\)",
            timeout=5,
        )
        child.expect("Recovery passphrase: ")  # shown again under the news
        child.sendline(PASSPHRASE.decode())
        status, rest = finish(child)
    assert status == 0, rest
    assert machine.zfs.keystatus("rpool") == "available"


def test_after_a_denial_the_prompt_closes_after_the_fallback_time(
    machine: Machine, tmp_path: Path
) -> None:
    with denied_at_the_prompt(machine, tmp_path, "2") as (child, before_denial):
        child.expect("denied the unlock request; type the recovery passphrase", timeout=5)
        status, rest = finish(child)
        took = time.monotonic() - before_denial
    assert status == 33, rest  # the gateway's error: OpenZFS's prompt takes over
    assert 2 <= took < 30  # never before the fallback time; the upper bound is loose for load
    assert machine.zfs.keystatus("rpool") == "unavailable"


def test_zero_fallback_exits_at_once_on_denial(machine: Machine, tmp_path: Path) -> None:
    with denied_at_the_prompt(machine, tmp_path, "0") as (child, _):
        started = time.monotonic()  # an upper bound: timed from after the denial was sent
        status, rest = finish(child)
        took = time.monotonic() - started
    assert status == 33, rest
    assert "denied" in rest and "type the recovery passphrase" not in rest
    assert took < 5


def test_bad_release_is_announced_and_the_passphrase_still_works(
    machine: Machine, tmp_path: Path
) -> None:
    machine.settings = {"timeouts": {"fallback": "60"}}
    with running_gateway(tmp_path / "gw", approver="auto", secret=bytes(32).hex().encode()) as gw:
        machine.enroll(gw)
        child = spawn(machine)
        child.expect("the released key does not open the keystore; type the recovery passphrase")
        child.expect("Recovery passphrase: ")
        child.sendline(PASSPHRASE.decode())
        status, rest = finish(child)
    assert status == 0, rest
    assert machine.zfs.keystatus("rpool") == "available"


def test_expiry_is_announced_then_the_gateways_status(machine: Machine, tmp_path: Path) -> None:
    machine.settings = {"timeouts": {"fallback": "1"}}
    with running_gateway(tmp_path / "gw", settings={"REQUEST_TTL": 30}) as gw:  # the minimum
        machine.enroll(gw)
        child = spawn(machine)
        child.expect(r"(request code|PIN) \d+ - ")
        child.expect("expired before it was approved; type the recovery passphrase", timeout=60)
        started = time.monotonic()
        status, rest = finish(child)
    assert status == 34, rest
    assert time.monotonic() - started < 8
