"""A TPM-held host key's enrolment as `zkv enroll --tpm` makes it, against a real gateway:
the evidence gathered through a (software) TPM, and the enrolment itself.

Used by tests/gateway/test_tpm_enrolment.py (which forges and replays parts of it) and by the
VM boot fixtures (tests/vm/zkv_boot.py), which enrol a TPM image's key before it boots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import requests

from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway
from tests.harness.swtpm import Swtpm
from zkv import hostkey, protocol, tpm, tpm_format, tpm_tools
from zkv.protocol import TpmEvidence


class Enrolment(NamedTuple):
    key: hostkey.TpmKey
    challenge: str
    evidence: TpmEvidence


def evidence(
    gw: RunningGateway, chip: Swtpm, nonce: Callable[[str], bytes] = protocol.certify_nonce
) -> Enrolment:
    """What `zkv enroll --tpm` gathers: the TPM's key, its EK certificate, a fresh AK, the
    gateway's credential activated, the AK's certify of the key over ``nonce(challenge)``."""
    with tpm_tools.tools(chip.tcti) as tools:
        held = tools.host_key()
        ek_cert, ak_public = tools.ek_certificate(), tools.attestation_key()
        challenge = client.challenge(gw.url).challenge
        issued = credential(gw, protocol.TpmCredentialRequest(challenge, ek_cert, ak_public))
        assert issued.status_code == 201, issued.text
        made = protocol.TpmCredential.from_json(issued.json())
        activated = tools.activate(made.credential_blob, made.encrypted_secret)
        attest, signature = tools.certify(nonce(challenge))
    key = hostkey.TpmKey(tpm.HOST_KEY_HANDLE, held.point, str(chip.socket))
    public = tpm_format.tpm2b(held.area)
    found = TpmEvidence(ek_cert, ak_public, activated, public, attest, signature)
    return Enrolment(key, challenge, found)


def credential(gw: RunningGateway, req: protocol.TpmCredentialRequest) -> requests.Response:
    url = gw.url + protocol.PATH_TPM_CREDENTIALS
    return requests.post(url, json=req.to_json(), timeout=10)


def enrol(
    gw: RunningGateway, hostname: str, key: protocol.HostKey, token: str, found: Enrolment
) -> requests.Response:
    req = protocol.EnrollRequest.create(hostname, key, token, found.challenge, tpm=found.evidence)
    return requests.post(gw.url + protocol.PATH_HOSTS, json=req.to_json(), timeout=10)


def admit(gw: RunningGateway, hostname: str, chip: Swtpm) -> hostkey.TpmKey:
    """Invite ``hostname`` and enrol the key ``chip`` holds, with its evidence (the gateway's
    TPM_CA_BUNDLE must hold chip.ca_bundle); returns the key, signing through ``chip``."""
    found = evidence(gw, chip)
    answer = enrol(gw, hostname, found.key, gw.invite(hostname), found)
    assert answer.status_code == 202, answer.text
    return found.key
