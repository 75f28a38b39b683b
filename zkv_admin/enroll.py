"""``zkv enroll``: create the host key if needed and register it with the gateway.

Enrolling only announces the host: the owner must approve it on the gateway before any unlock
request from it can be answered. The private key never leaves this machine.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from zkv import hostkey, protocol
from zkv.errors import (
    GatewayRefused,
    GatewayUnreachable,
    InputError,
    ProtocolError,
    RateLimited,
)
from zkv_admin.common import path_of, say

if TYPE_CHECKING:
    import requests

T = TypeVar("T")
TIMEOUT = 30.0
CLOCK_SLACK = 30  # seconds off the gateway's clock worth saying (nothing depends on it)


def cmd_enroll(args: argparse.Namespace) -> int:
    key_path = hostkey.default_path(path_of(args))
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        hostkey.generate(key_path)
        say(f"created host key {key_path} (mode 0600); rebuild the boot image afterwards")
    private = hostkey.load(key_path)
    hostname = args.hostname or socket.gethostname()
    try:
        protocol.check_hostname(hostname)
    except protocol.ProtocolViolation as exc:
        raise InputError(f"cannot enroll with this host name: {exc}") from None
    base = args.gateway.rstrip("/")
    challenge = _post(base + protocol.PATH_CHALLENGES, None, args.ca, protocol.Challenge.from_json)
    skew = challenge.now - time.time()
    if abs(skew) > CLOCK_SLACK:
        say(f"this host's clock is off by {abs(skew):.0f} s from the gateway's; fix NTP")
    request = protocol.EnrollRequest.create(hostname, private, challenge.challenge)
    body, parse = request.to_json(), protocol.EnrollAccepted.from_json
    accepted = _post(base + protocol.PATH_HOSTS, body, args.ca, parse)
    print(f"host id: {accepted.host_id}")
    print(f"status:  {accepted.status}")
    if accepted.status == "pending":
        say(f"ask the owner to approve host {accepted.host_id} on the gateway")
    elif accepted.status == "revoked":
        say("the gateway has revoked this host; the owner must re-admit it")
    return 0


def _post(url: str, body: dict[str, Any] | None, ca: str | None, parse: Callable[[Any], T]) -> T:
    import requests  # only here: importing it doubles the start-up time of every command

    try:
        response = requests.post(url, json=body, timeout=TIMEOUT, verify=ca if ca else True)
    except requests.RequestException as exc:
        raise GatewayUnreachable(url=url, detail=_reason(exc)) from None
    if response.status_code == 429:
        raise RateLimited
    if response.status_code in (401, 403):
        raise GatewayRefused
    if response.status_code not in (200, 201, 202):
        raise ProtocolError(detail=f"HTTP {response.status_code} from {url}")
    try:
        return parse(response.json())
    except (ValueError, protocol.ProtocolViolation) as exc:
        raise ProtocolError(detail=f"not the gateway's answer ({exc})") from None


def _reason(exc: requests.RequestException) -> str:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed (wrong --ca?)"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT:g} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed"
    return exc.__class__.__name__
