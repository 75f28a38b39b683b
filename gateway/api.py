"""The v1 JSON API spoken with the boot client (zkv/protocol.py); see openapi.yaml."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request

from zkv import protocol
from zkv.encoding import is_digits
from zkv.protocol import (
    AheadRequest,
    EnrollRequest,
    Heartbeat,
    PollResult,
    ProtocolViolation,
    RepositoryKeyDelivery,
    RepositoryKeyQuery,
    RotationRequest,
    TpmCredentialRequest,
    UnlockRequest,
)

from .errors import ApiError
from .polls import PollSlots
from .service import Gateway

bp = Blueprint("api", __name__)
T = TypeVar("T")
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" also matches before "\n"


def gateway() -> Gateway:
    service: Gateway = current_app.extensions["zkv"]
    return service


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _parse(from_json: Callable[[Any], T]) -> T:
    if request.mimetype != "application/json":
        raise ApiError("bad_request")
    try:
        return from_json(json.loads(request.get_data(cache=False)))
    except (ValueError, RecursionError, ProtocolViolation):  # JSONDecodeError is a ValueError
        raise ApiError("bad_request") from None


@bp.post(protocol.PATH_CHALLENGES)
def challenge() -> tuple[Response, int]:
    return jsonify(gateway().challenge().to_json()), 201


@bp.post(protocol.PATH_HOSTS)
def enroll() -> tuple[Response, int]:
    accepted = gateway().enroll(_parse(EnrollRequest.from_json), client_ip())
    return jsonify(accepted.to_json()), 202


@bp.post(protocol.PATH_TPM_CREDENTIALS)
def tpm_credential() -> tuple[Response, int]:
    issued = gateway().tpm_credential(_parse(TpmCredentialRequest.from_json), client_ip())
    return jsonify(issued.to_json()), 201


@bp.post(protocol.PATH_UNLOCK)
def create_unlock_request() -> tuple[Response, int]:
    created = gateway().create_unlock(_parse(UnlockRequest.from_json), client_ip())
    return jsonify(created.to_json()), 201


@bp.post(protocol.PATH_AHEAD)
def create_ahead_approval() -> tuple[Response, int]:
    created = gateway().create_ahead(_parse(AheadRequest.from_json), client_ip())
    return jsonify(created.to_json()), 201


@bp.get(protocol.PATH_UNLOCK + "/<request_id>")
def poll_unlock_request(request_id: str) -> Response:
    return _long_poll(request_id, gateway().poll)


def _long_poll(request_id: str, poll: Callable[[str, float, str], PollResult]) -> Response:
    raw_wait = request.args.get("wait", "0")
    if not is_digits(raw_wait) or int(raw_wait) > protocol.MAX_WAIT:
        raise ApiError("bad_request")
    if not _REQUEST_ID.fullmatch(request_id):
        raise ApiError("unauthorized")  # as unknown as any other id that is not ours
    wait = min(int(raw_wait), gateway().settings.MAX_WAIT)
    slots: PollSlots = current_app.extensions["zkv.polls"]
    with slots.taken(request_id, client_ip()) if wait else nullcontext():
        return jsonify(poll(request_id, wait, client_ip()).to_json())


@bp.post(protocol.PATH_HEARTBEAT)
def heartbeat() -> Response:
    return jsonify(gateway().heartbeat(_parse(Heartbeat.from_json), client_ip()).to_json())


# --- repository key rotation (rotations.py) ----------------------------------------------------


@bp.post(protocol.PATH_ROTATIONS)
def create_rotation() -> tuple[Response, int]:
    created = gateway().rotations.create(_parse(RotationRequest.from_json), client_ip())
    return jsonify(created.to_json()), 201


@bp.get(protocol.PATH_ROTATIONS + "/<request_id>")
def poll_rotation(request_id: str) -> Response:
    return _long_poll(request_id, gateway().rotations.poll)


@bp.post(protocol.PATH_ROTATIONS + "/<request_id>/key")
def deliver_repository_key(request_id: str) -> Response:
    delivery = _parse(RepositoryKeyDelivery.from_json)
    if delivery.request_id != request_id:
        raise ApiError("bad_request")
    return jsonify(gateway().rotations.deliver(delivery, client_ip()).to_json())


@bp.post(protocol.PATH_REPOSITORY_KEY)
def repository_key_status() -> Response:
    status = gateway().rotations.status(_parse(RepositoryKeyQuery.from_json), client_ip())
    return jsonify(status.to_json())


@bp.get(protocol.PATH_HEALTH)
def health() -> tuple[Response, int]:
    try:
        gateway().store.ping()
    except Exception:  # any database failure means "not healthy", never a traceback
        return jsonify({"status": "database unavailable"}), 503
    return jsonify({"status": "ok"}), 200
