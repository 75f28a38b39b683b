"""Pinning the gateway's public key: the client's DER walker against pyca's x509, and the
HTTPS client with pins against a local TLS stub."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.unit.test_early_gateway_client import request, tls
from zkv import protocol
from zkv.encoding import b64
from zkv.errors import ConfigError, GatewayUnreachable
from zkv_early import pinning
from zkv_early.gateway_client import GatewayClient
from zkv_early.http11 import Url

__all__ = ["tls"]  # the fixture


def pyca_pin(der: bytes) -> str:
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return b64(hashlib.sha256(spki).digest())


@pytest.mark.parametrize("key_type", list(trustme.KeyType))
def test_the_der_walker_finds_the_key_pyca_finds(key_type: trustme.KeyType) -> None:
    leaf = trustme.CA(key_type=key_type).issue_cert("gw.example", key_type=key_type)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    assert pinning.spki_sha256(der) == pyca_pin(der)


def test_a_certificate_the_walker_cannot_read_is_a_mismatch() -> None:
    der = ssl.PEM_cert_to_DER_cert(trustme.CA().cert_pem.bytes().decode())
    for broken in (der[:100], b"\x30\x03\x02\x01", b"", der[:-1], b"\x31" + der[1:]):
        with pytest.raises(pinning.PinMismatch, match="could not be read"):
            pinning.spki_sha256(broken)


def stub_pin(url: str) -> str:
    parts = Url(url)
    return pyca_pin(ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((parts.host, parts.port))))


def answered(server: Any) -> None:
    server.answers[protocol.PATH_UNLOCK] = (
        201,
        {"request_id": "cd" * 16, "pin": "123456", "expires_at": 2_000_000_000},
    )


def test_the_pinned_key_alone_is_trusted(tls: tuple[Any, str, Path]) -> None:
    server, url, _ca_file = tls
    answered(server)
    other = "LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE="
    client = GatewayClient(url, None, 5, (other, stub_pin(url)))  # no CA: the pin is the trust
    assert client.create(request()).pin == "123456"
    client.close()


def test_another_key_is_refused_even_under_the_right_ca(tls: tuple[Any, str, Path]) -> None:
    server, url, ca_file = tls
    answered(server)
    wrong = "LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE="
    with pytest.raises(GatewayUnreachable) as refused:
        GatewayClient(url, str(ca_file), 5, (wrong,)).create(request())
    assert "the gateway's key does not match [gateway] pin_sha256" in refused.value.message
    assert server.seen == []  # nothing was sent over the connection


def test_another_ca_is_refused(tls: tuple[Any, str, Path], tmp_path: Path) -> None:
    server, url, _ca_file = tls
    answered(server)
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(GatewayUnreachable, match="TLS certificate not trusted"):
        GatewayClient(url, str(other), 5).create(request())
    assert server.seen == []


def test_https_without_a_ca_or_a_pin_never_falls_back_to_the_system() -> None:
    with pytest.raises(ConfigError, match="no CA file and no pinned key"):
        GatewayClient("https://localhost:1", None, 2).create(request())
