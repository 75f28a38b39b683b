"""Run the app under gunicorn with gthread workers, so a long-poll holds a thread, not a process."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from . import create_app
from .config import Settings
from .store import Store


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings, self.options = settings, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings)


def serve(settings: Settings, bind: str, workers: int, threads: int) -> int:
    # Create the schema once, in the master, before workers race to do it.
    store = Store(settings.SQLALCHEMY_DATABASE_URI)
    store.create_schema()
    store.dispose()
    _Gunicorn(
        settings,
        {
            "bind": bind,
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": int(settings.MAX_WAIT + 3 * settings.KEY_VAULT_TIMEOUT + 30),
            "graceful_timeout": settings.MAX_WAIT + 5,
            "keepalive": 30,
            "accesslog": "-",
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            "proc_name": "zkv-gateway",
            "forwarded_allow_ips": "",  # X-Forwarded-*: gateway/proxies.py alone decides
            "loglevel": settings.LOG_LEVEL.lower(),
        },
    ).run()
    return 0
