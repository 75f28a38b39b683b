"""A minimal protocol-v1 client for the gateway tests (the real boot client lives elsewhere)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import requests

from zkv import crypto, protocol

Headers = Mapping[str, str] | None  # e.g. X-Forwarded-For, as a proxy in front would add it


@dataclass
class Host:
    hostname: str = "db01"
    private_key: protocol.HostKey = field(default_factory=lambda: crypto.ed25519_generate()[0])

    @property
    def host_id(self) -> str:
        return protocol.host_id_of(protocol.public_of(self.private_key))


@dataclass
class Boot:
    """One boot's request: its ephemeral key and what the gateway answered."""

    request: protocol.UnlockRequest
    ephemeral_private: bytes
    response: requests.Response

    @property
    def created(self) -> protocol.UnlockCreated:
        return protocol.UnlockCreated.from_json(self.response.json())


def challenge(url: str, headers: Headers = None) -> protocol.Challenge:
    response = requests.post(url + protocol.PATH_CHALLENGES, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return protocol.Challenge.from_json(response.json())


def enroll(url: str, host: Host, token: str) -> requests.Response:
    fresh = challenge(url).challenge
    req = protocol.EnrollRequest.create(host.hostname, host.private_key, token, fresh)
    return requests.post(url + protocol.PATH_HOSTS, json=req.to_json(), timeout=10)


def unlock(
    url: str,
    host: Host,
    datasets: tuple[str, ...] = ("tank/secure",),
    headers: Headers = None,
    challenge_from: str | None = None,
    boot: protocol.BootContext | None = None,
) -> Boot:
    """Fetch a challenge (from ``challenge_from``, another gateway, if given), sign, send;
    ``boot``: a version 2 request reporting that boot context (else version 1)."""
    private, public = crypto.x25519_generate()
    fresh = challenge(challenge_from or url, headers).challenge
    req = protocol.UnlockRequest.create(
        host.private_key, host.hostname, datasets, public, fresh, boot
    )
    return Boot(req, private, send(url, req, headers))


def send(url: str, req: protocol.UnlockRequest, headers: Headers = None) -> requests.Response:
    return requests.post(
        url + protocol.PATH_UNLOCK, json=req.to_json(), headers=headers, timeout=10
    )


def ahead(url: str, host: Host, within: int = protocol.AHEAD_DEFAULT) -> requests.Response:
    """`zkv reboot --approve-ahead`'s request: approve the host's next boot within ``within``."""
    req = protocol.AheadRequest.create(
        host.private_key, host.hostname, within, challenge(url).challenge
    )
    return send_ahead(url, req)


def send_ahead(url: str, req: protocol.AheadRequest) -> requests.Response:
    return requests.post(url + protocol.PATH_AHEAD, json=req.to_json(), timeout=10)


def heartbeat(url: str, host: Host) -> requests.Response:
    req = protocol.Heartbeat.create(host.private_key, challenge(url).challenge)
    return requests.post(url + protocol.PATH_HEARTBEAT, json=req.to_json(), timeout=10)


def poll(url: str, request_id: str, wait: int = 0, headers: Headers = None) -> requests.Response:
    return requests.get(
        f"{url}{protocol.PATH_UNLOCK}/{request_id}?wait={wait}", headers=headers, timeout=wait + 30
    )


def opened(boot: Boot, response: requests.Response) -> bytes:
    result = protocol.PollResult.from_json(response.json())
    assert result.state == protocol.STATE_APPROVED and result.release is not None
    return protocol.open_release(boot.created.request_id, boot.ephemeral_private, result.release)


# --- repository key rotation ------------------------------------------------------------------


def rotation(url: str, host: Host, hostname: str | None = None) -> requests.Response:
    req = protocol.RotationRequest.create(
        host.private_key, hostname or host.hostname, challenge(url).challenge
    )
    return requests.post(url + protocol.PATH_ROTATIONS, json=req.to_json(), timeout=10)


def poll_rotation(url: str, request_id: str, wait: int = 0) -> requests.Response:
    return requests.get(
        f"{url}{protocol.PATH_ROTATIONS}/{request_id}?wait={wait}", timeout=wait + 30
    )


def deliver(url: str, host: Host, request_id: str, key: bytes) -> requests.Response:
    req = protocol.RepositoryKeyDelivery.create(
        host.private_key, request_id, key, challenge(url).challenge
    )
    return send_delivery(url, req)


def send_delivery(url: str, req: protocol.RepositoryKeyDelivery) -> requests.Response:
    path = f"{url}{protocol.PATH_ROTATIONS}/{req.request_id}/key"
    return requests.post(path, json=req.to_json(), timeout=30)


def key_status(url: str, host: Host) -> requests.Response:
    req = protocol.RepositoryKeyQuery.create(host.private_key, challenge(url).challenge)
    return requests.post(url + protocol.PATH_REPOSITORY_KEY, json=req.to_json(), timeout=30)
