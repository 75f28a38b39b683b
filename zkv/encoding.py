"""Canonical JSON and strict base64: the byte-exact encodings the keystore and the wire share."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII: one byte string per value, so it can be signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


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
