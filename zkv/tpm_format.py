"""TPM 2.0 structures both sides read (pure): public areas, names, attestations, signatures.

Big-endian, as in the TPM 2.0 Library Specification, Part 2. Only the shapes zkv uses are
accepted (ECC NIST P-256 keys with SHA-256 names, ECDSA-SHA256 signatures, the certify
attestation); anything else raises ``TpmFormatError``. The host sends these raw structures to
the gateway, which parses and checks them here rather than trusting a summary.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

ALG_RSA, ALG_SHA256, ALG_NULL, ALG_ECDSA, ALG_ECC = 0x0001, 0x000B, 0x0010, 0x0018, 0x0023
ALG_AES, ALG_CFB = 0x0006, 0x0043
ECC_NIST_P256 = 0x0003
GENERATED_VALUE = 0xFF544347  # "\xffTCG": only the TPM itself writes this into an attestation
ST_ATTEST_CERTIFY = 0x8017

# TPMA_OBJECT bits
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN = 1 << 1, 1 << 4, 1 << 5
USER_WITH_AUTH, NO_DA, RESTRICTED, DECRYPT, SIGN = 1 << 6, 1 << 10, 1 << 16, 1 << 17, 1 << 18
# A key that never existed outside this TPM and cannot be duplicated out of it.
RESIDENT = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN
SIGNING_KEY_ATTRS = RESIDENT | USER_WITH_AUTH | NO_DA | SIGN


class TpmFormatError(ValueError):
    """Not the TPM structure zkv expects."""


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise TpmFormatError("truncated TPM structure")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self.at != len(self.data):
            raise TpmFormatError("trailing bytes after TPM structure")


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class EccPublic(NamedTuple):
    """A TPMT_PUBLIC of an ECC P-256 key, and what follows from it."""

    area: bytes  # the TPMT_PUBLIC as the TPM marshals it (its hash is the name)
    attributes: int
    x: bytes
    y: bytes

    @property
    def name(self) -> bytes:
        """The TPM's name of the object: nameAlg || SHA-256(TPMT_PUBLIC)."""
        return struct.pack(">H", ALG_SHA256) + hashlib.sha256(self.area).digest()

    @property
    def point(self) -> bytes:
        """SEC1 compressed point (33 bytes): the host's public key on the wire."""
        return bytes([2 + (self.y[-1] & 1)]) + self.x

    def has(self, attrs: int) -> bool:
        return self.attributes & attrs == attrs


def parse_public(tpm2b_public: bytes) -> EccPublic:
    """A TPM2B_PUBLIC (what tpm2_readpublic -o writes) of an ECC P-256 signing key."""
    outer = Reader(tpm2b_public)
    area = outer.tpm2b()
    outer.end()
    r = Reader(area)
    if r.u16() != ALG_ECC or r.u16() != ALG_SHA256:
        raise TpmFormatError("not an ECC key with SHA-256 name")
    attributes = r.u32()
    r.tpm2b()  # authPolicy: empty unless a PCR policy is set (docs/tpm.md)
    if r.u16() != ALG_NULL:  # symmetric: a signing key has none
        raise TpmFormatError("not a signing key")
    scheme = r.u16()
    if scheme != ALG_NULL and (scheme != ALG_ECDSA or r.u16() != ALG_SHA256):
        raise TpmFormatError("not an ECDSA-SHA256 key")
    if r.u16() != ECC_NIST_P256 or r.u16() != ALG_NULL:  # curve, kdf
        raise TpmFormatError("not a NIST P-256 key")
    x, y = r.tpm2b(), r.tpm2b()
    r.end()
    if len(x) != 32 or len(y) != 32:
        raise TpmFormatError("not a NIST P-256 point")
    return EccPublic(area, attributes, x, y)


class CertifyInfo(NamedTuple):
    """A TPMS_ATTEST of TPM2_Certify: the signer says the object ``name`` is loaded in it."""

    signer: bytes  # qualifiedSigner
    extra: bytes  # extraData: the qualifying data the caller asked to include
    name: bytes  # the certified object's name


def parse_certify(attest: bytes) -> CertifyInfo:
    r = Reader(attest)
    if r.u32() != GENERATED_VALUE or r.u16() != ST_ATTEST_CERTIFY:
        raise TpmFormatError("not a TPM certify attestation")
    signer, extra = r.tpm2b(), r.tpm2b()
    r.take(17 + 8)  # clockInfo, firmwareVersion
    name = r.tpm2b()
    r.tpm2b()  # qualifiedName
    r.end()
    return CertifyInfo(signer, extra, name)


def parse_ecdsa_signature(tpmt_signature: bytes) -> tuple[int, int]:
    """A TPMT_SIGNATURE (ECDSA, SHA-256) -> (r, s)."""
    sig = Reader(tpmt_signature)
    if sig.u16() != ALG_ECDSA or sig.u16() != ALG_SHA256:
        raise TpmFormatError("not an ECDSA-SHA256 signature")
    r, s = sig.tpm2b(), sig.tpm2b()
    sig.end()
    if not (0 < len(r) <= 32 and 0 < len(s) <= 32):
        raise TpmFormatError("not a P-256 signature")
    return int.from_bytes(r, "big"), int.from_bytes(s, "big")


def ecdsa_signature(r: int, s: int) -> bytes:
    """A TPMT_SIGNATURE for (r, s); tests and the wire use this shape."""
    return (
        struct.pack(">HH", ALG_ECDSA, ALG_SHA256)
        + tpm2b(r.to_bytes(32, "big"))
        + tpm2b(s.to_bytes(32, "big"))
    )
