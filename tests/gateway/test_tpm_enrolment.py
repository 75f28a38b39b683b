"""The enrolment evidence of a TPM-held host key, against the real gateway and a real
(software) TPM: the genuine enrolment is accepted and its TPM-signed unlock request too; a
forged certify, a key not from the TPM, a replayed enrolment and an EK from an untrusted CA
are each refused with the one 401, and tell the owner nothing."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway import attestation
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway
from tests.harness.swtpm import Swtpm, running_swtpm
from tests.harness.tpm_enrol import Enrolment, credential, enrol, evidence
from zkv import protocol, tpm_format, tpm_tools
from zkv.protocol import TpmEvidence

UNAUTHORIZED = (401, {"error": "unauthorized"})


@pytest.fixture(scope="module")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    with running_swtpm(tmp_path_factory.mktemp("tpm")) as fresh:
        yield fresh


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, chip: Swtpm) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("gw")
    bundle = directory / "tpm-cas.pem"
    bundle.write_bytes(chip.ca_bundle)
    with running_gateway(directory, settings={"TPM_CA_BUNDLE": str(bundle)}) as gateway:
        yield gateway


def refused(gw: RunningGateway, response: requests.Response, before: int) -> None:
    assert (response.status_code, response.json()) == UNAUTHORIZED
    assert len(gw.notifications()) == before


def test_a_genuine_tpm_enrolment_and_its_signed_unlock_are_accepted(
    gw: RunningGateway, chip: Swtpm
) -> None:
    token = gw.invite("tpm01", "--replace")
    found = evidence(gw, chip)
    answer = enrol(gw, "tpm01", found.key, token, found)
    assert answer.status_code == 202, answer.text
    host = client.Host("tpm01", found.key)
    assert answer.json() == {"host_id": host.host_id, "status": "approved"}
    assert "key held by TPM: yes" in gw.notifications()[-1]
    listed = [line for line in gw.cli("hosts", "list").stdout.splitlines() if host.host_id in line]
    assert len(listed) == 1 and "tpm=yes" in listed[0]
    boot = client.unlock(gw.url, host)
    assert boot.response.status_code == 201, boot.response.text
    assert "Key held by TPM: yes." in gw.notifications()[-1]
    gw.approve(boot.created.request_id, boot.created.pin)
    released = client.poll(gw.url, boot.created.request_id, wait=5)
    assert client.opened(boot, released) == gw.secret


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


FORGERIES: dict[str, Callable[[TpmEvidence], TpmEvidence]] = {
    "certify signature": lambda e: e._replace(attest_signature=_flip(e.attest_signature, 10)),
    "altered attest": lambda e: e._replace(attest=_flip(e.attest, 40)),  # its clock info
    "credential not activated": lambda e: e._replace(credential=bytes(32)),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_certify_is_refused(gw: RunningGateway, chip: Swtpm, forgery: str) -> None:
    token, before = gw.invite("tpm02", "--replace"), len(gw.notifications())
    found = evidence(gw, chip)
    forged = found._replace(evidence=FORGERIES[forgery](found.evidence))
    refused(gw, enrol(gw, "tpm02", found.key, token, forged), before)
    assert enrol(gw, "tpm02", found.key, token, evidence(gw, chip)).status_code == 202


def test_a_certify_over_another_nonce_is_refused(gw: RunningGateway, chip: Swtpm) -> None:
    token, before = gw.invite("tpm03", "--replace"), len(gw.notifications())
    found = evidence(gw, chip, nonce=lambda c: protocol.certify_nonce(c[::-1]))
    refused(gw, enrol(gw, "tpm03", found.key, token, found), before)


def test_a_replayed_enrolment_is_refused(gw: RunningGateway, chip: Swtpm) -> None:
    """Evidence from an accepted enrolment, once more: its challenge is spent; and the same
    evidence under a new challenge does not hold (credential and certify name the old one)."""
    token = gw.invite("tpm04", "--replace")
    found = evidence(gw, chip)
    assert enrol(gw, "tpm04", found.key, token, found).status_code == 202
    token, before = gw.invite("tpm04", "--replace"), len(gw.notifications())
    refused(gw, enrol(gw, "tpm04", found.key, token, found), before)
    newer = found._replace(challenge=client.challenge(gw.url).challenge)
    refused(gw, enrol(gw, "tpm04", found.key, token, newer), before)


@dataclasses.dataclass
class SoftwareKey:
    """A P-256 key in software, dressed up as a TPM key: attributes claimed, certify self-made
    (its own 'AK', restricted by its claimed attributes, signs a TPMS_ATTEST it wrote)."""

    private: ec.EllipticCurvePrivateKey = dataclasses.field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def public_key(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)

    def sign(self, message: bytes) -> bytes:
        r, s = utils.decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def tpm2b_public(self, attrs: int) -> bytes:
        numbers = self.private.public_key().public_numbers()
        area = struct.pack(">HHI", tpm_format.ALG_ECC, tpm_format.ALG_SHA256, attrs)
        area += tpm_format.tpm2b(b"") + struct.pack(
            ">HHHHH",
            tpm_format.ALG_NULL,
            tpm_format.ALG_ECDSA,
            tpm_format.ALG_SHA256,
            tpm_format.ECC_NIST_P256,
            tpm_format.ALG_NULL,
        )
        area += tpm_format.tpm2b(numbers.x.to_bytes(32, "big"))
        area += tpm_format.tpm2b(numbers.y.to_bytes(32, "big"))
        return tpm_format.tpm2b(area)

    def certify(self, ak: SoftwareKey, name: bytes, nonce: bytes) -> tuple[bytes, bytes]:
        attest = struct.pack(">IH", tpm_format.GENERATED_VALUE, tpm_format.ST_ATTEST_CERTIFY)
        attest += tpm_format.tpm2b(b"\0\x0b" + bytes(32)) + tpm_format.tpm2b(nonce)
        attest += bytes(25) + tpm_format.tpm2b(name) + tpm_format.tpm2b(name)
        sig = ak.sign(attest)
        rs = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        return attest, tpm_format.ecdsa_signature(*rs)


def test_a_key_not_from_the_tpm_is_refused(gw: RunningGateway, chip: Swtpm) -> None:
    """The genuine EK certificate, but a software 'AK' (its credential cannot be activated
    without the TPM: the best a forger can send is a guess) and a self-made certify; then
    the genuine AK's activated credential beside a software host key it never certified."""
    token, before = gw.invite("tpm05", "--replace"), len(gw.notifications())
    soft, soft_ak = SoftwareKey(), SoftwareKey()
    key_public = soft.tpm2b_public(tpm_format.SIGNING_KEY_ATTRS)
    ak_public = soft_ak.tpm2b_public(attestation.AK_ATTRS | tpm_format.USER_WITH_AUTH)
    real = evidence(gw, chip)
    challenge = client.challenge(gw.url).challenge
    asked = credential(
        gw, protocol.TpmCredentialRequest(challenge, real.evidence.ek_cert, ak_public)
    )
    assert asked.status_code == 201  # encrypted to the real EK: useless without that TPM
    name = tpm_format.parse_public(key_public).name
    attest, signature = soft.certify(soft_ak, name, protocol.certify_nonce(challenge))
    made = TpmEvidence(real.evidence.ek_cert, ak_public, bytes(32), key_public, attest, signature)
    refused(gw, enrol(gw, "tpm05", soft, token, Enrolment(real.key, challenge, made)), before)
    # The real AK and its activated credential, but the software key and a self-made certify:
    # the certify's signature is not the AK's.
    attest, signature = soft.certify(soft_ak, name, protocol.certify_nonce(real.challenge))
    mixed = real.evidence._replace(key_public=key_public, attest=attest, attest_signature=signature)
    refused(gw, enrol(gw, "tpm05", soft, token, real._replace(evidence=mixed)), before)
    # The genuine evidence, but the request signed by (and naming) the software key.
    refused(gw, enrol(gw, "tpm05", soft, token, real), before)


def test_an_ek_certificate_from_an_untrusted_ca_is_refused(
    gw: RunningGateway, tmp_path: Path
) -> None:
    """A genuine (software) TPM, but its EK was certified by a CA the gateway does not trust."""
    before = len(gw.notifications())
    with running_swtpm(tmp_path) as stranger:  # its own swtpm-localca: another CA
        found = evidence_without_credential(gw, stranger)
        refused(gw, credential(gw, found), before)


def evidence_without_credential(gw: RunningGateway, chip: Swtpm) -> protocol.TpmCredentialRequest:
    with tpm_tools.tools(chip.tcti) as tools:
        ek_cert, ak_public = tools.ek_certificate(), tools.attestation_key()
    return protocol.TpmCredentialRequest(client.challenge(gw.url).challenge, ek_cert, ak_public)


def test_require_tpm_refuses_file_key_hosts(tmp_path: Path, chip: Swtpm) -> None:
    """REQUIRE_TPM: no file-key host enrols, and one enrolled before the policy cannot ask."""
    bundle = tmp_path / "tpm-cas.pem"
    bundle.write_bytes(chip.ca_bundle)
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = {"TPM_CA_BUNDLE": str(bundle), "SQLALCHEMY_DATABASE_URI": database}
    file_host = client.Host("file01")
    with running_gateway(tmp_path / "open", settings=settings) as before_policy:
        before_policy.admit(file_host)
        assert client.unlock(before_policy.url, file_host).response.status_code == 201
    with running_gateway(tmp_path / "strict", settings={**settings, "REQUIRE_TPM": True}) as gw:
        count = len(gw.notifications())
        refused(gw, client.enroll(gw.url, client.Host("file02"), gw.invite("file02")), count)
        refused(gw, client.unlock(gw.url, file_host).response, count)
        token = gw.invite("tpm07")
        found = evidence(gw, chip)
        assert enrol(gw, "tpm07", found.key, token, found).status_code == 202
        assert client.unlock(gw.url, client.Host("tpm07", found.key)).response.status_code == 201
