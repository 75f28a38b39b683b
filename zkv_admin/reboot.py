"""``zkv reboot --approve-ahead [--within 30m] [--no-reboot]``: before a planned reboot, ask the
owners now, wait for their decision, and only then reboot.

The request is signed with the host key over a fresh challenge, as a boot's unlock request
(protocol.AheadRequest). The owners decide as on a boot (the page with a passkey, TOTP, their
quorum, the policy); what approves stays with them and the gateway, and this command learns
only the request's state. Once approved, the first boot of this host inside the window is
approved at once, once, and still gets the secret sealed to its own ephemeral key. Without
``--no-reboot`` the command then runs ``systemctl reboot`` (found on PATH).
"""

from __future__ import annotations

import argparse
import subprocess
import time

from zkv import fsutil, hostkey, protocol
from zkv.errors import AheadNotApproved, RebootFailed, UsageError
from zkv_admin.common import path_of, say
from zkv_early import config
from zkv_early.gateway_client import GatewayClient

REBOOT = ("systemctl", "reboot")
_UNITS = {"s": 1, "m": 60, "h": 3600}


def cmd_reboot(args: argparse.Namespace) -> int:
    if not args.approve_ahead:
        raise UsageError(detail="zkv reboot needs --approve-ahead (a plain reboot: systemctl)")
    within = parse_within(args.within)
    settings = config.load(args.config)
    private = hostkey.load(hostkey.default_path(path_of(args)))
    name = config.hostname(settings)
    gateway = GatewayClient(
        settings.gateway_url, settings.ca_file, settings.request_timeout, settings.pins
    )
    try:
        fresh = gateway.challenge()
        skew = fresh.now - time.time()  # the gateway's clock says when the request expires
        created = gateway.ahead(
            protocol.AheadRequest.create(private, name, within, fresh.challenge)
        )
        say(
            f"asked the owners at {settings.gateway_url} to approve ahead a reboot of {name} "
            f"within {args.within}: request code {created.pin}. They approve it on the page "
            "linked in their notification (or on the gateway: "
            f"zkv-gateway approve --pending --host {name}); waiting for their decision"
        )
        state = _decision(gateway, created, skew)
    finally:
        gateway.close()
    if state != protocol.STATE_APPROVED:
        raise AheadNotApproved(state=state)
    print(f"approved ahead: the next boot of {name} within {args.within} unlocks without waiting")
    if args.no_reboot:
        return 0
    if not fsutil.which(REBOOT[0]):
        raise RebootFailed(detail=f"{REBOOT[0]} not found; reboot within {args.within}")
    result = subprocess.run(REBOOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise RebootFailed(detail=f"{' '.join(REBOOT)} failed: {last}")
    return 0


def _decision(gateway: GatewayClient, created: protocol.UnlockCreated, skew: float) -> str:
    """Long-poll until the owners decide or the request expires; its final state."""
    while True:
        left = created.expires_at - (time.time() + skew)
        if left <= 0:
            return protocol.STATE_EXPIRED
        state = gateway.poll(created.request_id, max(1, int(min(protocol.MAX_WAIT, left)))).state
        if state != protocol.STATE_PENDING:
            return state


def parse_within(text: str) -> int:
    """``30m``, ``2h``, ``90s`` or plain seconds, at most protocol.AHEAD_MAX (24 h)."""
    unit = _UNITS.get(text[-1:].lower(), 0)
    number = text[:-1] if unit else text
    if not number.isascii() or not number.isdigit():
        raise UsageError(detail=f"--within {text!r}: a number with s, m or h (30m)")
    seconds = int(number) * (unit or 1)
    if not 1 <= seconds <= protocol.AHEAD_MAX:
        raise UsageError(detail=f"--within {text!r}: from 1 s to {protocol.AHEAD_MAX // 3600} h")
    return seconds
