"""The boot-time bench's clocks: QEMU's -icount command line and the guest-clock milestones."""

from __future__ import annotations

from pathlib import Path

from tests.vm import qemu, testbed
from tests.vm.trace import ZFS_LOADED, guest_times, stamp_of

# A dracut console as the driver logs it: host stamps, then the guest kernel's where it has one.
DRACUT_LOG = """\
[   1.200] [    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)
[   4.000] Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm) dracut-059-4 (Initramfs)\x1b[0m!
[   9.500] [    8.100000] spl: loading out-of-tree module taints kernel.
[  11.000] Recovery passphrase: [   9.672626] ZFS: Loaded module v2.3.2-2~bpo12+2
[  20.000] [   18.300000] systemd[1]: Detected architecture x86-64.
[  20.100] \r
[  20.100] Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!\r
[  20.200] [   18.400000] systemd[1]: Hostname set to <zkv-e2e>.
"""


def test_guest_times_reads_the_kernels_clock(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(DRACUT_LOG)
    times = guest_times(log)
    assert times.module == 9.672626  # the stamp of the ZFS line, mid-line after a prompt
    assert times.switched == 18.3  # the last kernel line before the real root's greeting
    assert stamp_of(log, ZFS_LOADED) == 11.0  # the host's clock, for the default mode


def test_guest_times_without_the_real_roots_greeting(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(DRACUT_LOG.split("[  20.100] \r")[0])
    assert guest_times(log).switched is None


def _command(icount: str | None) -> list[str]:
    return qemu.command(
        kernel=Path("vmlinuz"),
        initrd=Path("initrd.img"),
        cmdline=["console=ttyS0"],
        drives=[],
        serial="stdio",
        icount=icount,
    )


def test_icount_runs_one_vcpu_single_threaded() -> None:
    plain = _command(None)
    assert plain[plain.index("-accel") + 1] == "tcg"
    assert plain[plain.index("-smp") + 1] == str(testbed.QEMU_SMP)
    assert "-icount" not in plain
    counted = _command("shift=0,sleep=on")
    assert counted[counted.index("-accel") + 1] == "tcg,thread=single"
    assert counted[counted.index("-smp") + 1] == "1"
    assert counted[counted.index("-icount") + 1] == "shift=0,sleep=on"
