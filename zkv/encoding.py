"""Canonical JSON, strict base64 and ASCII digits: the exact spellings the keystore and the wire
share."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

_DIGITS = re.compile(r"[0-9]+")  # fullmatch: "$" would also match before a trailing newline


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII: one byte string per value, so it can be signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def is_digits(text: str) -> bool:
    """One or more of 0-9. str.isdigit() also takes other scripts' digits and superscripts."""
    return _DIGITS.fullmatch(text) is not None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    """Strict decode: anything but well-formed standard base64 text raises ValueError."""
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("bad base64") from None
    if b64(data) != text:  # non-canonical padding bits would give two spellings of one value
        raise ValueError("non-canonical base64")
    return data
