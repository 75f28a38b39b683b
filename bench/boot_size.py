"""Initramfs size with and without zkv, per flavour (not a test; `make bench`).

    python3 -m bench.boot_size [--flavour dracut|initramfs-tools]...

"Without" is the same chroot's initrd with zkv's real-root parts installed but no hooks (the
payload image of tests/vm/zkv_image.py); "with" is the initrd the zkv hooks built; "with a
TPM-held host key" is the same with the host key in a TPM (the hooks add the kernel's TPM
drivers; the client's TPM commands are its own Python, already counted). Target: growth
<= 5 MiB compressed. Needs root and the e2e prerequisites (builds images if missing).
"""

from __future__ import annotations

import argparse
import sys

from tests.vm import testbed, zkv_image

MiB = 1 << 20
TARGET_MIB = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", action="append", choices=testbed.FLAVOURS)
    args = parser.parse_args(argv)
    channel = testbed.default_channel()
    worst = 0.0
    print(
        "| flavour | OpenZFS channel | without zkv | with zkv | growth "
        "| with a TPM-held host key | TPM vs file key | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for flavour in args.flavour or testbed.FLAVOURS:
        zimg = zkv_image.build(flavour, channel)
        timg = zkv_image.build(flavour, channel, tpm=True)
        before, after = zimg.base.initrd.stat().st_size, zimg.image.initrd.stat().st_size
        with_tpm = timg.image.initrd.stat().st_size
        growth = (max(after, with_tpm) - before) / MiB
        worst = max(worst, growth)
        print(
            f"| {flavour} | {channel} | {before / MiB:.1f} MiB | {after / MiB:.1f} MiB "
            f"| +{(after - before) / MiB:.2f} MiB | {with_tpm / MiB:.1f} MiB "
            f"| {(with_tpm - after) / 1024:+.0f} KiB | <= {TARGET_MIB:.0f} MiB |"
        )
    return 0 if worst <= TARGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
