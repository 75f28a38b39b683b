"""The schedule of Gateway.housekeep: a daemon thread in each serving process.

Every worker runs it; each run is one write transaction that only does what is due, so workers
and instances sharing a database may overlap. Without it the tables of refusals, nonces and rate
events would shrink only when someone looked (the CLI's audit).
"""

from __future__ import annotations

import logging
import threading

from .service import Gateway

log = logging.getLogger("zkv.gateway.housekeeping")


def start(service: Gateway, interval: float) -> threading.Thread:
    stop = threading.Event()  # never set: the thread ends with its process

    def run() -> None:
        while True:
            try:
                service.housekeep()
            except Exception as exc:  # a database hiccup must not end the schedule
                log.warning("housekeeping failed: %s", type(exc).__name__)
            stop.wait(interval)

    thread = threading.Thread(target=run, name="zkv-housekeeping", daemon=True)
    thread.start()
    return thread
