"""One baseline and one zkv pre-approved boot, their consoles kept with host timestamps.

    python3 -m tests.vm.trace --flavour dracut [--out DIR] [--only zkv|baseline] [--cmdline ARG]...
        [--icount SPEC]

The companion of bench.boot_time: that one gives the figures, this one shows where the time
goes. Each console line in DIR/<flavour>-{baseline,zkv}.log starts with the host's seconds
since QEMU started; the lines that mark a boot's phases are printed, timed from the kernel's
first line (with --icount, as the bench's guest clock, the kernel's own timestamps in those
lines are the ones to read). Also the bench's log readers. Needs root and the e2e
prerequisites.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.vm import driver, testbed, zkv_image
from tests.vm.driver import Guest
from tests.vm.zkv_boot import gateway, run_boot

# The phases worth a line: the kernel, udev, the import, the network, zkv, the key, the switch.
PHASES = re.compile(
    r"Linux version|zkv|Reached target|Started|Finished|Welcome to|ZKV-E2E-BOOTED|Begin:|done\."
    r"|Encrypted ZFS password|Enter passphrase|ipconfig|IP-Config|dhcp|DHCP|bound to|link up"
    r"|Mounted|Switching root|run-init",
    re.IGNORECASE,
)
STAMP = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")


# The kernel's own timestamp in a console line (six decimals; the host's have three).
GUEST_STAMP = re.compile(r"\[\s*(\d+\.\d{6})\] ")
ZFS_LOADED = re.compile(r"ZFS: Loaded module")


@dataclass(frozen=True)
class GuestTimes:
    """A boot's milestones on the guest's clock (seconds since the kernel started)."""

    module: float | None  # the ZFS module loaded
    switched: float | None  # the last kernel line before the real root's systemd greeting


def guest_times(log: Path) -> GuestTimes:
    """Milestones from the kernel's timestamps: under -icount the guest's clock counts
    instructions, so these do not depend on the host's speed (the host's stamps do)."""
    module: float | None = None
    last: float | None = None
    for line in log.read_text(errors="replace").splitlines():
        match = STAMP.match(line)
        text = match.group(2) if match else line
        if driver.SWITCHED_ROOT.search(text):
            return GuestTimes(module, last)
        for found in GUEST_STAMP.finditer(text):
            last = float(found.group(1))
            if module is None and ZFS_LOADED.search(text, found.end()):
                module = last
    return GuestTimes(module, None)


def stamp_of(log: Path, pattern: re.Pattern[str]) -> float | None:
    """The host's seconds (since QEMU started) of the first console line matching ``pattern``."""
    for line in log.read_text(errors="replace").splitlines():
        match = STAMP.match(line)
        if match is not None and pattern.search(match.group(2)):
            return float(match.group(1))
    return None


def phases(log: Path) -> list[str]:
    """The phase lines of a console log, re-timed from the kernel's first line."""
    kernel: float | None = None
    out: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        match = STAMP.match(line)
        if match is None:
            continue
        at, text = float(match.group(1)), match.group(2).replace("\r", "")
        if kernel is None and "Linux version" in text:
            kernel = at
        if kernel is not None and PHASES.search(text):
            out.append(f"{at - kernel:7.2f}  {text[:150]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", choices=testbed.FLAVOURS, required=True)
    parser.add_argument("--out", type=Path, default=None, help="where the logs go")
    parser.add_argument("--only", choices=("zkv", "baseline"))
    parser.add_argument(
        "--cmdline", action="append", default=[], help="kernel argument to add (zkv.debug, ...)"
    )
    parser.add_argument("--icount", metavar="SPEC", help="QEMU -icount, e.g. shift=0,sleep=on")
    args = parser.parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="zkv-trace-"))
    out.mkdir(parents=True, exist_ok=True)
    zimg = zkv_image.build(args.flavour, testbed.default_channel())
    logs: list[Path] = []
    if args.only in (None, "baseline"):
        log = out / f"{args.flavour}-baseline.log"
        with Guest(
            zimg.base, extra_cmdline=args.cmdline, console_log=log, icount=args.icount
        ) as guest:
            guest.boot()
        logs.append(log)
    if args.only in (None, "zkv"):
        log = out / f"{args.flavour}-zkv.log"
        with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp:
            with gateway(zimg, Path(tmp), approver="auto") as gw:
                with Guest(
                    zimg.image,
                    host_port=gw.guest_port,
                    extra_cmdline=args.cmdline,
                    console_log=log,
                    icount=args.icount,
                ) as guest:
                    run_boot(guest)
        logs.append(log)
    for log in logs:
        print(f"--- {log}")
        print("\n".join(phases(log)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
