"""The only module that touches the crypto backend (pyca/cryptography + hashlib.scrypt).

A small surface on purpose: AEAD seal/open, HKDF, scrypt, Ed25519 host identities and an
X25519 sealed box for releasing a secret to one boot. Every decryption failure raises the one
``DecryptionFailed`` so callers cannot build an oracle from the cause.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from typing import TYPE_CHECKING, NamedTuple

from zkv import openssl_evp

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )


# pyca/cryptography's public API is imported inside the functions: with cryptography 38 that
# import costs the boot client 60 ms of CPU, so the unlock path goes through the OpenSSL fast
# path (openssl_evp.py) where the binding exists. Looked up on first use, not at import.
@functools.cache
def _fast_path() -> openssl_evp.Evp | None:
    return openssl_evp.load()


KEY_SIZE = 32
NONCE_SIZE = 12
AEAD_NAME = "chacha20-poly1305"


def public_api_needed() -> bool:
    """Whether the boot path uses pyca/cryptography's public API: only when the OpenSSL binding
    of the fast path is missing. initramfs-files leaves the public API out of the image
    otherwise."""
    return _fast_path() is None


class DecryptionFailed(Exception):
    """Wrong key, wrong associated data or tampered ciphertext: deliberately one error."""


class BadSignature(Exception):
    """A signature did not verify (or the key/signature was malformed)."""


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Return (nonce, ciphertext+tag). A fresh random nonce per call."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = os.urandom(NONCE_SIZE)
    return nonce, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise DecryptionFailed
    if (evp := _fast_path()) is not None:
        try:
            return evp.chacha20_poly1305_decrypt(key, nonce, ciphertext, aad)
        except openssl_evp.EvpError:
            raise DecryptionFailed from None
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptionFailed from None


def hkdf(key_material: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) for one 32-byte block: the standard library's HMAC suffices."""
    prk = hmac.digest(salt or bytes(32), key_material, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")[:KEY_SIZE]


def scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem must cover 128*n*r*p plus slack, or OpenSSL refuses larger parameters.
    maxmem = 128 * n * r * p + 16 * 1024 * 1024
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=KEY_SIZE)


# --- Ed25519 host identity ------------------------------------------------------------------


def ed25519_generate() -> tuple[bytes, bytes]:
    """Return (private_raw, public_raw), 32 bytes each."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return _raw_private(private), _raw_public(private.public_key())


def ed25519_public(private_raw: bytes) -> bytes:
    if (evp := _fast_path()) is not None and len(private_raw) == KEY_SIZE:
        return evp.ed25519_public(private_raw)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return _raw_public(Ed25519PrivateKey.from_private_bytes(private_raw).public_key())


def ed25519_sign(private_raw: bytes, message: bytes) -> bytes:
    if (evp := _fast_path()) is not None and len(private_raw) == KEY_SIZE:
        return evp.ed25519_sign(private_raw, message)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private_raw).sign(message)


def ed25519_verify(public_raw: bytes, signature: bytes, message: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise BadSignature from None


P256_POINT = 33  # SEC1 compressed: a TPM-held host key (zkv/tpm.py) on the wire


def p256_verify(point: bytes, r: int, s: int, message: bytes) -> None:
    """ECDSA P-256 with SHA-256: the TPM's signatures (host key, attestation key)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise BadSignature from None


def host_verify(public: bytes, signature: bytes, message: bytes) -> None:
    """A host's signature, by its key's kind: a 32-byte Ed25519 file key, or a 33-byte P-256
    point of a TPM-held key with the 64-byte r||s that TPM2_Sign returns."""
    if len(public) == P256_POINT and len(signature) == 64:
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        p256_verify(public, r, s, message)
    else:
        ed25519_verify(public, signature, message)


# --- X25519 sealed box: release a secret to one boot's ephemeral key -------------------------


class Sealed(NamedTuple):
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes


def x25519_generate() -> tuple[bytes, bytes]:
    """Return (private_raw, public_raw) of a fresh ephemeral key."""
    if (evp := _fast_path()) is not None:
        private_raw = os.urandom(KEY_SIZE)  # what OpenSSL's keygen does (clamped when used)
        return private_raw, evp.x25519_public(private_raw)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    return _raw_private(private), _raw_public(private.public_key())


def _box_key(shared: bytes, sender_public: bytes, recipient_public: bytes, info: bytes) -> bytes:
    return hkdf(shared, info=info, salt=sender_public + recipient_public)


def seal_to(recipient_public: bytes, plaintext: bytes, info: bytes) -> Sealed:
    """Encrypt to an X25519 public key; ``info`` binds the context (e.g. the request id)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    try:
        recipient = X25519PublicKey.from_public_bytes(recipient_public)
    except ValueError:
        raise DecryptionFailed from None
    private = X25519PrivateKey.generate()
    sender_public = _raw_public(private.public_key())
    key = _box_key(private.exchange(recipient), sender_public, recipient_public, info)
    nonce, ciphertext = aead_seal(key, plaintext, aad=info)
    return Sealed(sender_public, nonce, ciphertext)


def open_sealed(recipient_private: bytes, sealed: Sealed, info: bytes) -> bytes:
    if (evp := _fast_path()) is not None:
        try:
            if len(recipient_private) != KEY_SIZE or len(sealed.ephemeral_public) != KEY_SIZE:
                raise openssl_evp.EvpError
            shared = evp.x25519_exchange(recipient_private, sealed.ephemeral_public)
            recipient_public = evp.x25519_public(recipient_private)
        except openssl_evp.EvpError:
            raise DecryptionFailed from None
        key = _box_key(shared, sealed.ephemeral_public, recipient_public, info)
        return aead_open(key, sealed.nonce, sealed.ciphertext, aad=info)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    try:
        private = X25519PrivateKey.from_private_bytes(recipient_private)
        shared = private.exchange(X25519PublicKey.from_public_bytes(sealed.ephemeral_public))
    except ValueError:
        raise DecryptionFailed from None
    recipient_public = _raw_public(private.public_key())
    key = _box_key(shared, sealed.ephemeral_public, recipient_public, info)
    return aead_open(key, sealed.nonce, sealed.ciphertext, aad=info)


def _raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
