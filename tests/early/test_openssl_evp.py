"""zkv/openssl_evp.py under Debian's /usr/bin/python3 and python3-cryptography 38 (the boot path):
RFC test vectors, agreement with cryptography's public API, and refusal of forgeries."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.early.conftest import TARGET_PYTHON, _target_ready
from zkv import crypto

REPO = Path(__file__).resolve().parents[2]

CHECK = r"""
import os
from zkv import crypto, openssl_evp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes

assert crypto._fast_path() is not None, "the binding is expected with cryptography 38"
e = crypto._fast_path()
h = bytes.fromhex
# RFC 8032 7.1 TEST 1 and TEST 2
sk = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
assert crypto.ed25519_public(sk) == h(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
assert crypto.ed25519_sign(sk, b"") == h(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b4"
    "6bd25bf5f0595bbe24655141438e7a100b")
sk2 = h("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
sig = crypto.ed25519_sign(sk2, b"\x72")
assert sig == h(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d"
    "8c387b2eaeb4302aeeb00d291612bb0c00")
crypto.ed25519_verify(crypto.ed25519_public(sk2), sig, b"\x72")  # the public API agrees
# RFC 7748 6.1
a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
b_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
assert e.x25519_public(a) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
assert e.x25519_exchange(a, b_pub) == h(
    "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
for bad in (bytes(32), b"\x01" + bytes(31)):  # small-order points: no all-zero secret
    try:
        e.x25519_exchange(a, bad)
    except openssl_evp.EvpError:
        pass
    else:
        raise AssertionError("small-order peer key accepted")
# a sealed box made by the public API opens here, and only with the right key and info
for size in (0, 1, 32, 1000):
    secret = os.urandom(size)
    private, public = crypto.x25519_generate()
    assert crypto._raw_public(X25519PrivateKey.from_private_bytes(private).public_key()) == public
    box = crypto.seal_to(public, secret, b"info")
    assert crypto.open_sealed(private, box, b"info") == secret
    for wrong in ((crypto.x25519_generate()[0], box, b"info"), (private, box, b"other")):
        try:
            crypto.open_sealed(*wrong)
        except crypto.DecryptionFailed:
            pass
        else:
            raise AssertionError("opened with the wrong key or info")
# ChaCha20-Poly1305: the public API's ciphertexts, tampered in every byte, are refused
key, nonce = os.urandom(32), os.urandom(12)
for size in (0, 1, 16, 17, 4096):
    plain, aad = os.urandom(size), os.urandom(size % 40)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, plain, aad)
    assert crypto.aead_open(key, nonce, sealed, aad) == plain
    for i in range(len(sealed)):
        forged = bytearray(sealed)
        forged[i] ^= 1
        try:
            crypto.aead_open(key, nonce, bytes(forged), aad)
        except crypto.DecryptionFailed:
            pass
        else:
            raise AssertionError("forged ciphertext accepted")
    for args in ((key, nonce, sealed, aad + b"x"), (key, nonce, sealed[:-1], aad),
                 (os.urandom(32), nonce, sealed, aad), (key, nonce, b"short", aad)):
        try:
            crypto.aead_open(*args)
        except crypto.DecryptionFailed:
            pass
        else:
            raise AssertionError("accepted a bad key, aad or length")
# HKDF from the standard library equals the public API's
for salt in (None, b"", os.urandom(64)):
    ikm, info = os.urandom(32), os.urandom(20)
    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)
    assert crypto.hkdf(ikm, info, salt) == want
print("ok")
"""


def test_boot_crypto_through_evp_matches_vectors_and_the_public_api() -> None:
    reason = _target_ready()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [TARGET_PYTHON, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_hkdf_rfc5869_case_1() -> None:
    ikm = bytes([0x0B] * 22)
    salt = bytes(range(13))
    info = bytes(range(0xF0, 0xFA))
    okm = bytes.fromhex(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert crypto.hkdf(ikm, info, salt) == okm[:32]
