"""The host identity key (Ed25519) that signs unlock requests; kept beside the keystore.

File format: one line ``zkv-host-key-v1 <base64 of the 32-byte private key>``, mode 0600,
written atomically. ``zkv enroll`` creates it; the boot hooks copy it into the initramfs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

from zkv import crypto, keystore, paths
from zkv.encoding import b64, unb64
from zkv.errors import HostKeyError
from zkv.fsutil import atomic_write, read_limited

MAGIC = "zkv-host-key-v1"
FILENAME = paths.HOST_KEY_NAME


def default_path(keystore_path: str | os.PathLike[str] | None = None) -> Path:
    """The host key lives in the same folder as the keystore."""
    return keystore.resolve_path(str(keystore_path) if keystore_path else None).parent / FILENAME


def generate(path: str | os.PathLike[str]) -> bytes:
    """Create a new key pair at ``path``; return the public key."""
    private, public = crypto.ed25519_generate()
    atomic_write(path, f"{MAGIC} {b64(private)}\n".encode(), mode=0o600)
    return public


def load(path: str | os.PathLike[str]) -> bytes:
    """Return the 32-byte private key, or raise HostKeyError with one clear sentence."""
    try:
        text = read_limited(path, 256).decode("ascii")
    except FileNotFoundError:
        raise HostKeyError(path=str(path), detail="missing (run 'zkv enroll')") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HostKeyError(path=str(path), detail=f"unreadable ({exc})") from None
    magic, _, value = text.strip().partition(" ")
    try:
        private = unb64(value)
    except ValueError:
        private = b""
    if magic != MAGIC or len(private) != 32:
        raise HostKeyError(path=str(path), detail="not a zkv host key")
    return private
