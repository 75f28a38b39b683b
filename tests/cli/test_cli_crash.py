"""kill -9 during a keystore write leaves the old file or the new one, never a broken one."""

from __future__ import annotations

import random
import signal
import subprocess
import time

from tests.cli.conftest import PASSPHRASE, Zkv
from zkv import keystore

NEW = b"the new passphrase"


def passwd(zkv: Zkv, new: bytes) -> subprocess.Popen[bytes]:
    proc = zkv.popen(
        "passwd", "--recovery-passphrase-file", str(zkv.passphrase_file),
        "--new-passphrase-file", "-",
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(new + b"\n")
    proc.stdin.close()
    return proc


def opens_with(zkv: Zkv, *passphrases: bytes) -> bytes:
    sealed = keystore.read(zkv.keystore)  # parses: never torn
    for passphrase in passphrases:
        try:
            sealed.open_with_passphrase(passphrase)
        except keystore.KeystoreLocked:
            continue
        return passphrase
    raise AssertionError("the keystore opens with neither the old nor the new passphrase")


def test_kill_between_fsync_and_rename_keeps_old_file(zkv: Zkv) -> None:
    zkv.make_store()
    before = zkv.keystore.read_bytes()
    # Each atomic write pauses: first the recovery-only twin's (keystore.write), then this one.
    zkv.extra_env["ZKV_TESTONLY_PAUSE_BEFORE_RENAME"] = "8"
    proc = passwd(zkv, NEW)
    deadline = time.monotonic() + 30
    while not list(zkv.keystore.parent.glob(".keystore.tmp-*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert zkv.keystore.read_bytes() == before
    assert opens_with(zkv, PASSPHRASE) == PASSPHRASE
    # The complete temp file is private too, and opens with the new passphrase.
    (tmp,) = zkv.keystore.parent.glob(".keystore.tmp-*")
    assert tmp.stat().st_mode & 0o077 == 0
    keystore.SealedKeystore.parse(tmp.read_bytes()).open_with_passphrase(NEW)


def test_kill_at_random_times(zkv: Zkv) -> None:
    zkv.make_store()
    rng = random.Random(1)
    current = PASSPHRASE
    for i in range(8):
        new = b"passphrase number %d" % i
        zkv.passphrase_file.write_bytes(current + b"\n")
        proc = passwd(zkv, new)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        current = opens_with(zkv, current, new)
