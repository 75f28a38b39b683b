"""How the owner hears about a request: Twilio SMS, the gateway's console/log, or (tests only)
an approver that says yes by itself. All three get the same text.

The source IP comes first: it is the one fact in the text the requester does not choose, and
the names it does choose (host, datasets) are bounded after it, so none can push the IP out
of sight or make the text ambiguous.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from .approvals import Reply
from .config import Settings
from .errors import NotifyFailed

log = logging.getLogger("zkv.gateway.notify")


class Notifier(Protocol):
    def notify(self, text: str, pin: str) -> Reply | None:
        """Tell the owner; an approver that decides on the spot returns its reply."""
        ...


HOST_SHOWN = 40  # characters of a host name
DATASETS_SHOWN = 60  # characters of dataset names, then "and N more"


def unlock_text(
    source_ip: str,
    hostname: str,
    enrolled_as: str,
    datasets: Sequence[str],
    at: float,
    pin: str,
    ttl: int,
    links: Mapping[str, str] | None = None,
    sms_pin: bool = True,
    boot: str = "",
    asks: str = "",
    key_in_tpm: bool = False,
    ahead: int = 0,
    others: int = 0,
) -> str:
    """The owner's notification. ``links``: owner name -> their approval page (passkey);
    ``sms_pin``: a PIN reply approves (policy sms-pin), else a reply can only deny; ``boot``:
    the sentence on the boot's flags (boot_context.BootView.message, bounded there); ``asks``:
    what the host asks for, if not to unlock ``datasets``; ``key_in_tpm``: the host's key is
    held by its TPM (else a copied disk could ask too); ``ahead``: a running host asks approval
    for a planned reboot within that many seconds; ``others``: how many other requests of the
    same host are open (one of them may be a thief's, timed to look like this boot)."""
    host = _bounded(hostname, HOST_SHOWN)
    if hostname != enrolled_as:
        host += f" (enrolled as {_bounded(enrolled_as, HOST_SHOWN)})"
    if ahead:
        asks = f"asks to approve ahead a planned reboot within {duration(ahead)}"
    asks = asks or f"asks to unlock {_names(datasets)}"
    head = f"zkv: from {source_ip}, host {host} {asks} at {_utc(at)}."
    if boot:
        head += f" {boot}"
    if others:
        head += f" WARNING: {others} other open request{'s' if others > 1 else ''} for this host."
    how = f"Reply {pin} to approve, NO {pin} to deny." if sms_pin else f"Code {pin}."
    if links:
        how += f" Approve or deny: {_pages(links)}"
    elif not sms_pin:
        how += f" Approve with zkv-gateway approve; deny: reply NO {pin}."
    return f"{head} Key held by TPM: {_yes(key_in_tpm)}. {how} Expires in {duration(ttl)}."


FLEET_SHOWN = 5  # hosts named in a coalesced notification, then "and N more"


def fleet_text(
    requests: Sequence[tuple[str, str, str]], at: float, links: Mapping[str, str], ttl: int
) -> str:
    """One message for many requests at once (a power cut; fleet.py): (source IP, enrolled
    host name, code) of each, and one page per owner that lists and decides them all."""
    shown = "; ".join(
        f"from {ip}, {_bounded(host, HOST_SHOWN)} (code {pin})"
        for ip, host, pin in requests[:FLEET_SHOWN]
    )
    more = f"; and {len(requests) - FLEET_SHOWN} more" if len(requests) > FLEET_SHOWN else ""
    how = f" Approve or deny: {_pages(links)}" if links else " Approve with zkv-gateway approve."
    return (
        f"zkv: {len(requests)} hosts ask to unlock at {_utc(at)}: {shown}{more}.{how} "
        f"Expires in {duration(ttl)}."
    )


def _pages(links: Mapping[str, str]) -> str:
    """The owners' links: the URL alone for one owner, "name: URL" each for several."""
    return " ".join(url if len(links) == 1 else f"{name}: {url}" for name, url in links.items())


def enrolled_text(
    source_ip: str,
    hostname: str,
    host_id: str,
    at: float,
    replaced: Sequence[str],
    key_in_tpm: bool = False,
) -> str:
    """A notice, not a question: the owner's invite already admitted the host."""
    succeeds = f", replacing {', '.join(h[:8] for h in replaced)}" if replaced else ""
    return (
        f"zkv: from {source_ip}, host {_bounded(hostname, HOST_SHOWN)} (id {host_id[:8]}) "
        f"enrolled with your invite at {_utc(at)}{succeeds}; "
        f"key held by TPM: {_yes(key_in_tpm)}. "
        f"Not expected? zkv-gateway hosts revoke {host_id}"
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def suspended_text(hostnames: Sequence[str], at: float) -> str:
    """One notice per sweep, whatever the number of hosts it suspended."""
    shown = ", ".join(_bounded(name, HOST_SHOWN) for name in hostnames[:3])
    more = f" and {len(hostnames) - 3} more" if len(hostnames) > 3 else ""
    return (
        f"zkv: host {shown}{more} sent no heartbeat within its window and is suspended at "
        f"{_utc(at)}: unlocks are refused until 'zkv-gateway hosts resume HOST'."
    )


def _names(datasets: Sequence[str]) -> str:
    """As many names as fit in DATASETS_SHOWN, then how many more. ZFS allows spaces in names:
    such a name is quoted, so where it ends is plain (no name holds a comma or a quote)."""
    shown: list[str] = []
    for name in datasets:
        text = _bounded(name, DATASETS_SHOWN - 2)
        text = f'"{text}"' if " " in text else text
        if shown and len(", ".join([*shown, text])) > DATASETS_SHOWN:
            break
        shown.append(text)
    more = len(datasets) - len(shown)
    return (", ".join(shown) or "its datasets") + (f" and {more} more" if more else "")


def duration(seconds: int) -> str:
    """30 min, 2 h, 1 h 30 min, 45 s: as the owner would say it."""
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    parts = [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    return " ".join(parts) or "0 min"


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."  # "…" is not GSM-7


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
