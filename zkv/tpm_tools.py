"""``zkv enroll``'s TPM 2.0 work through tpm2-tools, failures as typed errors (zkv/errors.py).

On the booted system, where the tools' key templates and policy sessions are worth having: the
host key under the storage primary, the endorsement key and its certificate, a fresh
attestation key and the credential activation. The boot path never imports this module
(zkv/tpm.py signs there).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zkv import tpm_format
from zkv.errors import TpmError
from zkv.tpm import AK_HANDLE, DEVICE, HOST_KEY_HANDLE, Transport, certify

EK_CERT_INDEX = 0x01C00002  # the RSA 2048 EK certificate (TCG EK Credential Profile)
ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign"
TIMEOUT = 30.0


class Tools:
    """tpm2-tools against one TPM; ``tcti`` as tpm2-tss spells it (``device:/dev/tpmrm0``).

    Every step ends by flushing transient objects and sessions: on a TPM without a resource
    manager (swtpm in tests) they would otherwise fill its few slots."""

    def __init__(self, tcti: str, workdir: Path) -> None:
        if shutil.which("tpm2_createprimary") is None:
            raise TpmError(detail="no tpm2-tools (apt install tpm2-tools), or enrol with --no-tpm")
        self.tcti, self.dir = tcti, workdir

    def run(self, *argv: str, stdin: bytes = b"") -> bytes:
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, cwd=self.dir, env=env, timeout=TIMEOUT
            )
            for kind in ("-t", "-l", "-s"):
                subprocess.run(
                    ["tpm2_flushcontext", kind], capture_output=True, env=env, timeout=TIMEOUT
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TpmError(detail=f"{argv[0]}: {exc}") from None
        if done.returncode != 0:
            raise TpmError(detail=f"{argv[0]}: {_last_line(done.stderr)}")
        return done.stdout

    def persistent(self) -> set[int]:
        listed = self.run("tpm2_getcap", "handles-persistent").decode()
        return {int(line.strip("- \n"), 16) for line in listed.splitlines() if "0x" in line}

    def host_key(self) -> tpm_format.EccPublic:
        """The host key's public area, creating the key first if this TPM has none."""
        if HOST_KEY_HANDLE not in self.persistent():
            self.run("tpm2_createprimary", "-Q", "-C", "o", "-G", "ecc256:aes128cfb", "-c", "srk")
            self.run("tpm2_create", "-Q", "-C", "srk", "-G", "ecc256:ecdsa-sha256", "-a", ATTRS,
                     "-u", "key.pub", "-r", "key.priv")  # fmt: skip
            self.run("tpm2_load", "-Q", "-C", "srk", "-u", "key.pub", "-r", "key.priv", "-c", "k")
            self.run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", "k", hex(HOST_KEY_HANDLE))
        self.run("tpm2_readpublic", "-Q", "-c", hex(HOST_KEY_HANDLE), "-o", "host.pub")
        return _public((self.dir / "host.pub").read_bytes())

    def ek_certificate(self) -> bytes:
        """The DER EK certificate the manufacturer stored in NV; b"" if there is none."""
        if EK_CERT_INDEX not in self.nv_indices():
            return b""
        size = self.nv_size(EK_CERT_INDEX)
        return self.run("tpm2_nvread", "-C", "o", "-s", str(size), hex(EK_CERT_INDEX))

    def nv_indices(self) -> set[int]:
        listed = self.run("tpm2_getcap", "handles-nv-index").decode()
        return {int(line.strip("- \n"), 16) for line in listed.splitlines() if "0x" in line}

    def nv_size(self, index: int) -> int:
        for line in self.run("tpm2_nvreadpublic", hex(index)).decode().splitlines():
            if line.strip().startswith("size:"):
                return int(line.split(":")[1])
        raise TpmError(detail=f"no size for NV index {index:#x}")

    def attestation_key(self) -> bytes:
        """A fresh attestation key under the RSA EK (standard templates); its TPM2B_PUBLIC.
        Its context stays in the work folder for activate() and certify()."""
        self.run("tpm2_createek", "-Q", "-G", "rsa", "-c", "ek.ctx")
        self.run("tpm2_createak", "-Q", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g",
                 "sha256", "-s", "ecdsa", "-u", "ak.pub")  # fmt: skip
        return (self.dir / "ak.pub").read_bytes()

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the EK (its policy: PolicySecret(endorsement)):
        the secret the gateway encrypted to this TPM's EK for this AK's name."""
        header = struct.pack(">II", 0xBADCC0DE, 1)  # tpm2_makecredential's file format
        blob = header + tpm_format.tpm2b(credential_blob) + tpm_format.tpm2b(encrypted_secret)
        (self.dir / "cred.blob").write_bytes(blob)
        script = (
            "set -e; tpm2_startauthsession -Q --policy-session -S s.ctx; "
            "tpm2_policysecret -Q -S s.ctx -c e; "
            "tpm2_activatecredential -Q -c ak.ctx -C ek.ctx -i cred.blob -o /dev/stdout "
            "-P session:s.ctx"
        )
        return self.run("sh", "-c", script)

    def certify(self, qualifying: bytes) -> tuple[bytes, bytes]:
        """The AK certifies the host key over the gateway's nonce. tpm2_certify (5.4) cannot
        pass qualifying data, so the AK is made persistent for the one TPM2_Certify sent by
        this module, then evicted again."""
        if AK_HANDLE in self.persistent():  # left by an interrupted enrolment
            self.run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", hex(AK_HANDLE))
        self.run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", "ak.ctx", hex(AK_HANDLE))
        try:
            with Transport(device_of(self.tcti)) as tpm:  # swtpm serves one client at a time
                return certify(tpm, qualifying, HOST_KEY_HANDLE, AK_HANDLE)
        finally:
            self.run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", hex(AK_HANDLE))


@contextmanager
def tools(tcti: str) -> Iterator[Tools]:
    """tpm2-tools in a private work folder (public areas and TPM-wrapped contexts only)."""
    with tempfile.TemporaryDirectory(prefix="zkv-tpm-") as work:
        yield Tools(tcti, Path(work))


def device_of(tcti: str) -> str:
    """The path Transport opens for a tpm2-tss TCTI string (``device:`` or ``swtpm:path=``)."""
    kind, _, conf = tcti.partition(":")
    if kind == "swtpm":
        return conf.removeprefix("path=")
    return conf or DEVICE


def _public(tpm2b_public: bytes) -> tpm_format.EccPublic:
    try:
        return tpm_format.parse_public(tpm2b_public)
    except tpm_format.TpmFormatError as exc:
        raise TpmError(detail=f"the key at {HOST_KEY_HANDLE:#x} is not zkv's ({exc})") from None


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "failed"
