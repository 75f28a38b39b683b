"""Passphrases are asked on the terminal, twice, without echo (driven through a real pty)."""

from __future__ import annotations

import sys

import pexpect
import pytest

from tests.cli.conftest import Zkv
from zkv import keystore


def spawn(zkv: Zkv, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "zkv_admin", *args], env=zkv.env(), cwd=str(zkv.tmp),
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("repeat", ["a tty passphrase", "a different one"])
def test_init_asks_twice_without_echo(zkv: Zkv, repeat: str) -> None:
    child = spawn(zkv, "init", "--repository-key-file", str(zkv.tmp / "rk"))
    child.expect("New recovery passphrase: ")
    child.sendline("a tty passphrase")
    child.expect("Repeat to confirm: ")
    between = child.before.decode()
    child.sendline(repeat)
    rest = child.read().decode()
    child.close()
    for typed in ("a tty passphrase", repeat):
        assert typed not in between + rest  # echo was off
    if repeat == "a tty passphrase":
        assert child.exitstatus == 0, rest
        keystore.read(zkv.keystore).open_with_passphrase(b"a tty passphrase")
    else:
        assert child.exitstatus == 4 and "differ" in rest
        assert not zkv.keystore.exists()
