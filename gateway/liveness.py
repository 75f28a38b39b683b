"""The dead-man switch and remote wipe of one host: pure, no I/O, the clock is an argument.

    active    --heartbeat---------------------------------> active     (since = now)
    active    --now > since + window (window > 0)---------> suspended  (owners told once)
    suspended --`zkv-gateway hosts resume`----------------> active     (since = now)
    any       --`zkv-gateway hosts wipe`------------------> wiped      (for good)

``since`` is the last sign of life: the last heartbeat, or when the owner set the window or
resumed the host. A suspended or wiped host gets no unlock; a wiped host's next heartbeat is
answered "wipe". Like approvals.py, every function returns a new value or raises NotAllowed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .approvals import NotAllowed

ACTIVE, SUSPENDED, WIPED = "active", "suspended", "wiped"
HEARTBEATS_PER_HOUR = 60  # per host; the timer sends 4

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WINDOW = 366 * 86400


@dataclass(frozen=True)
class Liveness:
    host_id: str
    since: float
    window: float | None = None  # seconds; None: the gateway's DEADMAN_WINDOW; 0: no switch
    state: str = ACTIVE
    changed_at: float | None = None
    notice_due: bool = False  # suspended and the owners not told yet

    def window_or(self, default: float) -> float:
        return default if self.window is None else self.window

    @property
    def refuses_unlock(self) -> bool:
        return self.state != ACTIVE


def start(host_id: str, since: float) -> Liveness:
    """A host with no record yet: alive as of ``since`` (when it was approved)."""
    return Liveness(host_id, since)


def observe(x: Liveness, now: float, default_window: float) -> Liveness:
    """The host as of ``now``: silent past its window means suspended."""
    window = x.window_or(default_window)
    if x.state == ACTIVE and window > 0 and now > x.since + window:
        return replace(x, state=SUSPENDED, changed_at=now, notice_due=True)
    return x


def beat(x: Liveness, now: float, default_window: float) -> Liveness:
    """A heartbeat. One that comes after the window closed does not undo the suspension:
    it proves the host key is in use, not by whom (docs/threat-model.md)."""
    x = observe(x, now, default_window)
    return x if x.state == WIPED else replace(x, since=max(x.since, now))


def set_window(x: Liveness, window: float | None, now: float) -> Liveness:
    """The owner's choice; the new window counts from now."""
    if x.state == WIPED:
        raise NotAllowed("the host is wiped")
    return replace(x, window=window, since=now if x.state == ACTIVE else x.since)


def resume(x: Liveness, now: float) -> Liveness:
    if x.state == WIPED:
        raise NotAllowed("the host is wiped; it cannot be resumed")
    return replace(x, state=ACTIVE, since=now, changed_at=now, notice_due=False)


def wipe(x: Liveness, now: float) -> Liveness:
    if x.state == WIPED:
        return x
    return replace(x, state=WIPED, changed_at=now, notice_due=False)


def told(x: Liveness) -> Liveness:
    return replace(x, notice_due=False)


def tell_again(x: Liveness) -> Liveness:
    """The notice failed: due again, unless the host is no longer suspended."""
    return replace(x, notice_due=True) if x.state == SUSPENDED else x


def parse_window(text: str) -> float | None:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w``, ``0`` (no switch) or ``default``."""
    text = text.strip().lower()
    if text == "default":
        return None
    unit = _UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    if not number.isascii() or not number.isdigit():
        raise ValueError("a window is a number with s, m, h, d or w (7d), 0, or default")
    seconds = float(int(number) * (unit or 1))
    if seconds > MAX_WINDOW:
        raise ValueError("a window is at most 366 days")
    return seconds


def describe(seconds: float) -> str:
    if seconds <= 0:
        return "off"
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{int(seconds)}s"
