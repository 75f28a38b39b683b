"""Gateway failures: operator-facing ones carry an exit code (cli.py prints them), API-facing
ones carry the protocol error code the client sees."""

from __future__ import annotations

from zkv.errors import ConfigError, ZkvError
from zkv.protocol import ERROR_STATUS

__all__ = [
    "ApiError",
    "AuditBroken",
    "ConfigError",
    "GatewayCliError",
    "NotifyFailed",
    "SecretUnavailable",
]


class GatewayCliError(ZkvError):
    """{detail}"""

    exit_code = 5


class AuditBroken(ZkvError):
    """audit log broken at entry {entry_id}: {detail}"""

    exit_code = 7


class SecretUnavailable(Exception):
    """The secret source could not deliver; the message names the cause, never the value."""


class NotifyFailed(Exception):
    """The approver could not be notified (SMS provider error)."""


class ApiError(Exception):
    """An answer of the form {"error": code}; unknown codes are not allowed."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
        self.status = ERROR_STATUS[code]
