"""``zkv enroll``: create the host key if needed and register it with the gateway.

Enrolling only announces the host: the owner must approve it on the gateway before any unlock
request from it can be answered. The private key never leaves this machine.
"""

from __future__ import annotations

import argparse
import socket

from zkv import hostkey, protocol
from zkv.errors import InputError
from zkv_admin import gateway_http
from zkv_admin.common import path_of, say


def cmd_enroll(args: argparse.Namespace) -> int:
    key_path = hostkey.default_path(path_of(args))
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        hostkey.generate(key_path)
        say(f"created host key {key_path} (mode 0600); rebuild the boot image afterwards")
    private = hostkey.load(key_path)
    try:
        request = protocol.EnrollRequest.create(args.hostname or socket.gethostname(), private)
    except protocol.ProtocolViolation as exc:
        raise InputError(f"cannot enroll with this host name: {exc}") from None
    accepted = _post(args.gateway.rstrip("/") + protocol.PATH_HOSTS, request, args.ca)
    print(f"host id: {accepted.host_id}")
    print(f"status:  {accepted.status}")
    if accepted.status == "pending":
        say(f"ask the owner to approve host {accepted.host_id} on the gateway")
    elif accepted.status == "revoked":
        say("the gateway has revoked this host; the owner must re-admit it")
    return 0


def _post(url: str, request: protocol.EnrollRequest, ca: str | None) -> protocol.EnrollAccepted:
    return gateway_http.post(url, request.to_json(), ca, protocol.EnrollAccepted.from_json)
