"""The gateway side of the race with a scripted client and a fake clock (no sockets, no sleeps)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_early_net import FakeClock
from zkv import hostkey, keystore, protocol
from zkv.errors import (
    ApprovalDenied,
    ApprovalExpired,
    GatewayRefused,
    GatewayUnreachable,
    KeystoreLocked,
    ProtocolError,
)
from zkv_early.config import Config
from zkv_early.console import Console
from zkv_early.gateway_contender import GatewayUnlock
from zkv_early.race import Deadline

REPO_KEY = bytes(range(32))
RID = "ab" * 16


class ScriptedClient:
    """create() and poll() answer from a script; poll() spends the time it was asked to wait.
    The gateway's clock is ``offset`` seconds ahead of the host's (``clock``)."""

    def __init__(
        self,
        clock: FakeClock,
        polls: list[Callable[[protocol.UnlockRequest], Any]],
        create_failures: int = 0,
        ttl: int = 600,
        offset: float = 0,
        created: dict[str, Any] | None = None,
    ) -> None:
        self.clock, self.polls, self.create_failures, self.ttl = clock, polls, create_failures, ttl
        self.offset, self.created = offset, created or {}
        self.challenges: list[str] = []
        self.requests: list[protocol.UnlockRequest] = []
        self.waits: list[int] = []

    def challenge(self) -> protocol.Challenge:
        self.challenges.append(f"{len(self.challenges):080x}")
        return protocol.Challenge(self.challenges[-1], int(self.clock.now + self.offset))

    def create(self, request: protocol.UnlockRequest) -> protocol.UnlockCreated:
        assert request.challenge == self.challenges[-1]
        self.requests.append(request)
        if self.create_failures:
            self.create_failures -= 1
            raise GatewayUnreachable(url="https://gw", detail="Connection refused")
        expires = int(self.clock.now + self.offset) + self.ttl
        return protocol.UnlockCreated(RID, "123456", expires, **self.created)

    def poll(self, request_id: str, wait: int) -> protocol.PollResult:
        self.waits.append(wait)
        step = self.polls.pop(0) if self.polls else pending
        result = step(self.requests[-1])
        if isinstance(result, BaseException):
            raise result
        if result.state == protocol.STATE_PENDING:
            self.clock.now += wait
        return result

    def abort(self) -> None: ...


def pending(_req: protocol.UnlockRequest) -> protocol.PollResult:
    return protocol.PollResult(protocol.STATE_PENDING)


def approved(secret: bytes = REPO_KEY.hex().encode()) -> Callable[..., protocol.PollResult]:
    def step(req: protocol.UnlockRequest) -> protocol.PollResult:
        sealed = protocol.seal_release(RID, req.ephemeral_key, secret)
        return protocol.PollResult(protocol.STATE_APPROVED, sealed)

    return step


def state(name: str) -> Callable[..., protocol.PollResult]:
    return lambda _req: protocol.PollResult(name)


def host_files(tmp_path: Path) -> None:
    """The host key and a keystore with one entry (rpool) in ``tmp_path``."""
    hostkey.generate(tmp_path / "host.key")
    store = keystore.create(REPO_KEY, b"recovery words", kdf=keystore.WEAK_KDF)
    store.put(keystore.Entry("rpool", "raw"), bytes(32))
    keystore.write(tmp_path / "keystore", store)


def gateway_flow(
    tmp_path: Path, client: Any, clock: FakeClock, total: float = 300, **config_kw: Any
) -> tuple[GatewayUnlock, io.StringIO]:
    """The gateway contender for the host in ``tmp_path`` with ``client``, and its console."""
    out = io.StringIO()
    config = Config(
        gateway_url="https://gw.example", host_key=str(tmp_path / "host.key"), **config_kw
    )
    flow = GatewayUnlock(
        config,
        Console(out),
        client,
        Deadline(clock, total),
        "nas",
        wall_clock=lambda: clock.now,
        wait_network=lambda *a, **k: None,
    )
    return flow, out


@pytest.fixture
def setup(tmp_path: Path) -> Callable[..., tuple[GatewayUnlock, ScriptedClient, io.StringIO]]:
    host_files(tmp_path)

    def make(
        polls: list[Any], total: float = 300, boot: Any = None, **kw: Any
    ) -> tuple[Any, Any, io.StringIO]:
        clock = FakeClock()
        client = ScriptedClient(clock, polls, **kw)
        flow, out = gateway_flow(tmp_path, client, clock, total, boot=boot)
        return flow, client, out

    return make


def sealed(tmp_path: Path) -> keystore.SealedKeystore:
    return keystore.read(tmp_path / "keystore")


def test_pending_then_approved_opens_the_keystore(setup: Any, tmp_path: Path) -> None:
    flow, client, out = setup([pending, pending, approved()])
    store = flow.run(sealed(tmp_path), threading.Event())
    assert store.candidates("rpool") == [bytes(32)]
    assert client.waits == [25, 25, 25]  # protocol.MAX_WAIT per call
    request = client.requests[0]
    assert request.datasets == ("rpool",) and request.hostname == "nas"
    text = out.getvalue()
    assert (
        "PIN 123456" in text
        and "gw.example" in text
        and "5:00 left" in text
        and "4:35 left" in text
    )
    assert REPO_KEY.hex() not in text
    assert "clock off" not in text


@pytest.mark.parametrize("offset", [3600, -3600])
def test_a_host_clock_an_hour_off_still_counts_down_the_gateways_time(
    setup: Any, tmp_path: Path, offset: int
) -> None:
    flow, client, out = setup([pending, approved()], ttl=120, offset=offset)
    assert flow.run(sealed(tmp_path), threading.Event()) is not None
    assert client.waits == [25, 25]  # the request's 2 minutes, not an hour more or less
    side = "behind" if offset > 0 else "ahead of"
    assert f"clock off by 3600 s ({side} the gateway)" in out.getvalue()
    assert "2:00 left" in out.getvalue() and "1:35 left" in out.getvalue()


def test_a_host_clock_an_hour_ahead_still_waits_for_the_expiry(setup: Any, tmp_path: Path) -> None:
    flow, client, _out = setup([], ttl=60, offset=-3600)
    with pytest.raises(ApprovalExpired):
        flow.run(sealed(tmp_path), threading.Event())
    assert 60 <= sum(client.waits) <= 60 + 5  # polled for the request's minute


def test_unreachable_gateway_is_retried_with_backoff(setup: Any, tmp_path: Path) -> None:
    flow, client, out = setup([approved()], create_failures=3)
    flow.run(sealed(tmp_path), threading.Event())
    assert len(client.requests) == 4
    assert len({r.challenge for r in client.requests}) == 4  # a new challenge each time
    assert "retrying in 1 s" in out.getvalue() and "retrying in 4 s" in out.getvalue()


def test_unreachable_until_the_deadline(setup: Any, tmp_path: Path) -> None:
    flow, _client, _out = setup([], total=20, create_failures=100)
    with pytest.raises(GatewayUnreachable):
        flow.run(sealed(tmp_path), threading.Event())


def test_denied(setup: Any, tmp_path: Path) -> None:
    flow, _c, _o = setup([pending, state(protocol.STATE_DENIED)])
    with pytest.raises(ApprovalDenied):
        flow.run(sealed(tmp_path), threading.Event())


def test_expired_by_the_gateway(setup: Any, tmp_path: Path) -> None:
    flow, _c, _o = setup([state(protocol.STATE_EXPIRED)])
    with pytest.raises(ApprovalExpired):
        flow.run(sealed(tmp_path), threading.Event())


def test_expiry_bounds_polling_even_if_the_gateway_never_says_so(
    setup: Any, tmp_path: Path
) -> None:
    flow, client, _o = setup([], ttl=60)
    with pytest.raises(ApprovalExpired):
        flow.run(sealed(tmp_path), threading.Event())
    assert sum(client.waits) <= 60 + 5


def test_overall_timeout_bounds_polling(setup: Any, tmp_path: Path) -> None:
    flow, client, _o = setup([], total=40)
    with pytest.raises(ApprovalExpired):
        flow.run(sealed(tmp_path), threading.Event())
    assert sum(client.waits) <= 40


def test_poll_errors_are_retried(setup: Any, tmp_path: Path) -> None:
    down = lambda _r: GatewayUnreachable(url="u", detail="reset")  # noqa: E731
    flow, _c, _o = setup([down, down, approved()])
    assert flow.run(sealed(tmp_path), threading.Event()) is not None


def test_release_for_another_key_does_not_open(setup: Any, tmp_path: Path) -> None:
    flow, _c, _o = setup([approved(bytes(32).hex().encode())])
    with pytest.raises(KeystoreLocked):
        flow.run(sealed(tmp_path), threading.Event())


def test_release_that_is_not_a_repository_key(setup: Any, tmp_path: Path) -> None:
    flow, _c, _o = setup([approved(b"not hex")])
    with pytest.raises(ProtocolError):
        flow.run(sealed(tmp_path), threading.Event())


BOOT = protocol.BootContext(("rd.break",), "ab" * 32)


def test_the_request_carries_the_boot_flags_and_the_console_the_request_code(
    setup: Any, tmp_path: Path
) -> None:
    created = {"code_kind": protocol.CODE_REQUEST, "approve_at": "the link sent to the owner"}
    flow, client, out = setup([pending, approved()], boot=BOOT, created=created)
    flow.run(sealed(tmp_path), threading.Event())
    request = client.requests[0]
    assert request.boot == BOOT and request.to_json()["v"] == protocol.VERSION_BOOT
    text = out.getvalue()
    assert "boot flags: rd.break" in text
    assert "request code 123456 - approve at the link sent to the owner - waiting, 5:00 left" in (
        text
    )
    assert "PIN" not in text  # the code approves nothing: the console does not call it a PIN


def test_a_refused_boot_with_flags_says_why_it_may_be(setup: Any, tmp_path: Path) -> None:
    flow, client, out = setup([], boot=BOOT)
    client.create = lambda _request: (_ for _ in ()).throw(GatewayRefused())
    with pytest.raises(GatewayRefused):
        flow.run(sealed(tmp_path), threading.Event())
    lines = [line for line in out.getvalue().splitlines() if "rd.break" in line]
    assert lines == [
        "zkv: this boot's kernel command line carries rd.break: a gateway policy may refuse "
        "such boots"
    ]


def test_the_countdown_ticks_between_polls(tmp_path: Path) -> None:
    """The ticker's tick rewrites the line (a terminal) while a long-poll is held open."""
    host_files(tmp_path)
    clock = FakeClock()
    ticks: list[Callable[[], None]] = []

    class Manual:
        def __init__(self, tick: Callable[[], None]) -> None:
            ticks.append(tick)

        def start(self) -> Manual:
            return self

        def stop(self) -> None:
            ticks.clear()

    def poll_with_ticks(_req: protocol.UnlockRequest) -> protocol.PollResult:
        for _ in range(3):
            clock.now += 5
            ticks[0]()
        return approved()(_req)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    client = ScriptedClient(
        clock, [poll_with_ticks], created={"code_kind": "pin", "approve_at": ""}
    )
    config = Config(gateway_url="https://gw.example", host_key=str(tmp_path / "host.key"))
    flow = GatewayUnlock(
        config, Console(out), client, Deadline(clock, 300), "nas",
        wall_clock=lambda: clock.now, wait_network=lambda *a, **k: None, ticker=Manual,
    )  # fmt: skip
    flow.run(sealed(tmp_path), threading.Event())
    text = out.getvalue()
    assert [f"{s} left" in text for s in ("5:00", "4:55", "4:50", "4:45")] == [True] * 4
    assert "\rzkv: PIN 123456 - approve at gw.example - waiting, 4:55 left" in text
    assert not ticks  # stopped
