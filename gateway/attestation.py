"""Is a host key held by a TPM? The gateway's check of the enrolment evidence (pure).

The chain of belief, each link checked here:

1. The EK certificate chains to a CA in TPM_CA_BUNDLE (the TPM makers' CAs; in tests
   swtpm-localca's): its RSA key is a genuine TPM's endorsement key.
2. The attestation key (AK) sits in that same TPM: the gateway encrypts a credential to the EK
   for the AK's name (TPM2_MakeCredential, below) and only that TPM, with that AK loaded, can
   decrypt it (TPM2_ActivateCredential). The credential is derived from the gateway's
   challenge, so the gateway stores nothing between the two round trips and a recovered
   credential is good for one challenge only. The AK's name covers its attributes: restricted
   (it signs only TPM-made attestations) and fixedTPM.
3. The AK certifies the host key (TPM2_Certify over certify_nonce(challenge)), and the host
   key's attributes say it was made inside the TPM and cannot leave it
   (fixedTPM|fixedParent|sensitiveDataOrigin).

Any failure is one ``Refused``; the service turns it into the uniform 401 and records why.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # the TPM's credential wrapping is AES-CFB, which cryptography 47 moved here
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from zkv import crypto, tpm_format
from zkv.protocol import TpmCredential, TpmCredentialRequest, TpmEvidence, certify_nonce
from zkv.tpm_format import RESIDENT, RESTRICTED, SIGN, EccPublic, TpmFormatError

CONTEXT_CREDENTIAL = b"zkv-v1 tpm credential\n"
MAX_CHAIN = 4
AK_ATTRS = RESIDENT | RESTRICTED | SIGN


class Refused(Exception):
    """The evidence does not hold; the message is for the audit log only."""


Certificate = x509.Certificate


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """The CAs the gateway trusts to certify endorsement keys (TPM_CA_BUNDLE)."""
    return x509.load_pem_x509_certificates(pem)


def bundle_file(path: str) -> list[x509.Certificate]:
    """TPM_CA_BUNDLE's CAs; none when it is unset or unreadable (every TPM enrolment is then
    refused, and the audit log says why)."""
    if not path:
        return []
    try:
        with open(path, "rb") as pem:
            return load_bundle(pem.read(1 << 20))
    except (OSError, ValueError):
        return []


def credential_secret(key: bytes, challenge: str, ek_cert: bytes, ak_name: bytes) -> bytes:
    """The credential for one challenge, EK certificate and AK; recomputed, never stored."""
    data = CONTEXT_CREDENTIAL + challenge.encode("ascii") + _h(ek_cert) + ak_name
    return hmac.new(key, data, hashlib.sha256).digest()


def issue_credential(
    req: TpmCredentialRequest, key: bytes, bundle: list[x509.Certificate]
) -> TpmCredential:
    """The first round trip: a credential only the EK's TPM holding the AK can open."""
    ek = endorsement_key(req.ek_cert, bundle)
    ak = attestation_key(req.ak_public)
    secret = credential_secret(key, req.challenge, req.ek_cert, ak.name)
    return make_credential(ek, secret, ak.name)


def check(
    evidence: TpmEvidence, challenge: str, key: bytes, bundle: list[x509.Certificate]
) -> EccPublic:
    """The second round trip (inside the enrolment): the host key if the evidence holds."""
    endorsement_key(evidence.ek_cert, bundle)
    ak = attestation_key(evidence.ak_public)
    expected = credential_secret(key, challenge, evidence.ek_cert, ak.name)
    if not hmac.compare_digest(evidence.credential, expected):
        raise Refused("TPM credential not activated for this challenge")
    try:
        host = tpm_format.parse_public(evidence.key_public)
        info = tpm_format.parse_certify(evidence.attest)
        r, s = tpm_format.parse_ecdsa_signature(evidence.attest_signature)
    except TpmFormatError as exc:
        raise Refused(f"TPM evidence: {exc}") from None
    try:
        crypto.p256_verify(ak.point, r, s, evidence.attest)
    except crypto.BadSignature:
        raise Refused("certify not signed by the attestation key") from None
    if not hmac.compare_digest(info.extra, certify_nonce(challenge)):
        raise Refused("certify is for another challenge")
    if info.name != host.name:
        raise Refused("certify is of another key")
    if not host.has(RESIDENT | SIGN) or host.has(RESTRICTED):
        raise Refused("host key may exist outside the TPM (attributes)")
    return host


def endorsement_key(der: bytes, bundle: list[x509.Certificate]) -> rsa.RSAPublicKey:
    """The RSA EK of a certificate that chains to the bundle; else Refused."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise Refused("EK certificate unreadable") from None
    if not bundle:
        raise Refused("TPM_CA_BUNDLE unset or unreadable: TPM enrolment is off")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise Refused("EK certificate has an unreadable key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise Refused("EK certificate is not of an RSA 2048 EK")
    for _ in range(MAX_CHAIN):
        issuer = next((ca for ca in bundle if _issued_by(cert, ca)), None)
        if issuer is None:
            raise Refused("EK certificate not from a trusted CA")
        if issuer.subject == issuer.issuer:
            return key
        cert = issuer
    raise Refused("EK certificate chain too long")


def attestation_key(tpm2b_public: bytes) -> EccPublic:
    try:
        ak = tpm_format.parse_public(tpm2b_public)
    except TpmFormatError as exc:
        raise Refused(f"attestation key: {exc}") from None
    if not ak.has(AK_ATTRS):
        raise Refused("attestation key is not a restricted TPM-resident signing key")
    return ak


def make_credential(ek: rsa.RSAPublicKey, secret: bytes, name: bytes) -> TpmCredential:
    """TPM2_MakeCredential for an RSA EK of the standard template (SHA-256, AES-128-CFB),
    Part 1 section 24: a seed encrypted to the EK, from which an AES key wraps the secret
    and an HMAC key binds the wrapped secret to the AK's name."""
    seed = os.urandom(32)
    label = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"IDENTITY\0")
    encrypted_seed = ek.encrypt(seed, label)
    aes = kdfa(seed, b"STORAGE", name, b"", 128)
    encryptor = Cipher(algorithms.AES(aes), CFB(bytes(16))).encryptor()
    wrapped = encryptor.update(tpm_format.tpm2b(secret)) + encryptor.finalize()
    integrity = hmac.new(kdfa(seed, b"INTEGRITY", b"", b"", 256), wrapped + name, hashlib.sha256)
    return TpmCredential(tpm_format.tpm2b(integrity.digest()) + wrapped, encrypted_seed)


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """The TPM's KDFa with SHA-256 (Part 1, section 11.4.10.2; SP 800-108 counter mode)."""
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        data = struct.pack(">I", counter) + label + b"\0" + context_u + context_v
        out += hmac.new(key, data + struct.pack(">I", bits), hashlib.sha256).digest()
    return out[: bits // 8]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, InvalidSignature, ValueError, TypeError):
        return False
    return bool(constraints.ca)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
