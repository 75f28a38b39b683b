"""Integration fixtures: the BUILT zkv-early.pyz under Debian's /usr/bin/python3 -I -S, against the
real gateway (tests/harness/gateway.py) on loopback, with the recording fake zfs and a keystore
made with the shared keystore module.

The pyz finds ``cryptography`` where an initramfs has it: Debian's python3-cryptography in
/usr/lib/python3/dist-packages (apt-get install python3-cryptography python3-cffi-backend).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fakes.fakezfs import FakeZfs
from tests.harness.gateway import RunningGateway
from tests.harness.protocol_client import challenge
from zkv import hostkey, keystore, protocol
from zkv.encoding import b64
from zkv_early import build_pyz

TARGET_PYTHON = "/usr/bin/python3"
BOOT_FLAGS = "-IS"  # as the hooks start the client: isolated, no site
PASSPHRASE = b"correct horse battery"
ROOT_KEY = bytes(range(32))  # raw key of rpool
DATA_KEY = b"tank passphrase 1"  # passphrase of tank (imported later: handed over)


def _target_ready() -> str | None:
    if not os.access(TARGET_PYTHON, os.X_OK):
        return f"{TARGET_PYTHON} missing"
    probe = subprocess.run(
        [TARGET_PYTHON, "-I", "-c", "import cryptography.hazmat.primitives.ciphers.aead"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return "Debian python3-cryptography missing (apt-get install python3-cryptography)"
    return None


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _target_ready()
    if reason:
        pytest.skip(reason)
    return build_pyz.build(tmp_path_factory.mktemp("pyz") / "zkv-early.pyz", TARGET_PYTHON)


@pytest.fixture
def shm() -> Iterator[Path]:
    """A private folder on a tmpfs, where the handover file may go (as /run at boot)."""
    path = Path(tempfile.mkdtemp(prefix="zkv-test-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Machine:
    """One simulated boot: keystore, host key, config and fake zfs in a temp folder."""

    root: Path
    pyz: Path
    zfs: FakeZfs
    handover: Path
    repository_key: bytes
    gateway_url: str = "http://127.0.0.1:9"
    cmdline: str = ""
    settings: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def keystore(self) -> Path:
        return self.root / "keystore"

    @property
    def host_key(self) -> Path:
        return self.root / "host.key"

    def write_config(self) -> Path:
        sections: dict[str, dict[str, str]] = {
            "gateway": {"url": self.gateway_url, "request_timeout": "5"},
            "host": {
                "keystore": str(self.keystore),
                "host_key": str(self.host_key),
                "name": "testhost",
            },
            "timeouts": {"network": "5", "total": "60"},
        }
        for name, values in self.settings.items():
            sections.setdefault(name, {}).update(values)
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
            for name, values in sections.items()
        )
        (self.root / "early.conf").write_text(text)
        (self.root / "cmdline").write_text(self.cmdline + "\n")
        return self.root / "early.conf"

    def argv(self, *args: str, prompt: str = "none") -> list[str]:
        config = self.write_config()
        command = [
            TARGET_PYTHON,
            BOOT_FLAGS,
            str(self.pyz),
            "--config",
            str(config),
            "--cmdline",
            str(self.root / "cmdline"),
        ]
        if args and args[0] == "handover-load":
            return [*command, "handover-load", "--handover", str(self.handover), *args[1:]]
        return [*command, "unlock", "--prompt", prompt, "--handover", str(self.handover), *args]

    def env(self) -> dict[str, str]:
        return self.zfs.env()

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Run in the background (the test answers as the owner meanwhile)."""
        return subprocess.Popen(
            self.argv(*args),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def import_data_pool(self) -> None:
        """What an import does to the fake zfs: the data pool tank appears, its key unloaded."""
        state = self.zfs.state()
        state["datasets"]["tank"] = {
            "encryptionroot": "tank",
            "keyformat": "passphrase",
            "key": b64(DATA_KEY),
            "keystatus": "unavailable",
        }
        self.zfs.write(state)

    def enroll(self, gw: RunningGateway) -> str:
        """The owner invites the host; its key enrols with the token over the wire."""
        private = hostkey.load(self.host_key)
        token = gw.invite("testhost")
        req = protocol.EnrollRequest.create("testhost", private, token, challenge(gw.url).challenge)
        data = json.dumps(req.to_json()).encode()
        post = urllib.request.Request(
            gw.url + protocol.PATH_HOSTS, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            accepted = protocol.EnrollAccepted.from_json(json.load(response))
        assert accepted.status == "approved"
        self.gateway_url = gw.url
        return accepted.host_id


def make_machine(root: Path, pyz: Path, handover_dir: Path, repository_key: bytes) -> Machine:
    root.mkdir(parents=True, exist_ok=True)
    store = keystore.create(repository_key, PASSPHRASE, kdf=keystore.WEAK_KDF)
    store.put(keystore.Entry("rpool", "raw"), ROOT_KEY)
    store.put(keystore.Entry("tank", "passphrase"), DATA_KEY)
    keystore.write(root / "keystore", store)
    hostkey.generate(root / "host.key")
    zfs = FakeZfs.create(
        root / "zfs",
        {
            "rpool": {"keyformat": "raw", "key": ROOT_KEY, "keystatus": "unavailable"},
            "rpool/ROOT": {"encryptionroot": "rpool"},
            "rpool/ROOT/debian": {"encryptionroot": "rpool"},
            "bpool": {"encryptionroot": "-"},
        },
    )
    return Machine(root, pyz, zfs, handover_dir / "zkv" / "handover", repository_key)


@pytest.fixture
def machine(tmp_path: Path, pyz: Path, shm: Path) -> Machine:
    return make_machine(tmp_path / "machine", pyz, shm, os.urandom(32))


def wait_for(predicate: object, timeout: float = 30.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


_PIN_IN_TEXT = re.compile(r"\b(?:Code|Reply) ([0-9]{4,12})\b")


_ASKS = {"unlock": "asks to unlock", "repokey": "asks to rotate its repository key"}


def pending_request(gw: RunningGateway, kind: str = "unlock") -> tuple[str, str]:
    """(request id, PIN) of the request of ``kind`` (unlock, repokey) waiting for the owner."""

    def find() -> tuple[str, str] | None:
        rows = [line.split() for line in gw.cli("requests").stdout.splitlines()]
        ids = [r[0] for r in rows if len(r) > 2 and r[1] == kind and r[2] == "pending"]
        # "Code 482913." (the page policy) or "Reply 482913 to approve" (sms-pin)
        found = (_PIN_IN_TEXT.search(n) for n in gw.notifications() if _ASKS[kind] in n)
        pins = [m[1] for m in found if m]
        return (ids[-1], pins[-1]) if ids and pins else None

    return wait_for(find, what=f"a pending {kind} request")  # type: ignore[return-value]
