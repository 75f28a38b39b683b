"""The host identity key that signs unlock requests; its file is kept beside the keystore.

Two kinds, one line each, mode 0600, written atomically; ``zkv enroll`` creates it and the boot
hooks copy it into the initramfs:

* ``zkv-host-key-v1 <base64 of the 32-byte Ed25519 private key>``: a file key, for hosts
  without a TPM. Whoever copies the disk can sign as the host.
* ``zkv-host-key-tpm-v1 <persistent handle> <base64 of the 33-byte P-256 public key>``: the key
  lives in the TPM (zkv/tpm.py) and the file only says where; a copied disk cannot sign.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

from zkv import crypto, keystore, paths, tpm, tpm_format
from zkv.encoding import b64, unb64
from zkv.errors import HostKeyError, TpmKeyMissing
from zkv.fsutil import atomic_write, read_limited

MAGIC = "zkv-host-key-v1"
MAGIC_TPM = "zkv-host-key-tpm-v1"
FILENAME = paths.HOST_KEY_NAME


def default_path(keystore_path: str | os.PathLike[str] | None = None) -> Path:
    """The host key lives in the same folder as the keystore."""
    return keystore.resolve_path(str(keystore_path) if keystore_path else None).parent / FILENAME


def generate(path: str | os.PathLike[str]) -> bytes:
    """Create a new key pair at ``path``; return the public key."""
    private, public = crypto.ed25519_generate()
    atomic_write(path, f"{MAGIC} {b64(private)}\n".encode(), mode=0o600)
    return public


class TpmKey(NamedTuple):
    """A host key held by the TPM: signs through it (protocol.Signer)."""

    handle: int
    public_key: bytes
    device: str = tpm.DEVICE

    def sign(self, message: bytes) -> bytes:
        """ECDSA r||s (64 bytes), once the key at the handle is found to be this one."""
        with tpm.Transport(self.device) as chip:
            self._check(chip)
            r, s = tpm.sign(chip, tpm.digest(message), self.handle)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def check(self) -> None:
        """A missing, cleared or other TPM gets the one clear TpmKeyMissing line at once,
        not a refused request after the network came up."""
        with tpm.Transport(self.device) as chip:
            self._check(chip)

    def _check(self, chip: tpm.Transport) -> None:
        if _point(tpm.read_public(chip, self.handle)) != self.public_key:
            raise TpmKeyMissing


def save_tpm(path: str | os.PathLike[str], key: TpmKey) -> None:
    line = f"{MAGIC_TPM} {key.handle:#010x} {b64(key.public_key)}\n"
    atomic_write(path, line.encode(), mode=0o600)


def load(path: str | os.PathLike[str], device: str = tpm.DEVICE) -> bytes | TpmKey:
    """The 32-byte Ed25519 private key or the TPM key's place, or HostKeyError with one clear
    sentence."""
    try:
        text = read_limited(path, 256).decode("ascii")
    except FileNotFoundError:
        raise HostKeyError(path=str(path), detail="missing (run 'zkv enroll')") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HostKeyError(path=str(path), detail=f"unreadable ({exc})") from None
    magic, _, value = text.strip().partition(" ")
    if magic == MAGIC_TPM:
        return _tpm_key(path, value, device)
    try:
        private = unb64(value)
    except ValueError:
        private = b""
    if magic != MAGIC or len(private) != 32:
        raise HostKeyError(path=str(path), detail="not a zkv host key")
    return private


def _tpm_key(path: str | os.PathLike[str], value: str, device: str) -> TpmKey:
    handle, _, public = value.partition(" ")
    try:
        key = TpmKey(int(handle, 16), unb64(public), device)
    except ValueError:
        raise HostKeyError(path=str(path), detail="not a zkv host key") from None
    if len(key.public_key) != crypto.P256_POINT:
        raise HostKeyError(path=str(path), detail="not a zkv host key")
    return key


def _point(tpm2b_public: bytes) -> bytes:
    try:
        return tpm_format.parse_public(tpm2b_public).point
    except tpm_format.TpmFormatError:
        return b""
