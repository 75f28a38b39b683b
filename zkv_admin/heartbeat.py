"""``zkv heartbeat``: tell the gateway this host is running (its dead-man switch), and carry
out a remote wipe when the gateway answers "wipe". Run by systemd/zkv-heartbeat.timer.

Each attempt fetches a fresh challenge (POST /v1/challenges) and signs it, as the boot and
``zkv enroll`` do. The answer is not signed: only TLS to the gateway (early.conf's CA, or its
pinned key, through the boot client's own HTTPS client) vouches for it. So a wipe does the one
thing a forged answer may be allowed to do: the keystore loses its repository slot (unattended
unlock), never its recovery slot (the data). docs/threat-model.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess

from zkv import fsutil, hostkey, keystore, protocol
from zkv.errors import WipeFailed
from zkv_admin.common import path_of, say
from zkv_early import config
from zkv_early.gateway_client import GatewayClient

# The boot image holds a copy of the keystore; these rebuild it, whichever flavour is here.
REBUILDERS = (("update-initramfs", "-u", "-k", "all"), ("dracut", "-f", "--regenerate-all"))


def cmd_heartbeat(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    private = hostkey.load(hostkey.default_path(path_of(args)))
    # The boot client's own HTTPS client: early.conf's CA (or the system bundle) and/or pins.
    gateway = GatewayClient(
        settings.gateway_url, settings.ca_file, settings.request_timeout, settings.pins
    )
    try:
        challenge = gateway.challenge()  # one per attempt: each is accepted once
        answer = gateway.heartbeat(protocol.Heartbeat.create(private, challenge.challenge))
    finally:
        gateway.close()
    if answer.action != protocol.ACTION_WIPE:
        print("heartbeat: ok")
        return 0
    wipe(path_of(args))
    print("heartbeat: wiped")
    return 0


def wipe(path: str | os.PathLike[str]) -> None:
    """Destroy the repository slot on /boot, then in the boot image by rebuilding it: every
    time the gateway says so, since a rebuild that failed once must be tried again."""
    if keystore.destroy_repository_slots(path):
        say(
            f"the gateway wiped this host: {path} has lost its repository slot; "
            "the recovery passphrase still opens it"
        )
    for command in REBUILDERS:
        if fsutil.which(command[0]):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise WipeFailed(path="the boot image", detail=f"{command[0]} failed")
            say(f"rebuilt the boot image ({' '.join(command)})")
            return
    raise WipeFailed(
        path="the boot image", detail="neither update-initramfs nor dracut found: rebuild it"
    )
