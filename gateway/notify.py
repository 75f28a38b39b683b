"""How the owner hears about a request: Twilio SMS, the gateway's console/log, or (tests only)
an approver that says yes by itself. All three get the same text."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Protocol

from .approvals import Reply
from .config import Settings
from .errors import NotifyFailed

log = logging.getLogger("zkv.gateway.notify")


class Notifier(Protocol):
    def notify(self, text: str, pin: str) -> Reply | None:
        """Tell the owner; an approver that decides on the spot returns its reply."""
        ...


def unlock_text(
    hostname: str, source_ip: str, datasets: Sequence[str], at: float, pin: str, ttl: int
) -> str:
    shown = ", ".join(datasets[:5]) + (f" (+{len(datasets) - 5} more)" if len(datasets) > 5 else "")
    return (
        f"zkv: {hostname} asks to unlock {shown or 'its datasets'} from {source_ip} at "
        f"{_utc(at)}. Reply {pin} to approve, NO {pin} to deny. Expires in {ttl // 60} min."
    )


def enroll_text(hostname: str, host_id: str, source_ip: str, at: float, pin: str) -> str:
    return (
        f"zkv: new host {hostname} (id {host_id[:8]}) from {source_ip} at {_utc(at)} asks to "
        f"enrol. Reply {pin} to approve, NO {pin} to deny."
    )


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


class TwilioNotifier:
    def __init__(self, settings: Settings) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        http = TwilioHttpClient(timeout=settings.TWILIO_TIMEOUT)
        self.client = Client(settings.TWILIO_ACCOUNT_ID, settings.TWILIO_TOKEN, http_client=http)
        self.to, self.from_ = settings.SMS_TO, settings.SMS_FROM

    def notify(self, text: str, pin: str) -> Reply | None:
        from requests import RequestException
        from twilio.base.exceptions import TwilioException

        try:
            self.client.messages.create(to=self.to, from_=self.from_, body=text)
        except TwilioException as exc:
            status = getattr(exc, "status", "")
            raise NotifyFailed(f"twilio: {type(exc).__name__} {status}".strip()) from None
        except RequestException as exc:
            raise NotifyFailed(f"twilio unreachable: {type(exc).__name__}") from None
        return None


class ConsoleNotifier:
    """For a demo: the notification goes to stdout; approve with `zkv-gateway approve ID PIN`."""

    def notify(self, text: str, pin: str) -> Reply | None:
        print(f"NOTIFY {text}", file=sys.stdout, flush=True)
        return None


class AutoApprover:
    """Tests only: approves everything. config.py refuses it without ALLOW_AUTO_APPROVER."""

    def __init__(self) -> None:
        log.warning("APPROVER=auto: every unlock request is approved WITHOUT A HUMAN (tests only)")

    def notify(self, text: str, pin: str) -> Reply | None:
        print(f"NOTIFY {text}", file=sys.stdout, flush=True)
        return Reply(approve=True, pin=pin)


def from_settings(settings: Settings) -> Notifier:
    if settings.APPROVER == "twilio":
        return TwilioNotifier(settings)
    if settings.APPROVER == "auto":
        return AutoApprover()
    return ConsoleNotifier()
