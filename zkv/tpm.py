"""The TPM 2.0: every call zkv makes to it, and its failures as typed errors (zkv/errors.py).

Two ways in, by where they run:

* The boot path signs with a few TPM commands marshalled here (TPM2_Sign, TPM2_ReadPublic,
  TPM2_Certify), written straight to /dev/tpmrm0: no tpm2-tools and no libtss2 in the
  initramfs, and no process to start (docs/tpm.md has the measurement).
* ``zkv enroll`` runs on the booted system and uses tpm2-tools for the rest (the storage
  primary, the key, the endorsement key and its certificate, the attestation key and credential
  activation), where the tools' policy sessions and key templates are worth having.

The host key is an ECC P-256 key (Ed25519 is no TPM algorithm) created under the storage
primary from the standard template and made persistent at HOST_KEY_HANDLE. It never leaves
the TPM: a copied disk holds only its public half and handle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zkv import tpm_format
from zkv.errors import TpmError, TpmKeyMissing

DEVICE = "/dev/tpmrm0"  # the kernel's resource manager: sessions and objects per open file
# Owner persistent handles outside the TCG-reserved SRK (0x81000000+) and EK (0x81010000+,
# where swtpm and real TPMs keep the RSA EK at 0x81010001) blocks: "zkv".
HOST_KEY_HANDLE = 0x817A6B76
AK_HANDLE = 0x817A6B77  # the attestation key, persistent only while it certifies at enrolment
EK_CERT_INDEX = 0x01C00002  # the RSA 2048 EK certificate (TCG EK Credential Profile)
ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign"
TIMEOUT = 30.0

_ST_NO_SESSIONS, _ST_SESSIONS = 0x8001, 0x8002
_CC_CERTIFY, _CC_SIGN, _CC_READ_PUBLIC = 0x148, 0x15D, 0x173
_RS_PW = 0x40000009  # the password session: empty authValue, no HMAC
_RH_NULL, _ST_HASHCHECK = 0x40000007, 0x8024
_RC_HANDLE = 0x08B  # a format-one handle error: the persistent key is not there
_RC_INITIALIZE = 0x100


# --- the command layer (boot path) ------------------------------------------------------------


class Transport:
    """One open channel to the TPM: the resource-manager device, or (tests) swtpm's socket."""

    def __init__(self, path: str = DEVICE) -> None:
        self.path = path
        try:
            if Path(path).is_socket():
                self._sock: socket.socket | None = socket.socket(socket.AF_UNIX)
                self._sock.settimeout(TIMEOUT)
                self._sock.connect(path)
                self._fd = -1
            else:
                self._sock, self._fd = None, os.open(path, os.O_RDWR)
        except OSError as exc:
            raise TpmError(detail=f"cannot open {path} ({exc.strerror or exc})") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        elif self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def transact(self, command: bytes) -> bytes:
        try:
            if self._sock is None:
                os.write(self._fd, command)
                return os.read(self._fd, 4096)  # the device answers a command in one read
            self._sock.sendall(command)
            answer = self._recv(10)
            return answer + self._recv(struct.unpack(">I", answer[2:6])[0] - 10)
        except OSError as exc:
            raise TpmError(detail=f"{self.path}: {exc.strerror or exc}") from None

    def _recv(self, n: int) -> bytes:
        assert self._sock is not None
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise OSError("the TPM closed the connection")
            data += chunk
        return data


def _command(tpm: Transport, cc: int, handles: list[int], params: bytes, auths: int = 0) -> bytes:
    """Send one command with ``auths`` empty password sessions; the response parameters."""
    body = b"".join(struct.pack(">I", h) for h in handles)
    if auths:
        pw = struct.pack(">IHBH", _RS_PW, 0, 0, 0)  # handle, nonce, attributes, hmac
        body += struct.pack(">I", len(pw) * auths) + pw * auths
    tag = _ST_SESSIONS if auths else _ST_NO_SESSIONS
    header = struct.pack(">HII", tag, 10 + len(body) + len(params), cc)
    answer = tpm.transact(header + body + params)
    if len(answer) < 10:
        raise TpmError(detail="short answer from the TPM")
    rc = struct.unpack(">I", answer[6:10])[0]
    if rc:
        raise _error(rc)
    rest = answer[10:]
    if auths:  # parameterSize, then the parameters, then the sessions' answers
        rest = rest[4 : 4 + struct.unpack(">I", rest[:4])[0]]
    return rest


def _error(rc: int) -> TpmError:
    if rc & 0x080 and rc & 0x03F == _RC_HANDLE & 0x03F:  # "handle 1 is not valid"
        return TpmKeyMissing()
    if rc == _RC_INITIALIZE:
        return TpmError(detail="the TPM was not started up (TPM_RC_INITIALIZE)")
    return TpmError(detail=f"the TPM answered 0x{rc:03x}")


_ECDSA_SHA256 = struct.pack(">HH", tpm_format.ALG_ECDSA, tpm_format.ALG_SHA256)


def sign(tpm: Transport, digest: bytes, handle: int = HOST_KEY_HANDLE) -> tuple[int, int]:
    """TPM2_Sign of a SHA-256 digest with the persistent key: ECDSA (r, s)."""
    ticket = struct.pack(">HIH", _ST_HASHCHECK, _RH_NULL, 0)  # a null ticket: key unrestricted
    params = tpm_format.tpm2b(digest) + _ECDSA_SHA256 + ticket
    answer = _command(tpm, _CC_SIGN, [handle], params, auths=1)
    try:
        return tpm_format.parse_ecdsa_signature(answer)
    except tpm_format.TpmFormatError as exc:
        raise TpmError(detail=f"unexpected signature ({exc})") from None


def read_public(tpm: Transport, handle: int = HOST_KEY_HANDLE) -> bytes:
    """The TPM2B_PUBLIC of a loaded object (TPM2_ReadPublic)."""
    answer = tpm_format.Reader(_command(tpm, _CC_READ_PUBLIC, [handle], b""))
    return tpm_format.tpm2b(answer.tpm2b())


def certify(tpm: Transport, qualifying: bytes, key: int, ak: int) -> tuple[bytes, bytes]:
    """TPM2_Certify of ``key`` by the attestation key ``ak`` over ``qualifying`` (the gateway's
    nonce): (TPMS_ATTEST, TPMT_SIGNATURE)."""
    params = tpm_format.tpm2b(qualifying) + _ECDSA_SHA256
    answer = tpm_format.Reader(_command(tpm, _CC_CERTIFY, [key, ak], params, auths=2))
    attest = answer.tpm2b()
    return attest, answer.take(len(answer.data) - answer.at)


# --- tpm2-tools (enrolment) -------------------------------------------------------------------


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


def digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()
