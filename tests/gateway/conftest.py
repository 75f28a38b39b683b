"""In-process fixtures: the Flask app from create_app with a fake clock, a recording notifier
and an in-memory secret source (fast tests of policy; the real server is in test_server_*)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from gateway.approvals import Reply
from gateway.config import Settings
from gateway.errors import NotifyFailed, SecretUnavailable
from gateway.service import Gateway
from tests.gateway import postgres as pg
from tests.harness.gateway import TEST_LIMITS
from zkv import crypto, protocol


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Recorder:
    texts: list[str] = field(default_factory=list)
    broken: bool = False

    def notify(self, text: str, pin: str) -> Reply | None:
        if self.broken:
            raise NotifyFailed("twilio: TwilioRestException 401")
        self.texts.append(text)
        return None


@dataclass
class MemorySource:
    value: bytes = b"ab" * 32
    broken: bool = False
    disabled: list[str | None] = field(default_factory=list)

    def get(self, name: str | None) -> bytes:
        if self.broken or name in self.disabled:
            raise SecretUnavailable("key vault answered 403 Forbidden")
        return self.value

    def disable(self, name: str | None) -> str:
        if self.broken:
            raise SecretUnavailable("key vault answered 403 Forbidden")
        self.disabled.append(name)
        return f"disabled {name}"

    def set(self, name: str | None, secret: bytes) -> None:
        if self.broken:
            raise SecretUnavailable("key vault answered 403 Forbidden")
        self.value = secret


@dataclass
class Env:
    app: Flask
    http: FlaskClient
    clock: FakeClock
    notifier: Recorder
    source: MemorySource

    @property
    def gateway(self) -> Gateway:
        service: Gateway = self.app.extensions["zkv"]
        return service

    def enrolled(self, hostname: str = "db01", private: bytes | None = None) -> bytes:
        """A host key, invited and enrolled (so approved)."""
        private = private or crypto.ed25519_generate()[0]
        response = self.enroll(hostname, private, self.gateway.invite(hostname, 3600)[0])
        assert response.status_code == 202, response.get_json()
        return private

    def enroll(self, hostname: str, private: bytes, token: str) -> Any:
        req = protocol.EnrollRequest.create(hostname, private, token, self.challenge())
        return self.http.post(protocol.PATH_HOSTS, json=req.to_json())

    def unlock(self, private: bytes, **kw: Any) -> tuple[Any, bytes, protocol.UnlockRequest]:
        eph_private, eph_public = crypto.x25519_generate()
        req = protocol.UnlockRequest.create(
            private, kw.pop("hostname", "db01"), ("tank/a",), eph_public, self.challenge()
        )
        return self.http.post(protocol.PATH_UNLOCK, json=req.to_json()), eph_private, req

    def challenge(self) -> str:
        answer = protocol.Challenge.from_json(self.http.post(protocol.PATH_CHALLENGES).get_json())
        assert answer.now == int(self.clock())
        return answer.challenge

    def poll(self, request_id: str) -> Any:
        return self.http.get(f"{protocol.PATH_UNLOCK}/{request_id}?wait=0")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    secret = tmp_path / "secret"
    secret.write_text("x" * 64)
    base: dict[str, Any] = {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'gw.sqlite'}",
        "SECRET_SOURCE": "file",
        "SECRET_FILE": str(secret),
        "APPROVER": "console",
        **TEST_LIMITS,
    }
    return Settings(**{**base, **overrides})


database_url, postgres = pg.database_url, pg.postgres  # fixtures for every gateway test


@pytest.fixture
def env_factory(tmp_path: Path, database_url: str) -> Iterator[Any]:
    def build(**overrides: Any) -> Env:
        clock, notifier, source = FakeClock(), Recorder(), MemorySource()
        settings = make_settings(tmp_path, SQLALCHEMY_DATABASE_URI=database_url, **overrides)
        app = create_app(settings, source=source, notifier=notifier, clock=clock)
        built.append(Env(app, app.test_client(), clock, notifier, source))
        return built[-1]

    built: list[Env] = []
    yield build
    for env in built:  # close pooled connections now: a Postgres cluster has a connection cap
        env.gateway.store.dispose()


@pytest.fixture
def env(env_factory: Any) -> Env:
    built: Env = env_factory()
    return built
