"""The owners' pages: passkey enrolment and the approval page (HTML, behind one-time links).

Strict by construction: no external assets and no inline script or style (CSP 'self' only),
no cookies, not framable, no referrer (the link's token is in the URL). Every POST must be
JSON, carry the page's CSRF value in X-ZKV-CSRF (a cross-site page can neither read it nor
set the header without a CORS preflight, which is never granted) and, when the browser sends
one, an Origin of the approval page itself. Every invalid link or refused answer looks the
same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from .approvals import KIND_AHEAD, KIND_REPOKEY
from .notify import duration
from .owners import PATH_BATCH, PATH_DECIDE, PATH_ENROL, LinkInvalid, Owners
from .service import Gateway
from .store import RequestRow

bp = Blueprint("page", __name__, static_folder="static", static_url_path="/o/static")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _owners() -> Owners:
    service: Gateway = current_app.extensions["zkv"]
    return service.owners


def csrf_value(token: str) -> str:
    """Derived from the link's token: only someone who has the page (or the link) knows it."""
    return hashlib.sha256(b"zkv-csrf\0" + token.encode()).hexdigest()


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


def _well_formed(token: str) -> bool:
    return 20 <= len(token) <= 64 and set(token) <= _TOKEN_CHARS


def _invalid() -> tuple[str, int]:
    return render_template("invalid.html", page="invalid", csrf=""), 404


def _refused() -> tuple[Response, int]:
    return jsonify(
        {"error": "refused", "message": "refused: the link or the answer is not valid"}
    ), 403


def _checked_post(token: str) -> Any:
    """The JSON body of a same-origin POST from the page, or abort."""
    page = urlsplit(_owners().base)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{page.scheme}://{page.netloc}":
        abort(403)
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin"):
        abort(403)
    sent = request.headers.get("X-ZKV-CSRF", "")
    if not hmac.compare_digest(sent.encode(), csrf_value(token).encode()):
        abort(403)
    if request.mimetype != "application/json":
        abort(415)
    try:
        return json.loads(request.get_data(cache=False) or b"{}")
    except (ValueError, RecursionError):
        abort(400)


# --- passkey enrolment --------------------------------------------------------------------------


@bp.get(f"{PATH_ENROL}<token>")
def enrol_page(token: str) -> tuple[str, int]:
    try:
        if not _well_formed(token):
            raise LinkInvalid("malformed")
        owner = _owners().enrol_view(token)
    except LinkInvalid:
        return _invalid()
    return render_template("enrol.html", page="enrol", owner=owner, csrf=csrf_value(token)), 200


@bp.post(f"{PATH_ENROL}<token>/options")
def enrol_options(token: str) -> tuple[Response, int]:
    _checked_post(token)
    try:
        return Response(_owners().enrol_options(token), mimetype="application/json"), 200
    except LinkInvalid:
        return _refused()


@bp.post(f"{PATH_ENROL}<token>/finish")
def enrol_finish(token: str) -> tuple[Response, int]:
    answer = _checked_post(token)
    try:
        _owners().enrol_finish(token, answer)
    except LinkInvalid:
        return _refused()
    return jsonify({"ok": True}), 200


# --- the approval page --------------------------------------------------------------------------


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _brief(row: RequestRow) -> dict[str, str]:
    return {
        "source_ip": row.source_ip,
        "asked": _utc(row.approval.created_at),
        "code": row.approval.pin,
    }


@bp.get(f"{PATH_DECIDE}<token>")
def decide_page(token: str) -> tuple[str, int]:
    try:
        if not _well_formed(token):
            raise LinkInvalid("malformed")
        view = _owners().decide_view(token)
    except LinkInvalid:
        return _invalid()
    row = view.request
    boot = _owners().gateway.boot_view(row)
    return render_template(
        "decide.html",
        page="decide",
        csrf=csrf_value(token),
        owner=view.owner,
        code=row.approval.pin,
        source_ip=row.source_ip,
        hostname=row.hostname,
        enrolled_as=view.enrolled_as,
        datasets=row.datasets,
        rotation=row.approval.kind == KIND_REPOKEY,
        asked=_utc(row.approval.created_at),
        expires=_utc(view.expires_at),
        others=[_brief(other) for other in view.others],
        factor=view.factor,
        ayes=view.ayes,
        quorum=view.quorum,
        boot=boot,
        key_in_tpm=view.key_in_tpm,
        ahead=_ahead(row),
    ), 200


def _ahead(row: RequestRow) -> str:
    """For an approval asked ahead of a planned reboot: its window, as the owner reads it."""
    a = row.approval
    return duration(int(a.expires_at - a.created_at)) if a.kind == KIND_AHEAD else ""


@bp.post(f"{PATH_DECIDE}<token>/options")
def decide_options(token: str) -> tuple[Response, int]:
    _checked_post(token)
    try:
        return Response(_owners().decide_options(token), mimetype="application/json"), 200
    except LinkInvalid:
        return _refused()


@bp.post(f"{PATH_DECIDE}<token>/decide")
def decide(token: str) -> tuple[Response, int]:
    approve, credential, otp, _ = _verdict(token)
    try:
        state = _owners().decide(token, approve, credential, otp)
    except LinkInvalid:
        return _refused()
    return jsonify({"state": state}), 200


def _verdict(token: str) -> tuple[bool, Any, str | None, dict[str, Any]]:
    """(approve?, the passkey assertion, the TOTP code, the body) of a checked POST, or
    abort."""
    body = _checked_post(token)
    verdict = body.get("verdict") if isinstance(body, dict) else None
    if verdict not in ("approve", "deny"):
        abort(400)
    otp = body.get("totp")
    totp = otp if isinstance(otp, str) else None
    return verdict == "approve", body.get("credential"), totp, body


# --- the page of a batch: many hosts at once (fleet.py) ------------------------------------------


@bp.get(f"{PATH_BATCH}<token>")
def batch_page(token: str) -> tuple[str, int]:
    try:
        if not _well_formed(token):
            raise LinkInvalid("malformed")
        view = _owners().batch_view(token)
    except LinkInvalid:
        return _invalid()
    listed = [
        {
            **_brief(row),
            "request_id": row.approval.request_id,
            "hostname": row.hostname,
            "enrolled_as": enrolled_as,
            "datasets": row.datasets,
            "ahead": _ahead(row),
        }
        for row, enrolled_as in view.requests
    ]
    return render_template(
        "batch.html",
        page="batch",
        csrf=csrf_value(token),
        owner=view.owner,
        requests=listed,
        expires=_utc(view.expires_at),
        factor=view.factor,
    ), 200


@bp.post(f"{PATH_BATCH}<token>/options")
def batch_options(token: str) -> tuple[Response, int]:
    return decide_options(token)


@bp.post(f"{PATH_BATCH}<token>/decide")
def batch_decide(token: str) -> tuple[Response, int]:
    approve, credential, otp, body = _verdict(token)
    picked = body.get("requests")
    if not isinstance(picked, list) or not all(isinstance(x, str) for x in picked):
        abort(400)
    try:
        states = _owners().batch_decide(token, approve, picked[:1000], credential, otp)
    except LinkInvalid:
        return _refused()
    decided = sum(state != "pending" for state in states.values())
    summary = f"{len(states)} requests, {decided} decided"
    return jsonify({"state": summary, "states": states}), 200
