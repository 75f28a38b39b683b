"""The TPM 2.0 commands zkv sends itself, and their failures as typed errors (zkv/errors.py).

The boot path signs with a few TPM commands marshalled here (TPM2_Sign, TPM2_ReadPublic;
TPM2_Certify for the enrolment), written straight to /dev/tpmrm0: no tpm2-tools and no libtss2
in the initramfs, and no process to start (docs/tpm.md has the measurement). ``zkv enroll``
does the rest through tpm2-tools (zkv/tpm_tools.py), on the booted system.

The host key is an ECC P-256 key (Ed25519 is no TPM algorithm) created under the storage
primary from the standard template and made persistent at HOST_KEY_HANDLE. It never leaves
the TPM: a copied disk holds only its public half and handle.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct

from zkv import tpm_format
from zkv.errors import TpmError, TpmKeyMissing

DEVICE = "/dev/tpmrm0"  # the kernel's resource manager: sessions and objects per open file
# Owner persistent handles outside the TCG-reserved SRK (0x81000000+) and EK (0x81010000+,
# where swtpm and real TPMs keep the RSA EK at 0x81010001) blocks: "zkv".
HOST_KEY_HANDLE = 0x817A6B76
AK_HANDLE = 0x817A6B77  # the attestation key, persistent only while it certifies at enrolment
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
            if stat.S_ISSOCK(os.stat(path).st_mode):
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


def digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()
