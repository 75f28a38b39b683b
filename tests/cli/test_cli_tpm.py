"""``zkv enroll --tpm`` against the real gateway and a software TPM: the key is made in the TPM,
the file beside the keystore only says where, and the boot's signed request is accepted; an
untrusted TPM is refused and nothing is written; no TPM is one clear line."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Zkv
from tests.harness import protocol_client as client
from tests.harness.gateway import running_gateway
from tests.harness.swtpm import running_swtpm
from zkv import hostkey


def test_enroll_with_the_tpm_then_unlock(zkv: Zkv, tmp_path: Path) -> None:
    zkv.make_store()
    with running_swtpm(tmp_path) as chip:
        bundle = tmp_path / "tpm-cas.pem"
        bundle.write_bytes(chip.ca_bundle)
        with running_gateway(tmp_path / "gw", settings={"TPM_CA_BUNDLE": str(bundle)}) as gw:
            token = gw.invite("box1").encode()
            args = ("enroll", "--gateway", gw.url, "--hostname", "box1", "--tpm")
            out = zkv.ok(*args, "--tcti", chip.tcti, stdin=token)
            host_id = out.stdout.decode().split()[2]
            assert "held by the TPM" in out.stderr
            path = hostkey.default_path(zkv.keystore)
            key = hostkey.load(path, device=str(chip.socket))
            assert isinstance(key, hostkey.TpmKey)
            assert client.Host("box1", key).host_id == host_id
            listed = gw.cli("hosts", "list").stdout
            assert f"{host_id}  approved" in listed and "tpm=yes" in listed
            boot = client.unlock(gw.url, client.Host("box1", key))
            assert boot.response.status_code == 201, boot.response.text


def test_enroll_with_an_untrusted_tpm_is_refused_and_writes_nothing(
    zkv: Zkv, tmp_path: Path
) -> None:
    zkv.make_store()
    with running_swtpm(tmp_path) as chip, running_gateway(tmp_path / "gw") as gw:
        token = gw.invite("box1").encode()  # the gateway has no TPM_CA_BUNDLE
        args = ("enroll", "--gateway", gw.url, "--hostname", "box1", "--tpm")
        result = zkv(*args, "--tcti", chip.tcti, stdin=token)
        assert result.code == 32, result.stderr
        assert "refused" in result.error_line
        assert not hostkey.default_path(zkv.keystore).exists()


def test_enroll_without_a_tpm_is_one_clear_line(zkv: Zkv, tmp_path: Path) -> None:
    zkv.make_store()
    token = b"zkv1-" + b"A" * 43
    tcti = f"swtpm:path={tmp_path / 'no-such-tpm'}"
    args = ("enroll", "--gateway", "http://127.0.0.1:9", "--tpm", "--tcti", tcti)
    result = zkv(*args, stdin=token)
    assert result.code == 42, result.stderr
    assert result.error_line.startswith("zkv: error: TPM: tpm2_getcap:")
