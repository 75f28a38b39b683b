"""tests/vm/guest_tpm.py on the host: the TPM state a TPM image carries holds its host key,
and a boot's copy of it signs as that key while the cached state stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import swtpm
from tests.vm import cache, guest_tpm
from zkv import crypto, hostkey, tpm

pytestmark = pytest.mark.skipif(not swtpm.AVAILABLE, reason="swtpm is not installed")


def test_a_copy_of_the_state_signs_as_the_key_it_was_made_with(tmp_path: Path) -> None:
    state, ca = tmp_path / "tpm" / "state", tmp_path / "tpm" / "ca"
    made = guest_tpm.make_host_key(state, ca)
    assert made.handle == tpm.HOST_KEY_HANDLE and made.device == tpm.DEVICE
    before = cache.tree_digest(state)
    copy = guest_tpm.copy_state(state, tmp_path / "boot" / "state")
    with guest_tpm.serving(copy, ca) as chip:
        key = hostkey.TpmKey(made.handle, made.public_key, str(chip.socket))
        signature = key.sign(b"zkv unlock request")
    crypto.host_verify(made.public_key, signature, b"zkv unlock request")  # raises if not
    assert cache.tree_digest(state) == before, "the cached TPM state changed"


def test_a_fresh_tpm_does_not_hold_it(tmp_path: Path) -> None:
    made = guest_tpm.make_host_key(tmp_path / "a" / "state", tmp_path / "ca")
    other = tmp_path / "b" / "state"
    swtpm.manufacture(other, tmp_path / "ca")
    with guest_tpm.serving(other, tmp_path / "ca") as chip:
        key = hostkey.TpmKey(made.handle, made.public_key, str(chip.socket))
        with pytest.raises(hostkey.TpmKeyMissing):
            key.check()
