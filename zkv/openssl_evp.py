"""The OpenSSL fast path: the boot path's crypto straight through OpenSSL's EVP interface, via
the compiled binding that python3-cryptography ships (``cryptography.hazmat.bindings._openssl``).

Why: in cryptography 38 (Debian 12) every public primitive goes through the OpenSSL backend
module, whose import also loads the whole X.509 layer: about 60 ms of CPU, more than half of
the boot client's run. The binding alone costs a few ms. The same OpenSSL functions are
called, in the same way as cryptography 38's backend calls them; nothing is patched.

Only what an unlock needs: Ed25519 public key and signature, X25519 key and shared secret,
ChaCha20-Poly1305 decryption. ``load()`` returns None where the binding is absent (newer
cryptography releases, whose public API is fast anyway); crypto.py then uses the public API.
tests/early/test_openssl_evp.py checks RFC test vectors and agreement with the public API.

When to drop it: once no supported target runs cryptography 38 (Debian 12's), i.e. when every
boot image's python3-cryptography imports its public primitives in a few ms. Then crypto.py
keeps only the public API; ``python3 -m bench.early_vs_clevis`` shows what each path costs.
"""

from __future__ import annotations

from typing import Any

NEEDED = (
    "EVP_PKEY_new_raw_private_key",
    "EVP_PKEY_new_raw_public_key",
    "EVP_PKEY_get_raw_public_key",
    "EVP_PKEY_free",
    "EVP_PKEY_CTX_new",
    "EVP_PKEY_CTX_free",
    "EVP_PKEY_derive_init",
    "EVP_PKEY_derive_set_peer",
    "EVP_PKEY_derive",
    "EVP_MD_CTX_new",
    "EVP_MD_CTX_free",
    "EVP_DigestSignInit",
    "EVP_DigestSign",
    "EVP_get_cipherbyname",
    "EVP_CIPHER_CTX_new",
    "EVP_CIPHER_CTX_free",
    "EVP_CipherInit_ex",
    "EVP_CIPHER_CTX_ctrl",
    "EVP_CipherUpdate",
    "EVP_CipherFinal_ex",
    "ERR_clear_error",
    "NID_ED25519",
    "NID_X25519",
    "EVP_CTRL_AEAD_SET_IVLEN",
    "EVP_CTRL_AEAD_SET_TAG",
)
TAG_SIZE = 16


class EvpError(Exception):
    """An OpenSSL call failed (bad key, bad tag...); crypto.py maps it to its own errors."""


class Evp:
    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi, self.lib = ffi, lib

    def _check(self, ok: bool) -> None:
        if not ok:
            self.lib.ERR_clear_error()  # leave no error queued for the next caller
            raise EvpError

    def _pkey(self, nid: int, raw: bytes, private: bool) -> Any:
        make = (
            self.lib.EVP_PKEY_new_raw_private_key
            if private
            else self.lib.EVP_PKEY_new_raw_public_key
        )
        pkey = make(nid, self.ffi.NULL, self.ffi.from_buffer(raw), len(raw))
        self._check(pkey != self.ffi.NULL)
        return self.ffi.gc(pkey, self.lib.EVP_PKEY_free)

    def _raw_public(self, pkey: Any) -> bytes:
        buf = self.ffi.new("unsigned char[]", 32)
        size = self.ffi.new("size_t *", 32)
        self._check(self.lib.EVP_PKEY_get_raw_public_key(pkey, buf, size) == 1 and size[0] == 32)
        return bytes(self.ffi.buffer(buf, 32))

    def ed25519_public(self, private_raw: bytes) -> bytes:
        return self._raw_public(self._pkey(self.lib.NID_ED25519, private_raw, True))

    def ed25519_sign(self, private_raw: bytes, message: bytes) -> bytes:
        pkey = self._pkey(self.lib.NID_ED25519, private_raw, True)
        ctx = self.lib.EVP_MD_CTX_new()
        self._check(ctx != self.ffi.NULL)
        ctx = self.ffi.gc(ctx, self.lib.EVP_MD_CTX_free)
        null = self.ffi.NULL
        self._check(self.lib.EVP_DigestSignInit(ctx, null, null, null, pkey) == 1)
        signature = self.ffi.new("unsigned char[]", 64)
        size = self.ffi.new("size_t *", 64)
        ok = self.lib.EVP_DigestSign(ctx, signature, size, message, len(message))
        self._check(ok == 1 and size[0] == 64)
        return bytes(self.ffi.buffer(signature, 64))

    def x25519_public(self, private_raw: bytes) -> bytes:
        return self._raw_public(self._pkey(self.lib.NID_X25519, private_raw, True))

    def x25519_exchange(self, private_raw: bytes, peer_public: bytes) -> bytes:
        private = self._pkey(self.lib.NID_X25519, private_raw, True)
        peer = self._pkey(self.lib.NID_X25519, peer_public, False)
        ctx = self.lib.EVP_PKEY_CTX_new(private, self.ffi.NULL)
        self._check(ctx != self.ffi.NULL)
        ctx = self.ffi.gc(ctx, self.lib.EVP_PKEY_CTX_free)
        self._check(self.lib.EVP_PKEY_derive_init(ctx) == 1)
        self._check(self.lib.EVP_PKEY_derive_set_peer(ctx, peer) == 1)
        shared = self.ffi.new("unsigned char[]", 32)
        size = self.ffi.new("size_t *", 32)
        self._check(self.lib.EVP_PKEY_derive(ctx, shared, size) == 1 and size[0] == 32)
        out = bytes(self.ffi.buffer(shared, 32))
        self._check(out != bytes(32))  # a small-order peer key: refuse, as OpenSSL does
        return out

    def chacha20_poly1305_decrypt(
        self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes
    ) -> bytes:
        """Raises EvpError unless the tag verifies: no plaintext is returned otherwise."""
        if len(key) != 32 or len(nonce) != 12 or len(ciphertext) < TAG_SIZE:
            raise EvpError
        lib, ffi, null = self.lib, self.ffi, self.ffi.NULL
        body, tag = ciphertext[:-TAG_SIZE], ciphertext[-TAG_SIZE:]
        cipher = lib.EVP_get_cipherbyname(b"chacha20-poly1305")
        self._check(cipher != null)
        ctx = lib.EVP_CIPHER_CTX_new()
        self._check(ctx != null)
        ctx = ffi.gc(ctx, lib.EVP_CIPHER_CTX_free)
        self._check(lib.EVP_CipherInit_ex(ctx, cipher, null, null, null, 0) == 1)
        self._check(lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_SET_IVLEN, 12, null) == 1)
        self._check(lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_SET_TAG, TAG_SIZE, tag) == 1)
        self._check(lib.EVP_CipherInit_ex(ctx, null, null, key, nonce, 0) == 1)
        size = ffi.new("int *")
        if aad:
            self._check(lib.EVP_CipherUpdate(ctx, null, size, aad, len(aad)) == 1)
        out = ffi.new("unsigned char[]", max(1, len(body)))
        self._check(lib.EVP_CipherUpdate(ctx, out, size, body, len(body)) == 1)
        written = size[0]
        final = ffi.new("unsigned char[]", 16)
        ok = lib.EVP_CipherFinal_ex(ctx, final, size) == 1  # 0: the tag did not verify
        if not ok:
            ffi.memmove(out, b"\0" * len(body), len(body))
        self._check(ok and written == len(body) and size[0] == 0)
        return bytes(ffi.buffer(out, written))


def load() -> Evp | None:
    try:
        from cryptography.hazmat.bindings._openssl import ffi, lib  # type: ignore[import-not-found]
    except ImportError:
        return None
    if not all(hasattr(lib, name) for name in NEEDED):
        return None
    return Evp(ffi, lib)
