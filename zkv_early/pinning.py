"""Pinning the gateway's public key: early.conf's ``pin_sha256`` names the base64 SHA-256 of
the DER SubjectPublicKeyInfo of the gateway's certificate (what curl's ``--pinnedpubkey
sha256//`` and HPKP use), so the boot trusts one key, not every CA that could vouch for a name.

The key is read from the DER certificate with a small walker: no x509 module goes into the
initramfs for it. A certificate this walker cannot read is a mismatch, never a pass.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from zkv.encoding import b64

if TYPE_CHECKING:
    import ssl


class PinMismatch(OSError):
    """The gateway's key is not one early.conf pins (an OSError: the connection failed)."""


def spki_sha256(certificate: bytes) -> str:
    """base64 SHA-256 of the SubjectPublicKeyInfo of a DER X.509 certificate."""
    try:
        tbs = _children(_one(certificate, 0x30))[0]  # Certificate -> TBSCertificate
        fields = _children(_value(tbs, 0x30))
        if fields and fields[0][0] == 0xA0:  # [0] version: present from v2 on
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        tag, whole = fields[5][0], fields[5][1]
    except (IndexError, ValueError):
        raise PinMismatch("the gateway's certificate could not be read") from None
    if tag != 0x30:
        raise PinMismatch("the gateway's certificate could not be read")
    return b64(hashlib.sha256(whole).digest())


def check(sock: ssl.SSLSocket, pins: tuple[str, ...]) -> None:
    """Raise PinMismatch unless the peer's certificate carries one of the pinned keys."""
    certificate = sock.getpeercert(binary_form=True)
    if not certificate or spki_sha256(certificate) not in pins:
        raise PinMismatch("the gateway's key does not match [gateway] pin_sha256")


# --- DER: (tag, whole encoding, contents) -----------------------------------------------------

_Element = tuple[int, bytes, bytes]


def _element(data: bytes, at: int) -> tuple[_Element, int]:
    tag, first = data[at], data[at + 1]
    start, length = at + 2, first
    if first & 0x80:  # long form: the next (first & 0x7F) bytes hold the length
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return (tag, data[at:end], data[start:end]), end


def _one(data: bytes, tag: int) -> bytes:
    (found, _whole, contents), end = _element(data, 0)
    if found != tag or end != len(data):
        raise ValueError("unexpected DER")
    return contents


def _value(element: _Element, tag: int) -> bytes:
    if element[0] != tag:
        raise ValueError("unexpected DER")
    return element[2]


def _children(contents: bytes) -> list[_Element]:
    out, at = [], 0
    while at < len(contents):
        element, at = _element(contents, at)
        out.append(element)
    return out
