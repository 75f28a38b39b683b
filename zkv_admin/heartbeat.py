"""``zkv heartbeat``: tell the gateway this host is running (its dead-man switch), and carry
out a remote wipe when the gateway answers "wipe". Run by systemd/zkv-heartbeat.timer.

The answer is not signed: only TLS to the gateway (early.conf's CA) vouches for it. So a wipe
does the one thing a forged answer may be allowed to do: the keystore loses its repository
slot (unattended unlock), never its recovery slot (the data). docs/threat-model.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess

from zkv import fsutil, hostkey, keystore, protocol
from zkv.errors import WipeFailed
from zkv_admin import gateway_http
from zkv_admin.common import path_of, say
from zkv_early import config

# The boot image holds a copy of the keystore; these rebuild it, whichever flavour is here.
REBUILDERS = (("update-initramfs", "-u", "-k", "all"), ("dracut", "-f", "--regenerate-all"))


def cmd_heartbeat(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    private = hostkey.load(hostkey.default_path(path_of(args)))
    url = settings.gateway_url.rstrip("/") + protocol.PATH_HEARTBEAT
    beat = protocol.Heartbeat.create(private)
    answer = gateway_http.post(
        url,
        beat.to_json(),
        settings.ca_file,
        protocol.HeartbeatAnswer.from_json,
        settings.request_timeout,
    )
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
