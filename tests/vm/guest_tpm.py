"""A TPM 2.0 for a guest: swtpm state made on the host, attached to QEMU as a tpm-tis device.

The zkv image with a TPM-held host key (``zkv_image.build(..., tpm=True)``) carries the swtpm
state in which that key was made (persistent at zkv.tpm.HOST_KEY_HANDLE). Each boot runs its
own swtpm on a copy of that state: a TPM changes its state as it runs, the cached one never
does. Before the boot, ``serving`` gives the host a command socket on the same state (the
gateway fixture signs the host's enrolment through it); ``attached`` then hands the TPM to QEMU.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness.swtpm import Swtpm, manufacture
from zkv import hostkey, tpm, tpm_tools


def make_host_key(state: Path, ca_dir: Path) -> hostkey.TpmKey:
    """Manufacture a TPM at ``state`` (EK certificate signed by a CA in ``ca_dir``) and create
    the host key in it, as `zkv enroll --tpm` does; returns the key as the guest will see it."""
    manufacture(state, ca_dir)
    with serving(state, ca_dir) as chip, tpm_tools.tools(chip.tcti) as tools:
        held = tools.host_key()
    return hostkey.TpmKey(tpm.HOST_KEY_HANDLE, held.point)


@contextlib.contextmanager
def serving(state: Path, ca_dir: Path) -> Iterator[Swtpm]:
    """swtpm on ``state`` with a command socket for the host (tpm2-tools, zkv.tpm)."""
    with _short_dir() as sockets:
        chip = Swtpm(state, sockets / "sock", ca_dir)
        chip.start()
        try:
            yield chip
        finally:
            chip.stop()


def copy_state(state: Path, dest: Path) -> Path:
    """A boot's own copy of a cached TPM state."""
    shutil.copytree(state, dest)
    return dest


@contextlib.contextmanager
def attached(state: Path) -> Iterator[list[str]]:
    """swtpm on ``state`` for QEMU (control channel only: QEMU passes it the data channel);
    yields QEMU's arguments. The TPM lives until the context ends, across the guest's boots."""
    with _short_dir() as sockets:
        chip = Swtpm(state, sockets / "ctrl", state.parent)
        chip.start(qemu=True)
        try:
            yield [
                *("-chardev", f"socket,id=chrtpm,path={chip.socket}"),
                *("-tpmdev", "emulator,id=tpm0,chardev=chrtpm"),
                *("-device", "tpm-tis,tpmdev=tpm0"),
            ]
        finally:
            chip.stop()


@contextlib.contextmanager
def _short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="zkv-gtpm-", dir="/tmp") as name:
        yield Path(name)
