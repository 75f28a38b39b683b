"""WSGI entry for an external server: ``gunicorn -k gthread --threads 32 gateway.wsgi:app``.

Add ``--forwarded-allow-ips ''`` (as ``zkv-gateway serve`` does): gunicorn would otherwise
take X-Forwarded-Proto from 127.0.0.1 itself; gateway/proxies.py alone should decide.
"""

from __future__ import annotations

import sys

from zkv.errors import ZkvError

from . import create_app

try:
    app = create_app(housekeeping=True)
except ZkvError as exc:  # one line, not a traceback, even when gunicorn imports us
    print(f"zkv-gateway: {exc.message}", file=sys.stderr)
    raise SystemExit(exc.exit_code) from None
