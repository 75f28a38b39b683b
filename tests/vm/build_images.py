"""``make images``: build (or find in the cache) every image the e2e suite boots."""

from __future__ import annotations

import argparse
import time

from tests.vm import builder, testbed
from tests.vm.testbed import Channel, Flavour


def suite_images() -> list[tuple[Flavour, Channel]]:
    """Every flavour on the default channel, then on each extra channel."""
    channels = [testbed.default_channel(), *testbed.extra_channels()]
    return [(flavour, channel) for channel in channels for flavour in testbed.FLAVOURS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flavour", choices=testbed.FLAVOURS, help="only this flavour")
    parser.add_argument("--channel", choices=testbed.CHANNELS, help="only this channel")
    args = parser.parse_args(argv)
    started = time.monotonic()
    for flavour, channel in suite_images():
        if args.flavour not in (None, flavour) or args.channel not in (None, channel):
            continue
        image = builder.build(flavour, channel)
        print(f"{flavour:16} {channel:10} {image.directory}", flush=True)
    print(f"images ready in {time.monotonic() - started:.0f} s (cache {testbed.cache_dir()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
