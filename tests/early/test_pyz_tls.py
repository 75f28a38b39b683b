"""The built zkv-early.pyz against the real gateway behind TLS: the boot trusts what early.conf
names, the gateway's CA or its pinned key, and nothing by default (issue 16 item 6)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.early.conftest import Machine
from tests.harness.gateway import RunningGateway, running_gateway, tls_front
from zkv.encoding import b64
from zkv_early.http11 import Url


@dataclass
class Tls:
    gw: RunningGateway
    ca_file: Path  # the CA that signed the gateway's certificate
    pin: str  # the gateway's key, computed with pyca's x509 (not the client's DER walker)
    other_ca_file: Path
    other_pin: str


def spki_pin(cert_pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64(hashlib.sha256(spki).digest())


@pytest.fixture
def tls(machine: Machine, tmp_path: Path) -> Iterator[Tls]:
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("localhost")
    pem = tmp_path / "server.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file, other_ca_file = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other.cert_pem.write_to_path(str(other_ca_file))
    other_pin = spki_pin(other.issue_cert("localhost").cert_chain_pems[0].bytes())
    secret = machine.repository_key.hex().encode()
    with running_gateway(tmp_path / "gw", approver="auto", secret=secret) as gw:
        machine.enroll(gw)
        with tls_front(Url(gw.url).port, pem) as port:
            machine.gateway_url = f"https://localhost:{port}"
            machine.cmdline = "zkv.timeout=6"
            pin = spki_pin(leaf.cert_chain_pems[0].bytes())
            yield Tls(gw, ca_file, pin, other_ca_file, other_pin)


def unlock_requests(gw: RunningGateway) -> int:
    return sum("unlock_requested" in line for line in gw.audit())


def test_the_gateways_own_ca(machine: Machine, tls: Tls) -> None:
    machine.settings = {"gateway": {"ca_file": str(tls.ca_file)}}
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert "keys loaded: rpool" in result.stderr


def test_the_gateways_pinned_key_without_any_ca(machine: Machine, tls: Tls) -> None:
    machine.settings = {"gateway": {"pin_sha256": f"{tls.other_pin} {tls.pin}"}}  # a rotation
    result = machine.run()
    assert result.returncode == 0, result.stderr


def test_a_client_pinned_to_another_ca_refuses_the_gateway(machine: Machine, tls: Tls) -> None:
    machine.settings = {"gateway": {"ca_file": str(tls.other_ca_file)}}
    result = machine.run()
    assert result.returncode in (31, 43), result.stderr  # unreachable, or out of time retrying
    assert "TLS certificate not trusted" in result.stderr
    assert unlock_requests(tls.gw) == 0


def test_a_client_pinned_to_another_key_refuses_the_gateway(machine: Machine, tls: Tls) -> None:
    # The right CA as well: a pin narrows what the CA would vouch for.
    machine.settings = {"gateway": {"ca_file": str(tls.ca_file), "pin_sha256": tls.other_pin}}
    result = machine.run()
    assert result.returncode in (31, 43), result.stderr
    assert "the gateway's key does not match [gateway] pin_sha256" in result.stderr
    assert unlock_requests(tls.gw) == 0


def test_no_ca_and_no_pin_is_refused_not_the_system_bundle(machine: Machine, tls: Tls) -> None:
    result = machine.run()  # early.conf names neither
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].endswith(
        "early.conf must name the gateway's CA ([gateway] ca_file = PATH, or ca_file = system "
        "for the system bundle) or pin its key ([gateway] pin_sha256)"
    ), lines
    assert unlock_requests(tls.gw) == 0


def test_ca_file_system_is_the_system_bundle(machine: Machine, tls: Tls) -> None:
    """An explicit opt-in; the test CA is not in the system bundle, so it is refused."""
    machine.settings = {"gateway": {"ca_file": "system"}}
    result = machine.run()
    assert result.returncode in (31, 43), result.stderr
    assert "TLS certificate not trusted" in result.stderr
