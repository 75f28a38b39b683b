"""Boot time, kernel start -> root mounted (switched to), zkv pre-approved vs the passphrase boot.

    python3 -m bench.boot_time [--flavour dracut|initramfs-tools]... [--runs N] [--clock host]

zkv: the gateway's auto approver (tests only) says yes at once, so the figure is zkv's own
cost: Python start, network, the request, opening the keystore, loading the keys. Baseline: the
same disk with the initrd built without zkv, the passphrase typed the moment OpenZFS asks.
The difference is the point (target: +1 s). A third boot per round has the host key in a
TPM (swtpm attached as a tpm-tis device, zkv_image.build(tpm=True)): the client signs through
/dev/tpmrm0, and the image carries the kernel's TPM drivers. Its column and its paired delta
against the file-key boot are what the TPM adds (issue 15).

Two clocks:
* ``--clock guest`` (default): QEMU counts instructions (``-icount shift=0,sleep=on``: 1 ns
  each, a 1 GIPS CPU; idle time passes as on the host) and the figures are the guest kernel's
  timestamps. They do not depend on how fast or loaded the host is (a pair repeats to 0.1 s),
  nor on TCG's translation of new code, which has no counterpart on real hardware and which
  zkv's client (an interpreter, OpenSSL) adds a lot of. icount needs one vCPU: zkv's client
  and the boot share it;
* ``--clock host``: the host's, under plain TCG with 2 vCPUs, as the e2e tests boot. Absolute
  figures are slow, and a single pair swings by seconds with this host's speed (it shares 2
  cores with the 2 vCPUs and QEMU's own threads).

The end point is the real root's systemd greeting the console ("Welcome to Debian ...!", not
dracut's "(Initramfs)" one): the root is mounted and switched to (on the guest's clock: the
last kernel line before it). On the host's clock the real root's marker line after
zfs-mount.service is printed too: there zkv boots also pay for loading and mounting
tank/secure, which the baseline leaves locked.
Runs are interleaved (baseline, zkv, baseline, ...); the figures are medians, and the paired
delta is the median of each zkv boot minus the baseline boot just before it, with the range of
those differences. The paired delta is also split at the kernel's "ZFS: Loaded module" line:
before it, zkv's client starts alongside udev and the module's load; after it come the import,
the key and the switch to the real root. Needs root and the e2e prerequisites.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.vm import guest_tpm, testbed, zkv_image
from tests.vm.driver import Guest
from tests.vm.trace import ZFS_LOADED, guest_times, stamp_of
from tests.vm.zkv_boot import gateway, run_boot

ICOUNT = "shift=0,sleep=on"


@dataclass(frozen=True)
class Run:
    switched: float  # kernel start -> the real root's systemd took over
    module: float  # kernel start -> the ZFS module loaded
    marker: float | None  # kernel start -> the real root's marker line (host's clock only)


def _run(log: Path, icount: str | None, kernel: float, switched: float, marker: float) -> Run:
    """A boot's Run from its console log: the guest's clock under icount, else the host's."""
    if icount is not None:
        guest = guest_times(log)
        assert guest.module is not None and guest.switched is not None, f"no milestones: {log}"
        return Run(guest.switched, guest.module, None)
    module = stamp_of(log, ZFS_LOADED)
    assert module is not None, f"no 'ZFS: Loaded module' line in {log}"
    return Run(switched - kernel, module - kernel, marker - kernel)


def zkv_boot(zimg: zkv_image.ZkvImage, icount: str | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp, contextlib.ExitStack() as stack:
        log = Path(tmp) / "console.log"
        devices: list[str] = []
        if zimg.tpm_state is None:
            gw = stack.enter_context(gateway(zimg, Path(tmp), approver="auto"))
        else:  # this boot's own copy of the TPM; the host enrols through it, then the guest
            state = guest_tpm.copy_state(zimg.tpm_state, Path(tmp) / "tpm" / "state")
            with guest_tpm.serving(state, zimg.tpm_state.parent / "ca") as chip:
                gw = stack.enter_context(gateway(zimg, Path(tmp), approver="auto", tpm=chip))
            devices = stack.enter_context(guest_tpm.attached(state))
        with Guest(
            zimg.image, host_port=gw.guest_port, console_log=log, icount=icount, devices=devices
        ) as g:
            out = run_boot(g)
        assert out.data_mounted and out.kernel is not None and out.root_at is not None
        assert out.switched_at is not None, "no real-root systemd greeting on the console"
        return _run(log, icount, out.kernel, out.switched_at, out.root_at)


def baseline_boot(zimg: zkv_image.ZkvImage, icount: str | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp:
        log = Path(tmp) / "console.log"
        with Guest(zimg.base, console_log=log, icount=icount) as guest:
            t = guest.boot().timings
        assert t.kernel is not None and t.root is not None and t.switched is not None
        return _run(log, icount, t.kernel, t.switched, t.root)


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def _marker(bases: list[Run], zkvs: list[Run]) -> str:
    base = [r.marker for r in bases if r.marker is not None]
    zkv = [r.marker for r in zkvs if r.marker is not None]
    if not base or not zkv:
        return "-"
    base_m, zkv_m = statistics.median(base), statistics.median(zkv)
    return f"{base_m:.1f} s, {zkv_m:.1f} s, {zkv_m - base_m:+.1f} s ({_runs(base)} vs {_runs(zkv)})"


def _paired(firsts: list[Run], seconds: list[Run]) -> str:
    diffs = [b.switched - a.switched for a, b in zip(firsts, seconds, strict=True)]
    return f"{statistics.median(diffs):+.1f} s ({min(diffs):+.1f} to {max(diffs):+.1f})"


def row(flavour: str, channel: str, bases: list[Run], zkvs: list[Run], tpms: list[Run]) -> str:
    base = statistics.median(r.switched for r in bases)
    zkv = statistics.median(r.switched for r in zkvs)
    tpm_held = statistics.median(r.switched for r in tpms)
    # Each zkv boot against the baseline boot just before it: the host's speed drifts over
    # minutes (a whole TCG boot can take 40 s or 55 s), a pair shares the drift.
    pairs = list(zip(bases, zkvs, strict=True))
    before = statistics.median(z.module - b.module for b, z in pairs)
    after = statistics.median((z.switched - z.module) - (b.switched - b.module) for b, z in pairs)
    return (
        f"| {flavour} | {channel} | {base:.1f} s | {zkv:.1f} s | {zkv - base:+.1f} s "
        f"| {_paired(bases, zkvs)} "
        f"| {before:+.1f} s / {after:+.1f} s "
        f"| {_runs([r.switched for r in bases])} vs {_runs([r.switched for r in zkvs])} "
        f"| {_marker(bases, zkvs)} "
        f"| {tpm_held:.1f} s | {_paired(zkvs, tpms)} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", action="append", choices=testbed.FLAVOURS)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--clock", choices=("guest", "host"), default="guest")
    args = parser.parse_args(argv)
    channel = testbed.default_channel()
    icount = ICOUNT if args.clock == "guest" else None
    clock = f"guest's clock, -icount {icount}, 1 vCPU" if icount else "host's clock, 2 vCPUs"
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {clock}")
    print(
        "| flavour | OpenZFS channel | baseline (passphrase at once) | zkv pre-approved | delta "
        "| paired delta (range) | of which before / after the ZFS module loaded "
        "| runs (baseline vs zkv) | to the marker: baseline, zkv, delta "
        "| zkv, host key in the TPM | paired: TPM minus file key |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for flavour in args.flavour or testbed.FLAVOURS:
        zimg = zkv_image.build(flavour, channel)
        timg = zkv_image.build(flavour, channel, tpm=True)
        bases: list[Run] = []
        zkvs: list[Run] = []
        tpms: list[Run] = []
        for _ in range(args.runs):  # interleaved: a change in the host's load hits all three
            bases.append(baseline_boot(zimg, icount))
            zkvs.append(zkv_boot(zimg, icount))
            tpms.append(zkv_boot(timg, icount))
        print(row(flavour, channel, bases, zkvs, tpms), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
