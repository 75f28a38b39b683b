"""Run the real ``zkv`` in a subprocess, with the recording fake zfs on PATH and no terminal."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fakezfs import FakeZfs
from zkv import keystore

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = b"correct horse battery"


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def error_line(self) -> str:
        lines = self.stderr.splitlines()
        assert "Traceback" not in self.stderr, self.stderr
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("zkv: error: "), self.stderr
        return lines[0]


@dataclass
class Zkv:
    tmp: Path
    fake: FakeZfs
    extra_env: dict[str, str]

    @property
    def keystore(self) -> Path:
        return self.tmp / "boot" / "zkv" / "keystore"

    @property
    def passphrase_file(self) -> Path:
        path = self.tmp / "passphrase"
        if not path.exists():
            path.write_bytes(PASSPHRASE + b"\n")
        return path

    def env(self) -> dict[str, str]:
        env = self.fake.env()
        env.pop("ZKV_KEYSTORE", None)
        return {
            **env,
            "PYTHONPATH": str(ROOT),
            "ZKV_TESTONLY_WEAKEN_KDF": "1",
            "ZKV_KEYSTORE": str(self.keystore),
            **self.extra_env,
        }

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "zkv_admin", *args],
            env=self.env(),
            cwd=self.tmp,
            start_new_session=True,  # no controlling terminal: prompts must refuse, not hang
            **kwargs,
        )

    def __call__(self, *args: str, stdin: bytes = b"") -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "zkv_admin", *args],
            input=stdin,
            capture_output=True,
            env=self.env(),
            cwd=self.tmp,
            start_new_session=True,
            timeout=60,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr.decode())

    def ok(self, *args: str, stdin: bytes = b"") -> Result:
        result = self(*args, stdin=stdin)
        assert result.code == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result

    def make_store(self, *entries: tuple[str, str, bytes]) -> bytes:
        """Like ``zkv init`` + ``zkv add`` but in process (fast): for tests of other commands."""
        repository_key = keystore.new_repository_key()
        store = keystore.create(repository_key, PASSPHRASE, keystore.WEAK_KDF)
        for target, keyformat, material in entries:
            store.put(keystore.Entry(target, keyformat), material)
        self.keystore.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        keystore.write(self.keystore, store)
        return repository_key

    def open(self) -> keystore.OpenKeystore:
        return keystore.read(self.keystore).open_with_passphrase(PASSPHRASE)

    def with_pass(self, *args: str, stdin: bytes = b"") -> Result:
        return self(*args, "--recovery-passphrase-file", str(self.passphrase_file), stdin=stdin)


RAW_A, RAW_B = bytes(range(32)), bytes(range(100, 132))
HEX_C = b"ab" * 32
PASS_D = b"dataset passphrase"

DATASETS: dict[str, dict[str, Any]] = {
    "tank/a": {"keyformat": "raw", "key": RAW_A},
    "tank/a/child": {"encryptionroot": "tank/a"},
    "tank/b": {"keyformat": "raw", "key": RAW_B},
    "tank/c": {"keyformat": "hex", "key": HEX_C},
    "tank/d": {"keyformat": "passphrase", "key": PASS_D},
    "tank/plain": {"encryptionroot": "-"},
}


@pytest.fixture
def zkv(tmp_path: Path) -> Zkv:
    fake = FakeZfs.create(tmp_path / "zfs", DATASETS)
    return Zkv(tmp_path, fake, {})


def secrets_in(fake: FakeZfs) -> Callable[[bytes], None]:
    """Return a checker: the secret never appears in any argv the fake saw."""

    def check(secret: bytes) -> None:
        forms = {secret, secret.hex().encode()}
        for argv, _ in fake.calls():
            joined = "\0".join(argv).encode("utf-8", "surrogateescape")
            assert not any(form in joined for form in forms), argv

    return check
