"""Inbound SMS from Twilio: POST /v1/twilio/sms.

The signature is checked against the URL Twilio called, which behind a reverse proxy is not
the URL we see: either PUBLIC_URL is configured, or a proxy named in TRUSTED_PROXY_ADDRESSES
restores it with X-Forwarded-Proto/Host (gateway/proxies.py). After the signature, every
message gets the same empty TwiML answer, so a reply reveals nothing about which requests
exist or what it did.

Twilio signs the URL followed by each field's name and value with no separator between them,
so the boundaries are not signed: a MessageSid that swallows the field after it ("SM…" +
"NumMedia0") still verifies and is a new message to the de-duplication. So only Twilio's
fields are taken, each once, with a MessageSid of Twilio's form and our account's id: then no
boundary can move without breaking one of those.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import MultiDict

from .api import gateway

bp = Blueprint("webhook", __name__)
PATH_SMS = "/v1/twilio/sms"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

_SID = re.compile(r"(SM|MM)[0-9a-f]{32}")  # fullmatch: "$" would also match before "\n"
_MEDIA = re.compile(r"Media(Url|ContentType)[0-9]")
# The fields of Twilio's inbound-message request (SMS and MMS), and those we need.
_FIELDS = frozenset(
    "MessageSid SmsSid SmsMessageSid AccountSid MessagingServiceSid From To Body NumMedia "
    "NumSegments ReferralNumMedia SmsStatus ApiVersion AddOns OptOutType FromCity FromState "
    "FromZip FromCountry ToCity ToState ToZip ToCountry".split()
)
_REQUIRED = ("MessageSid", "AccountSid", "From", "Body")


def signed_url() -> str:
    base = gateway().settings.PUBLIC_URL.rstrip("/")
    if not base:
        return request.url
    query = request.query_string.decode("latin-1")
    return base + request.path + (f"?{query}" if query else "")


def not_twilios(form: MultiDict[str, str], account: str) -> str:
    """Why ``form`` is not a message Twilio sent to ``account``; "" when it is one."""
    for name in form:
        if name not in _FIELDS and not _MEDIA.fullmatch(name):
            return f"unexpected field {name[:40]!r}"
        if len(form.getlist(name)) != 1:
            return f"field {name} repeated"
    missing = [name for name in _REQUIRED if name not in form]
    if missing:
        return f"no {missing[0]}"
    if not _SID.fullmatch(form["MessageSid"]):
        return "MessageSid is not SM/MM and 32 hex digits"
    if form["AccountSid"] != account:
        return "another account's message"
    return ""


@bp.post(PATH_SMS)
def inbound_sms() -> Response:
    validator = current_app.extensions.get("zkv.twilio_validator")
    signature = request.headers.get("X-Twilio-Signature", "")
    if validator is None or not validator.validate(signed_url(), request.form, signature):
        return Response("", status=403)
    problem = not_twilios(request.form, gateway().settings.TWILIO_ACCOUNT_ID)
    if problem:  # signed, yet not as Twilio sends it: a re-split copy of a real message
        gateway().message_refused(problem)
        return Response("", status=403)
    gateway().owner_message(request.form["MessageSid"], request.form["From"], request.form["Body"])
    return Response(EMPTY_TWIML, mimetype="text/xml")
