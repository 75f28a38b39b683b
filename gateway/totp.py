"""TOTP (RFC 6238, through pyotp) for owners without a passkey: 6 digits, 30 s steps.

A code is accepted for the current step or one either side (clock drift of the owner's phone),
and each step at most once per owner: the caller stores the step that was used and passes it
back as ``last_step``, so a code seen once (over a shoulder, in an SMS log) is spent.
"""

from __future__ import annotations

import hmac
import io

import pyotp

STEP, DIGITS, DRIFT = 30, 6, 1
ISSUER = "zkv gateway"


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, name: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(
        name=name, issuer_name=ISSUER
    )


def qr_text(uri: str) -> str:
    """The URI as a QR code drawn in text, for a terminal (scanned once by the phone's app)."""
    import qrcode  # type: ignore[import-untyped]

    code = qrcode.QRCode(border=1)
    code.add_data(uri)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def matching_step(secret: str, code: str, now: float, last_step: int | None) -> int | None:
    """The step ``code`` belongs to, if it is valid now and newer than ``last_step``."""
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    current = int(now // STEP)
    for step in range(current - DRIFT, current + DRIFT + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.at(step * STEP).encode(), code.encode()):
            return step
    return None
