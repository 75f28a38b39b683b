"""The gateway side of the race: network, signed request (with this boot's flags), the request
code and countdown on the console, long-poll, sealed release.

The repository key arrives encrypted to a fresh X25519 key that exists only in this process,
so it is useless to anyone who records the exchange; it opens the keystore's repository slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from zkv import crypto, hostkey, keystore, protocol
from zkv.errors import (
    ApprovalDenied,
    ApprovalExpired,
    GatewayBusy,
    GatewayError,
    GatewayRefused,
    GatewayUnreachable,
    InputError,
    KeystoreLocked,
    ProtocolError,
    RateLimited,
    ReleaseRejected,
)
from zkv.keystore import OpenKeystore, SealedKeystore
from zkv_early import net
from zkv_early.config import Config
from zkv_early.console import Console, Ticker, waiting_text
from zkv_early.http11 import Url
from zkv_early.race import Cancelled, Deadline

MAX_WAIT = protocol.MAX_WAIT
RETRY_MAX = 10.0  # seconds between attempts while the gateway cannot be reached or is busy
# Worth another try while the deadline lasts: unreachable, 429, 503 (and a proxy's 502/504).
TRANSIENT = (GatewayUnreachable, RateLimited, GatewayBusy)
EXPIRY_GRACE = 5  # seconds we keep polling past expires_at: the gateway has the last word
CLOCK_SLACK = 30  # seconds of difference from the gateway's clock worth a line on the console


class Gateway(Protocol):
    """What the flow needs from gateway_client.GatewayClient (tests script it)."""

    def challenge(self) -> protocol.Challenge: ...

    def create(self, request: protocol.UnlockRequest) -> protocol.UnlockCreated: ...

    def poll(self, request_id: str, wait: int) -> protocol.PollResult: ...

    def abort(self) -> None: ...


class GatewayUnlock:
    def __init__(
        self,
        config: Config,
        console: Console,
        client: Gateway,
        deadline: Deadline,
        hostname: str,
        wall_clock: Callable[[], float] = time.time,
        wait_network: Callable[..., None] = net.wait_for_network,
        ticker: Callable[[Callable[[], None]], Ticker] = Ticker,
    ) -> None:
        self.config, self.console, self.client = config, console, client
        self.deadline, self.hostname = deadline, hostname
        self.wall_clock, self.wait_network = wall_clock, wait_network
        self.ticker = ticker
        self.skew = 0.0  # the gateway's clock minus ours, from its last challenge

    def run(self, sealed: SealedKeystore, cancel: threading.Event) -> OpenKeystore:
        host_private = hostkey.load(self.config.host_key)
        if isinstance(host_private, hostkey.TpmKey):
            host_private.check()
        self.wait_network(
            self.config.gateway_host,
            Url(self.config.gateway_url).port,
            Deadline(self.deadline.clock, min(self.config.network_timeout, self._left())),
            cancel,
            self.console.say,
            self.config.interfaces,
        )
        ephemeral_private, ephemeral_public = crypto.x25519_generate()
        created = self._create(host_private, sealed, ephemeral_public, cancel)
        expires = self.deadline.clock.monotonic() + max(
            0.0, created.expires_at - self._gateway_time()
        )
        self._show_wait(created, expires)
        countdown = self.ticker(lambda: self._show_wait(created, expires)).start()
        try:
            release = self._wait_for_approval(created, expires, cancel)
        finally:
            countdown.stop()
        try:
            secret = protocol.open_release(created.request_id, ephemeral_private, release)
            repository_key = keystore.parse_repository_key(secret)
        except (crypto.DecryptionFailed, InputError):
            raise ProtocolError("the released key could not be decrypted") from None
        self.console.say("approved; opening the keystore")
        try:
            return sealed.open_with_repository_key(repository_key)
        except KeystoreLocked:
            raise ReleaseRejected from None  # same exit status, says whose key it was

    def stop(self) -> None:
        self.client.abort()

    def _left(self) -> float:
        return self.deadline.remaining()

    def _challenge(self) -> str:
        """Fetch a challenge; note how far our clock is off (freshness does not depend on it,
        but expires_at is the gateway's time, and an operator wants to know)."""
        answer = self.client.challenge()
        skew = answer.now - self.wall_clock()
        if abs(skew) > CLOCK_SLACK and abs(skew - self.skew) > CLOCK_SLACK:
            side = "behind" if skew > 0 else "ahead of"
            self.console.say(f"clock off by {abs(skew):.0f} s ({side} the gateway); using its time")
        self.skew = skew
        return answer.challenge

    def _gateway_time(self) -> float:
        return self.wall_clock() + self.skew

    def _create(
        self,
        host_private: protocol.HostKey,
        sealed: SealedKeystore,
        ephemeral_public: bytes,
        cancel: threading.Event,
    ) -> protocol.UnlockCreated:
        delay = 1.0
        while True:
            try:
                # A fresh challenge for every attempt: the gateway accepts each one once.
                challenge = self._challenge()
                request = protocol.UnlockRequest.create(
                    host_private,
                    self.hostname,
                    sealed.datasets(),
                    ephemeral_public,
                    challenge,
                    self.config.boot,
                )
                created = self.client.create(request)
                break
            except GatewayRefused:
                self._say_flags()
                raise
            except TRANSIENT as exc:
                if self._left() <= delay:
                    raise
                self.console.say(f"{exc.message}; retrying in {delay:.0f} s")
            if self.deadline.clock.wait(cancel, delay):
                raise Cancelled
            delay = min(delay * 2, RETRY_MAX)
        flags = self.config.boot.flags if self.config.boot else ()
        self.console.say(
            f"unlock request sent to {self.config.gateway_host}; boot flags: "
            f"{', '.join(flags) or 'none'}"
        )
        if created.approved_ahead:  # zkv reboot --approve-ahead: the owners said yes before
            self.console.say("approved ahead of this planned reboot: no wait")
        return created

    def _waiting(self, created: protocol.UnlockCreated, left: float) -> str:
        where = created.approve_at or self.config.gateway_host
        return waiting_text(created.code_kind, created.pin, where, left)

    def _show_wait(self, created: protocol.UnlockCreated, expires: float) -> None:
        now = self.deadline.clock.monotonic()
        self.console.progress(self._waiting(created, min(self._left(), expires - now)), now)

    def _say_flags(self) -> None:
        """The refusal is uniform, but this boot knows its own flags: one line on why it may be."""
        if self.config.boot is not None and self.config.boot.flags:
            self.console.say(
                f"this boot's kernel command line carries {', '.join(self.config.boot.flags)}: "
                "a gateway policy may refuse such boots"
            )

    def _wait_for_approval(
        self, created: protocol.UnlockCreated, expires: float, cancel: threading.Event
    ) -> crypto.Sealed:
        failures = 0
        while True:
            if cancel.is_set():
                raise Cancelled
            now = self.deadline.clock.monotonic()
            left = min(self._left(), expires + EXPIRY_GRACE - now)
            if left <= 0:
                raise ApprovalExpired
            try:
                result = self.client.poll(created.request_id, max(1, int(min(MAX_WAIT, left))))
                failures = 0
            except TRANSIENT as exc:
                failures += 1
                delay = min(RETRY_MAX, float(2**failures))
                self.console.say(f"{exc.message}; retrying in {delay:.0f} s")
                stopped = self.deadline.clock.wait(cancel, min(delay, left))
                if stopped:
                    raise Cancelled from None
                continue
            if result.state == protocol.STATE_APPROVED:
                if result.release is None:  # only an approval asked ahead has none
                    raise ProtocolError("approved without a release")
                return result.release
            if result.state == protocol.STATE_DENIED:
                raise ApprovalDenied
            if result.state == protocol.STATE_EXPIRED:
                raise ApprovalExpired
            if result.state == protocol.STATE_FAILED:
                raise GatewayError("the gateway could not complete the request")
            later = self.deadline.clock.monotonic()
            self._show_wait(created, expires)  # also between ticks: a gateway may answer sooner
            if later - now < 1 and self.deadline.clock.wait(cancel, 1.0):
                raise Cancelled  # a gateway that does not hold the poll open: do not spin
