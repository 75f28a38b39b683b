"""Boot time, kernel start -> root mounted (switched to), zkv pre-approved vs the passphrase boot.

    python3 -m bench.boot_time [--flavour dracut|initramfs-tools]... [--runs N]

zkv: the gateway's auto approver (tests only) says yes at once, so the figure is zkv's own
cost: Python start, network, the request, opening the keystore, loading the keys. Baseline: the
same disk with the initrd built without zkv, the passphrase typed the moment OpenZFS asks.
Both under QEMU TCG, so absolute figures are slow; the difference is the point (target: +1 s).

The end point is the real root's systemd greeting the console ("Welcome to Debian ...!", not
dracut's "(Initramfs)" one): the root is mounted and switched to. The old end point, the
real root's marker line after zfs-mount.service, is printed as an extra column: there the zkv
boots also pay for loading and mounting tank/secure, which the baseline leaves locked.
Runs are interleaved (baseline, zkv, baseline, ...); the figures are medians, and the paired
delta is the median of each zkv boot minus the baseline boot just before it.
Needs root and the e2e prerequisites.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.e2e import testbed, zkv_image
from tests.e2e.driver import Guest
from tests.e2e.zkv_boot import gateway, run_boot


@dataclass(frozen=True)
class Run:
    switched: float  # kernel start -> the real root's systemd took over
    marker: float  # kernel start -> the real root's marker line (after zfs-mount.service)


def zkv_boot(zimg: zkv_image.ZkvImage) -> Run:
    with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp:
        with gateway(zimg, Path(tmp), approver="auto") as gw:
            with Guest(zimg.image, host_port=gw.guest_port) as guest:
                out = run_boot(guest)
    assert out.kernel_to_root is not None and out.data_mounted
    assert out.kernel_to_switched is not None, "no real-root systemd greeting on the console"
    return Run(out.kernel_to_switched, out.kernel_to_root)


def baseline_boot(zimg: zkv_image.ZkvImage) -> Run:
    with Guest(zimg.base) as guest:
        result = guest.boot()
    t = result.timings
    assert t.kernel is not None and t.root is not None and t.switched is not None
    return Run(t.switched - t.kernel, t.root - t.kernel)


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", action="append", choices=testbed.FLAVOURS)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    channel = testbed.default_channel()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(
        "| flavour | OpenZFS channel | baseline (passphrase at once) | zkv pre-approved | delta "
        "| paired delta | runs (baseline vs zkv) | to the marker: baseline, zkv, delta |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for flavour in args.flavour or testbed.FLAVOURS:
        zimg = zkv_image.build(flavour, channel)
        bases: list[Run] = []
        zkvs: list[Run] = []
        for _ in range(args.runs):  # interleaved: a change in the host's load hits both
            bases.append(baseline_boot(zimg))
            zkvs.append(zkv_boot(zimg))
        base = statistics.median(r.switched for r in bases)
        zkv = statistics.median(r.switched for r in zkvs)
        base_m = statistics.median(r.marker for r in bases)
        zkv_m = statistics.median(r.marker for r in zkvs)
        runs = f"{_runs([r.switched for r in bases])} vs {_runs([r.switched for r in zkvs])}"
        marker = (
            f"{base_m:.1f} s, {zkv_m:.1f} s, {zkv_m - base_m:+.1f} s "
            f"({_runs([r.marker for r in bases])} vs {_runs([r.marker for r in zkvs])})"
        )
        # Each zkv boot against the baseline boot just before it: the host's speed drifts over
        # minutes (a whole TCG boot can take 40 s or 55 s), a pair shares the drift.
        paired = statistics.median(
            z.switched - b.switched for b, z in zip(bases, zkvs, strict=True)
        )
        row = f"| {flavour} | {channel} | {base:.1f} s | {zkv:.1f} s | {zkv - base:+.1f} s"
        print(f"{row} | {paired:+.1f} s | {runs} | {marker} |", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
