"""How many long-polls may wait at once in this process: per request id, per source, and in all.

A waiting long-poll holds a gunicorn thread for up to MAX_WAIT seconds, so a flood of them, on
one request id or from one client, would take every thread and leave none for /healthz. Counting
them here, in memory, is enough: the threads they would take are this process's. ``total`` is kept
below the thread count (server.py), so short requests always find a thread. A poll over a limit
is refused at once with the protocol's 429, which the boot client retries later.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ApiError


def source_of(ip: str) -> str:
    """The client an address stands for: itself, or its /64 (one IPv6 host holds a whole /64)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class PollSlots:
    def __init__(self, per_request: int, per_source: int, total: int | None = None) -> None:
        self.limits = (per_request, per_source, total)
        self._waiting: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def taken(self, request_id: str, ip: str) -> Iterator[None]:
        keys = [(0, request_id), (1, source_of(ip)), (2, "")]
        with self._lock:
            pairs = zip(keys, self.limits, strict=True)
            if any(limit is not None and self._waiting[k] >= limit for k, limit in pairs):
                raise ApiError("rate_limited")
            self._waiting.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._waiting.subtract(keys)
                for key in keys:
                    if self._waiting[key] <= 0:
                        del self._waiting[key]
