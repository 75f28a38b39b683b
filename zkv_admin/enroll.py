"""``zkv enroll``: create the host key if needed and register it with the gateway.

The owner admits a host by issuing a one-time invite token on the gateway
(``zkv-gateway hosts invite HOSTNAME``); enrolling sends it, signed by the host key, and the
host is approved at once. The token is a credential: it is read from a file, stdin or the
terminal, never from the command line. The private key never leaves this machine.

With a TPM 2.0 (``--tpm``, the default when /dev/tpmrm0 exists) the key is made inside the TPM
and never leaves it, and the enrolment carries the TPM's evidence (protocol.TpmEvidence): one
more round trip first, for the gateway's credential that only this TPM can open.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from zkv import hostkey, protocol, tpm, tpm_format, tpm_tools
from zkv.errors import (
    GatewayRefused,
    GatewayUnreachable,
    InputError,
    ProtocolError,
    RateLimited,
    TpmError,
)
from zkv_admin.common import path_of, say
from zkv_admin.secret_input import STDIN, ask, read_secret

if TYPE_CHECKING:
    from pathlib import Path

    import requests

T = TypeVar("T")
TIMEOUT = 30.0
CLOCK_SLACK = 30  # seconds off the gateway's clock worth saying (nothing depends on it)
TCTI = f"device:{tpm.DEVICE}"


def cmd_enroll(args: argparse.Namespace) -> int:
    hostname = args.hostname or socket.gethostname()
    if not protocol.is_hostname(hostname):
        raise InputError("cannot enroll with this host name: invalid hostname")
    token = _token(args.token_file)  # first: bad input changes nothing on disk
    key_path = hostkey.default_path(path_of(args))
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    base = args.gateway.rstrip("/")
    use_tpm = os.path.exists(tpm.DEVICE) if args.tpm is None else args.tpm
    if use_tpm:
        accepted = _enroll_tpm(args, base, hostname, token, key_path)
    else:
        if not key_path.exists() or not isinstance(hostkey.load(key_path), bytes):
            hostkey.generate(key_path)
            say(f"created host key {key_path} (mode 0600); rebuild the boot image afterwards")
        private = hostkey.load(key_path)
        challenge = _challenge(base, args.ca)
        request = protocol.EnrollRequest.create(hostname, private, token, challenge)
        accepted = _post(
            base + protocol.PATH_HOSTS,
            request.to_json(),
            args.ca,
            protocol.EnrollAccepted.from_json,
        )
    print(f"host id: {accepted.host_id}")
    print(f"status:  {accepted.status}")
    if accepted.status != "approved":
        say("the gateway did not approve this host; ask the owner for a new invite")
    return 0


def _enroll_tpm(
    args: argparse.Namespace, base: str, hostname: str, token: str, key_path: Path
) -> protocol.EnrollAccepted:
    """The key made in (or found in) the TPM, its evidence, then the signed enrolment; the
    host key file, which only says where the key is, is written once the gateway agreed."""
    with tpm_tools.tools(args.tcti) as tools:
        held = tools.host_key()
        key = hostkey.TpmKey(tpm.HOST_KEY_HANDLE, held.point, tpm_tools.device_of(args.tcti))
        ek_cert = tools.ek_certificate()
        if not ek_cert:
            raise TpmError(detail="this TPM has no EK certificate to prove it; use --no-tpm")
        ak_public = tools.attestation_key()
        challenge = _challenge(base, args.ca)
        ask = protocol.TpmCredentialRequest(challenge, ek_cert, ak_public)
        url = base + protocol.PATH_TPM_CREDENTIALS
        credential = _post(url, ask.to_json(), args.ca, protocol.TpmCredential.from_json)
        activated = tools.activate(credential.credential_blob, credential.encrypted_secret)
        attest, signature = tools.certify(protocol.certify_nonce(challenge))
    public = tpm_format.tpm2b(held.area)
    evidence = protocol.TpmEvidence(ek_cert, ak_public, activated, public, attest, signature)
    request = protocol.EnrollRequest.create(hostname, key, token, challenge, tpm=evidence)
    accepted = _post(
        base + protocol.PATH_HOSTS, request.to_json(), args.ca, protocol.EnrollAccepted.from_json
    )
    hostkey.save_tpm(key_path, key)
    say(f"host key held by the TPM at {key.handle:#x}; {key_path} says where")
    say("rebuild the boot image afterwards")
    return accepted


def _challenge(base: str, ca: str | None) -> str:
    challenge = _post(base + protocol.PATH_CHALLENGES, None, ca, protocol.Challenge.from_json)
    skew = challenge.now - time.time()
    if abs(skew) > CLOCK_SLACK:
        say(f"this host's clock is off by {abs(skew):.0f} s from the gateway's; fix NTP")
    return challenge.challenge


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
