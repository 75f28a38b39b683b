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

T = TypeVar("T")
TIMEOUT = 30.0
MAX_ANSWER = 1 << 20  # the gateway's answers are small JSON documents
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
    """POST ``body`` as JSON with the standard library only: the zkv package depends on python3
    and python3-cryptography, nothing else (a stock host has no python3-requests)."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    if not url.startswith(("https://", "http://")):  # urllib would open file: and ftp: too
        raise InputError("the gateway URL starts with https:// (or http:// on a test bed)")
    data = b"" if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310 (checked)
    request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:  # noqa: S310
            status, payload = response.status, response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, b""
    except (OSError, ValueError) as exc:  # URLError, TLS, timeouts, refused; a malformed URL
        raise GatewayUnreachable(url=url, detail=_reason(exc)) from None
    if status == 429:
        raise RateLimited
    if status in (401, 403):  # an unknown, used or expired token among others
        raise GatewayRefused
    if status not in (200, 201, 202):
        raise ProtocolError(detail=f"HTTP {status} from {url}")
    try:
        return parse(json.loads(payload))
    except (ValueError, protocol.ProtocolViolation) as exc:
        raise ProtocolError(detail=f"not the gateway's answer ({exc})") from None


def _reason(exc: Exception) -> str:
    import ssl
    import urllib.error

    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, ssl.SSLError):
        return "TLS verification failed (wrong --ca?)"
    if isinstance(cause, TimeoutError):
        return f"no answer within {TIMEOUT:g} s"
    if isinstance(cause, OSError):
        return "connection failed"
    return cause.__class__.__name__ if isinstance(cause, Exception) else str(cause)
