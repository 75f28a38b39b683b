"""A throwaway software TPM 2.0 (Debian's swtpm), manufactured like a real one, for tests.

Stable interface::

    from tests.harness.swtpm import running_swtpm

    with running_swtpm(tmp_path) as tpm:   # a fresh TPM: new EK, new EK certificate
        tpm.tcti                   # "swtpm:path=..." for tpm2-tools (TPM2TOOLS_TCTI)
        tpm.socket                 # the command socket (raw TPM commands, zkv.tpm.Transport)
        tpm.ca_bundle              # PEM: the local CA that signed the EK certificate (root +
                                   # intermediate), what a gateway's TPM_CA_BUNDLE would hold
        tpm.restart()              # power-cycle (state kept): transient objects are gone

``swtpm_setup --create-ek-cert`` makes the RSA and ECC endorsement keys and has swtpm-localca
sign their certificates (stored in the TPM's NV, as on real hardware); the CA lives under
``ca_dir`` (default: inside tmp_path), so two TPMs made with one ``ca_dir`` share a CA and two
without do not. The process is stopped by its own PID on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SWTPM = shutil.which("swtpm")
SWTPM_SETUP = shutil.which("swtpm_setup")
AVAILABLE = bool(SWTPM and SWTPM_SETUP and shutil.which("swtpm_localca"))


@dataclass
class Swtpm:
    state: Path
    socket: Path
    ca_dir: Path
    pid: int = 0

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    @property
    def ca_bundle(self) -> bytes:
        return b"".join(
            (self.ca_dir / name).read_bytes()
            for name in ("swtpm-localca-rootca-cert.pem", "issuercert.pem")
        )

    def start(self, qemu: bool = False) -> None:
        """``qemu``: ``socket`` is the control channel QEMU's tpm emulator backend connects
        to (it passes the data channel over it and starts the TPM as a machine would);
        otherwise a command socket for the host's tools, the TPM started at once."""
        for stale in (self.socket, self.ctrl):
            stale.unlink(missing_ok=True)
        pidfile = self.socket.parent / "swtpm.pid"
        pidfile.unlink(missing_ok=True)
        if qemu:
            channels = ["--ctrl", f"type=unixio,path={self.socket}"]
        else:
            channels = [
                *("--server", f"type=unixio,path={self.socket}"),
                # tpm2-tss's swtpm TCTI expects <path>.ctrl
                *("--ctrl", f"type=unixio,path={self.ctrl}"),
                *("--flags", "startup-clear,not-need-init"),
            ]
        subprocess.run(
            [
                str(SWTPM),
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state}",
                *channels,
                "--pid",
                f"file={pidfile}",
                "--daemon",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        deadline = time.monotonic() + 5
        while not (pidfile.exists() and self.socket.exists()):
            if time.monotonic() > deadline:
                raise RuntimeError("swtpm did not come up")
            time.sleep(0.02)
        self.pid = int(pidfile.read_text())

    def stop(self) -> None:
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                os.kill(self.pid, 0)
                time.sleep(0.02)
        except ProcessLookupError:
            pass
        self.pid = 0

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def ctrl(self) -> Path:
        return Path(f"{self.socket}.ctrl")


def manufacture(state: Path, ca_dir: Path) -> None:
    """swtpm_setup with a private swtpm-localca configuration (no system state touched)."""
    state.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    conf = state.parent / "swtpm-conf"
    conf.mkdir(exist_ok=True)
    (conf / "localca.conf").write_text(
        "".join(
            f"{key} = {ca_dir / name}\n"
            for key, name in (
                ("statedir", ""),
                ("signingkey", "signkey.pem"),
                ("issuercert", "issuercert.pem"),
                ("certserial", "certserial"),
            )
        )
    )
    (conf / "localca.options").write_text("--platform-manufacturer zkv-test\n")
    (conf / "setup.conf").write_text(
        f"create_certs_tool = {shutil.which('swtpm_localca')}\n"
        f"create_certs_tool_config = {conf / 'localca.conf'}\n"
        f"create_certs_tool_options = {conf / 'localca.options'}\n"
        "active_pcr_banks = sha256\n"
    )
    subprocess.run(
        [
            str(SWTPM_SETUP),
            "--tpm2",
            "--tpmstate",
            str(state),
            "--create-ek-cert",
            "--config",
            str(conf / "setup.conf"),
            "--overwrite",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextmanager
def running_swtpm(tmp_path: Path, ca_dir: Path | None = None) -> Iterator[Swtpm]:
    base = tmp_path / f"swtpm-{os.urandom(3).hex()}"
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    sock_dir = Path(f"/tmp/zkv-swtpm-{os.getpid()}-{os.urandom(3).hex()}")
    sock_dir.mkdir(mode=0o700)
    tpm = Swtpm(base / "state", sock_dir / "sock", ca_dir or tmp_path / "swtpm-ca")
    manufacture(tpm.state, tpm.ca_dir)
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
