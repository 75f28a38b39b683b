"""zkv gateway: human-approved release of a repository key to a booting host.

``create_app`` is the Flask application factory; ``zkv-gateway serve`` runs it under gunicorn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from zkv import protocol

from . import notify, secrets_source
from .config import Settings, load
from .errors import ApiError
from .notify import Notifier
from .polls import PollSlots
from .proxies import TrustedProxies, parse_networks
from .secrets_source import SecretSource
from .service import Gateway
from .store import Store

OPENAPI = Path(__file__).with_name("openapi.yaml")
log = logging.getLogger("zkv.gateway")


def create_app(
    config: Settings | Mapping[str, Any] | None = None,
    *,
    source: SecretSource | None = None,
    notifier: Notifier | None = None,
    clock: Callable[[], float] | None = None,
    max_polls: int | None = None,
    housekeeping: bool = False,
) -> Flask:
    """Build the app. ``config`` is ready Settings, or overrides on top of file and environment.

    ``source``/``notifier``/``clock`` replace the configured backends (unit tests).
    ``max_polls`` caps the long-polls waiting at once in this process (server.py: below threads).
    ``housekeeping`` starts the schedule of housekeeping.py (serving processes; not unit tests,
    which call ``housekeep`` on their fake clock).
    """
    settings = config if isinstance(config, Settings) else load(config)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.LOG_LEVEL.upper(), format="%(levelname)s %(name)s: %(message)s"
        )
    store = Store(settings.SQLALCHEMY_DATABASE_URI)
    store.create_schema()
    service = Gateway(
        settings,
        store,
        source or secrets_source.from_settings(settings),
        notifier or notify.from_settings(settings),
        **({"clock": clock} if clock else {}),
    )
    if housekeeping:
        from . import housekeeping as schedule

        schedule.start(service, settings.HOUSEKEEPING_INTERVAL)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = protocol.MAX_BODY
    app.extensions["zkv"] = service
    app.extensions["zkv.polls"] = PollSlots(
        settings.MAX_POLLS_PER_REQUEST, settings.MAX_POLLS_PER_SOURCE, max_polls
    )
    if settings.APPROVER == "twilio":
        from twilio.request_validator import RequestValidator

        app.extensions["zkv.twilio_validator"] = RequestValidator(settings.TWILIO_TOKEN)
    from . import api, page, webhook

    app.register_blueprint(api.bp)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(page.bp)
    app.add_url_rule("/openapi.yaml", "openapi", _openapi)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.after_request(_no_store)
    # Always: with no proxy configured it still strips X-Forwarded-* from every request.
    proxies = parse_networks(settings.TRUSTED_PROXY_ADDRESSES)
    app.wsgi_app = TrustedProxies(app.wsgi_app, proxies)  # type: ignore[method-assign]
    return app


def _openapi() -> Response:
    return Response(OPENAPI.read_text(), mimetype="application/yaml")


def _api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify(protocol.error_body(exc.code)), exc.status


_HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
}


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    return jsonify({"error": _HTTP_CODES.get(status, "bad_request")}), status


def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.error("internal error: %s", type(exc).__name__)  # the type only: messages may quote input
    return jsonify({"error": "internal"}), 500


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
