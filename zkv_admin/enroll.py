"""``zkv enroll``: create the host key if needed and register it with the gateway.

The owner admits a host by issuing a one-time invite token on the gateway
(``zkv-gateway hosts invite HOSTNAME``); enrolling sends it, signed by the host key, and the
host is approved at once. The token is a credential: it is read from a file, stdin or the
terminal, never from the command line. The private key never leaves this machine.
"""

from __future__ import annotations

import argparse
import socket
import sys
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
from zkv_admin.secret_input import STDIN, ask, read_secret

if TYPE_CHECKING:
    import requests

T = TypeVar("T")
TIMEOUT = 30.0
CLOCK_SLACK = 30  # seconds off the gateway's clock worth saying (nothing depends on it)


def cmd_enroll(args: argparse.Namespace) -> int:
    hostname = args.hostname or socket.gethostname()
    if not protocol.is_hostname(hostname):
        raise InputError("cannot enroll with this host name: invalid hostname")
    token = _token(args.token_file)  # first: bad input changes nothing on disk
    key_path = hostkey.default_path(path_of(args))
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        hostkey.generate(key_path)
        say(f"created host key {key_path} (mode 0600); rebuild the boot image afterwards")
    private = hostkey.load(key_path)
    base = args.gateway.rstrip("/")
    challenge = _post(base + protocol.PATH_CHALLENGES, None, args.ca, protocol.Challenge.from_json)
    skew = challenge.now - time.time()
    if abs(skew) > CLOCK_SLACK:
        say(f"this host's clock is off by {abs(skew):.0f} s from the gateway's; fix NTP")
    request = protocol.EnrollRequest.create(hostname, private, token, challenge.challenge)
    body, parse = request.to_json(), protocol.EnrollAccepted.from_json
    accepted = _post(base + protocol.PATH_HOSTS, body, args.ca, parse)
    print(f"host id: {accepted.host_id}")
    print(f"status:  {accepted.status}")
    if accepted.status != "approved":
        say("the gateway did not approve this host; ask the owner for a new invite")
    return 0


def _token(source: str | None) -> str:
    """The invite token: from --token-file (a path or '-'), else stdin when it is not a
    terminal, else asked for on the terminal. Never echoed, never in an error message."""
    source = source or STDIN
    if source == STDIN and sys.stdin.isatty():
        raw = ask("invite token (from zkv-gateway hosts invite): ", "invite token", "--token-file")
    else:
        raw = read_secret(source, "invite token")
    token = raw.decode("ascii", errors="replace").strip()
    if not protocol.is_invite_token(token):
        raise InputError("that is not an invite token (zkv-gateway hosts invite prints one)")
    return token


def _post(url: str, body: dict[str, Any] | None, ca: str | None, parse: Callable[[Any], T]) -> T:
    import requests  # only here: importing it doubles the start-up time of every command

    try:
        response = requests.post(url, json=body, timeout=TIMEOUT, verify=ca if ca else True)
    except requests.RequestException as exc:
        raise GatewayUnreachable(url=url, detail=_reason(exc)) from None
    if response.status_code == 429:
        raise RateLimited
    if response.status_code in (401, 403):  # an unknown, used or expired token among others
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
