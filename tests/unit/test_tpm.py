"""zkv/tpm.py and zkv/tpm_format.py against a real (software) TPM 2.0: the key is made inside
it, signs through the command layer, is missing on another TPM, and the credential the gateway
makes (gateway/attestation.py) opens only on the TPM of its EK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import attestation
from tests.harness.swtpm import Swtpm, running_swtpm
from zkv import crypto, hostkey, protocol, tpm, tpm_format, tpm_tools
from zkv.errors import TpmError, TpmKeyMissing


@pytest.fixture
def chip(tmp_path: Path) -> Iterator[Swtpm]:
    with running_swtpm(tmp_path) as fresh:
        yield fresh


def enrolled_key(chip: Swtpm) -> hostkey.TpmKey:
    with tpm_tools.tools(chip.tcti) as tools:
        held = tools.host_key()
    return hostkey.TpmKey(tpm.HOST_KEY_HANDLE, held.point, str(chip.socket))


def test_the_key_is_made_in_the_tpm_and_never_exported(chip: Swtpm) -> None:
    with tpm_tools.tools(chip.tcti) as tools:
        held = tools.host_key()
        again = tools.host_key()  # a second enrolment finds the same key
    assert again == held
    assert held.has(tpm_format.RESIDENT | tpm_format.SIGN)
    assert not held.has(tpm_format.RESTRICTED)
    assert len(held.point) == crypto.P256_POINT


def test_a_signature_through_the_command_layer_verifies(chip: Swtpm) -> None:
    key = enrolled_key(chip)
    message = protocol.CONTEXT_UNLOCK + b"{}"
    signature = key.sign(message)
    crypto.host_verify(key.public_key, signature, message)
    with pytest.raises(crypto.BadSignature):
        crypto.host_verify(key.public_key, signature, message + b" ")


def test_the_key_file_says_where_the_key_is_and_holds_no_secret(
    chip: Swtpm, tmp_path: Path
) -> None:
    key = enrolled_key(chip)
    path = tmp_path / "host.key"
    hostkey.save_tpm(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert hostkey.load(path, device=key.device) == key
    assert path.read_text().split()[:2] == ["zkv-host-key-tpm-v1", "0x817a6b76"]


def test_the_disk_booted_with_another_tpm_cannot_sign(chip: Swtpm, tmp_path: Path) -> None:
    key = enrolled_key(chip)
    with running_swtpm(tmp_path / "other") as other:
        moved = key._replace(device=str(other.socket))
        with pytest.raises(TpmKeyMissing):  # the handle is empty there
            moved.sign(b"x")
        enrolled_key(other)  # and once that TPM has a key of its own, it is another key
        with pytest.raises(TpmKeyMissing):
            moved.sign(b"x")


def test_no_tpm_is_one_clear_error(tmp_path: Path) -> None:
    key = hostkey.TpmKey(tpm.HOST_KEY_HANDLE, b"\x02" + bytes(32), str(tmp_path / "none"))
    with pytest.raises(TpmError, match="cannot open"):
        key.sign(b"x")


def test_the_gateways_credential_opens_only_on_the_tpm_of_the_ek(
    chip: Swtpm, tmp_path: Path
) -> None:
    with tpm_tools.tools(chip.tcti) as tools:
        ek_cert, ak_public = tools.ek_certificate(), tools.attestation_key()
        ak_name = tpm_format.parse_public(ak_public).name
        ek = attestation.endorsement_key(ek_cert, attestation.load_bundle(chip.ca_bundle))
        secret = bytes(range(32))
        made = attestation.make_credential(ek, secret, ak_name)
        assert tools.activate(made.credential_blob, made.encrypted_secret) == secret
        wrong_name = attestation.make_credential(ek, secret, ak_name[:-1] + b"\0")
        with pytest.raises(TpmError):  # bound to the AK's name: another key cannot open it
            tools.activate(wrong_name.credential_blob, wrong_name.encrypted_secret)
    with (
        running_swtpm(tmp_path / "other", ca_dir=chip.ca_dir) as other,
        tpm_tools.tools(other.tcti) as tools,
    ):
        tools.attestation_key()
        with pytest.raises(TpmError):  # another TPM's EK cannot open it
            tools.activate(made.credential_blob, made.encrypted_secret)


def test_boot_path_signature_cost(chip: Swtpm) -> None:
    """What one signature costs through the command layer (docs/tpm.md quotes the figure)."""
    key = enrolled_key(chip)
    start = time.perf_counter()
    for _ in range(20):
        key.sign(b"m")
    per_signature = (time.perf_counter() - start) / 20
    assert per_signature < 0.5  # swtpm: about 1 ms; a hardware TPM: tens of ms
