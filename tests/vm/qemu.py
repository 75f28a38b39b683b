"""QEMU command lines shared by the helper VM and the boot driver."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.vm import testbed

QEMU = "qemu-system-x86_64"
GUESTFWD_ADDRESS = "10.0.2.100"
GUESTFWD_PORT = 80


def command(
    *,
    kernel: Path,
    initrd: Path,
    cmdline: Sequence[str],
    drives: Sequence[str],
    serial: str,
    host_port: int | None = None,
    icount: str | None = None,
    devices: Sequence[str] = (),
) -> list[str]:
    """A TCG machine booting ``kernel``/``initrd`` directly.

    KVM hangs on these hosts, and ``-erms,-fsrm`` keeps the guest off ``rep movsb``, which TCG
    runs a byte at a time (it made OpenZFS 2.1 decryption crawl). The user-mode network is
    restricted: with ``host_port``, the guest reaches 127.0.0.1:<host_port> on the host as
    10.0.2.100:80, and nothing else.

    ``icount`` (e.g. ``shift=0,sleep=on``): the guest's clock counts executed instructions
    (2**shift ns each) instead of the host's time, so its timestamps do not depend on how fast
    or how loaded the host is (bench/boot_time.py). icount needs single-threaded TCG, and a
    second vCPU does not come up under it: one vCPU.

    ``devices``: more QEMU arguments for devices (a TPM: tests/vm/guest_tpm.py).
    """
    netdev = "user,id=net0,restrict=on"
    if host_port is not None:
        netdev += (
            f",guestfwd=tcp:{GUESTFWD_ADDRESS}:{GUESTFWD_PORT}"
            f"-cmd:socat - TCP:127.0.0.1:{int(host_port)}"
        )
    args = [
        QEMU,
        "-accel",
        "tcg" if icount is None else "tcg,thread=single",
        "-machine",
        "q35",
        "-cpu",
        testbed.QEMU_CPU,
        "-smp",
        str(testbed.QEMU_SMP if icount is None else 1),
        "-m",
        str(testbed.QEMU_MEMORY_MB),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        " ".join(cmdline),
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=net0",
        "-serial",
        serial,
    ]
    for drive in drives:
        args += ["-drive", drive]
    if icount is not None:
        args += ["-icount", icount]
    return [*args, *devices]


def overlay(base: Path, target: Path, base_format: str = "raw") -> Path:
    """A qcow2 overlay backed by ``base``, so a boot never writes to the cached disk."""
    subprocess.run(
        [
            *("qemu-img", "create", "-q", "-f", "qcow2"),
            *("-F", base_format, "-b", str(base.resolve()), str(target)),
        ],
        check=True,
    )
    return target
