"""Boot time, kernel start -> real root up, with zkv pre-approved vs the plain passphrase boot.

    python3 -m bench.boot_time [--flavour dracut|initramfs-tools]... [--runs N]

zkv: the gateway's auto approver (tests only) says yes at once, so the figure is zkv's own
cost: Python start, network, the request, opening the keystore, loading the keys. Baseline: the
same disk with the initrd built without zkv, the passphrase typed the moment OpenZFS asks.
Both under QEMU TCG, so absolute figures are slow; the difference is the point (target: +1 s).
Needs root and the e2e prerequisites.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from tests.e2e import testbed, zkv_image
from tests.e2e.driver import Guest
from tests.e2e.zkv_boot import gateway, run_boot


def zkv_boot(zimg: zkv_image.ZkvImage) -> float:
    with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp:
        with gateway(zimg, Path(tmp), approver="auto") as gw:
            with Guest(zimg.image, host_port=gw.guest_port) as guest:
                out = run_boot(guest)
    assert out.kernel_to_root is not None and out.data_mounted
    return out.kernel_to_root


def baseline_boot(zimg: zkv_image.ZkvImage) -> float:
    with Guest(zimg.base) as guest:
        result = guest.boot()
    assert result.timings.kernel is not None and result.timings.root is not None
    return result.timings.root - result.timings.kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", action="append", choices=testbed.FLAVOURS)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    channel = testbed.default_channel()
    print(
        "| flavour | OpenZFS channel | baseline (passphrase at once) | zkv pre-approved | delta "
        "| runs (baseline vs zkv) |"
    )
    print("|---|---|---|---|---|---|")
    for flavour in args.flavour or testbed.FLAVOURS:
        zimg = zkv_image.build(flavour, channel)
        bases: list[float] = []
        zkvs: list[float] = []
        for _ in range(args.runs):  # interleaved: a change in the host's load hits both
            bases.append(baseline_boot(zimg))
            zkvs.append(zkv_boot(zimg))
        base, zkv = statistics.median(bases), statistics.median(zkvs)
        runs = f"{' / '.join(f'{b:.1f}' for b in bases)} vs {' / '.join(f'{z:.1f}' for z in zkvs)}"
        row = f"| {flavour} | {channel} | {base:.1f} s | {zkv:.1f} s | {zkv - base:+.1f} s"
        print(f"{row} | {runs} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
