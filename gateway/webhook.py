"""Inbound SMS from Twilio: POST /v1/twilio/sms.

The signature is checked against the URL Twilio called, which behind a reverse proxy is not
the URL we see: either PUBLIC_URL is configured, or TRUSTED_PROXIES makes ProxyFix restore it
from X-Forwarded-*. After the signature, every message gets the same empty TwiML answer, so a
reply reveals nothing about which requests exist or what it did.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from .api import gateway

bp = Blueprint("webhook", __name__)
PATH_SMS = "/v1/twilio/sms"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def signed_url() -> str:
    base = gateway().settings.PUBLIC_URL.rstrip("/")
    if not base:
        return request.url
    query = request.query_string.decode("latin-1")
    return base + request.path + (f"?{query}" if query else "")


@bp.post(PATH_SMS)
def inbound_sms() -> Response:
    validator = current_app.extensions.get("zkv.twilio_validator")
    signature = request.headers.get("X-Twilio-Signature", "")
    if validator is None or not validator.validate(signed_url(), request.form, signature):
        return Response("", status=403)
    gateway().owner_message(
        request.form.get("MessageSid", ""),
        request.form.get("From", ""),
        request.form.get("Body", ""),
    )
    return Response(EMPTY_TWIML, mimetype="text/xml")
