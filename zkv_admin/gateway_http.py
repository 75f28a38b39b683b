"""One JSON POST to the gateway for the admin CLI (`zkv enroll`, `zkv heartbeat`): TLS
verified against the given CA, HTTP answers turned into the boot client's exit codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from zkv import protocol
from zkv.errors import GatewayRefused, GatewayUnreachable, ProtocolError, RateLimited

if TYPE_CHECKING:
    import requests

T = TypeVar("T")
TIMEOUT = 30.0


def post(
    url: str,
    body: dict[str, Any],
    ca: str | None,
    parse: Callable[[Any], T],
    timeout: float = TIMEOUT,
) -> T:
    import requests  # only here: importing it doubles the start-up time of every command

    try:
        response = requests.post(url, json=body, timeout=timeout, verify=ca if ca else True)
    except requests.RequestException as exc:
        raise GatewayUnreachable(url=url, detail=_reason(exc, timeout)) from None
    if response.status_code == 429:
        raise RateLimited
    if response.status_code in (401, 403):
        raise GatewayRefused
    if response.status_code not in (200, 201, 202):
        raise ProtocolError(detail=f"HTTP {response.status_code} from {url}")
    try:
        return parse(response.json())
    except (ValueError, protocol.ProtocolViolation) as exc:
        raise ProtocolError(detail=f"not the answer expected from {url} ({exc})") from None


def _reason(exc: requests.RequestException, timeout: float) -> str:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed (wrong --ca?)"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed"
    return exc.__class__.__name__
