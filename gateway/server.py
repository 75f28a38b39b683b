"""Run the app under gunicorn with gthread workers, so a long-poll holds a thread, not a process."""

from __future__ import annotations

import re
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from . import create_app
from .config import Settings
from .errors import GatewayCliError
from .store import Store

# Threads per worker that long-polls never take (polls.py), so /healthz and short requests answer.
SPARE_THREADS = 2
# The owners' one-time links carry their token in the path (gateway/owners.py).
_LINK_TOKEN = re.compile(r"(/o/(?:r|enrol)/)[A-Za-z0-9_-]+")


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with the owners' link tokens out of the access log: a token in a log
    would let whoever reads it open the page (and deny)."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "{raw_uri}e"):
            if isinstance(atoms.get(key), str):
                atoms[key] = _LINK_TOKEN.sub(r"\1[token]", atoms[key])
        return atoms


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings, self.options = settings, options
        self.max_polls = options["threads"] - SPARE_THREADS
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings, max_polls=self.max_polls, housekeeping=True)


def serve(settings: Settings, bind: str, workers: int, threads: int) -> int:
    if threads <= SPARE_THREADS:
        raise GatewayCliError(
            f"--threads must be more than {SPARE_THREADS}: that many are kept from long-polls"
        )
    # Create the schema once, in the master, before workers race to do it.
    store = Store(settings.SQLALCHEMY_DATABASE_URI)
    store.create_schema()
    store.dispose()
    _Gunicorn(
        settings,
        {
            "bind": bind,
            "workers": workers,
            "worker_class": "gateway.front.Worker",  # gthread; a thread per complete request
            "threads": threads,
            "timeout": int(settings.MAX_WAIT + 3 * settings.KEY_VAULT_TIMEOUT + 30),
            "graceful_timeout": settings.MAX_WAIT + 5,
            "keepalive": settings.READ_TIMEOUT,  # front.py: also the limit on reading a request
            "accesslog": "-",
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            "logger_class": "gateway.server.RedactingLogger",
            "proc_name": "zkv-gateway",
            "forwarded_allow_ips": "",  # X-Forwarded-*: gateway/proxies.py alone decides
            "loglevel": settings.LOG_LEVEL.lower(),
        },
    ).run()
    return 0
