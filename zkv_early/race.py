"""First answer wins: the gateway and the console prompt run side by side in threads.

Each contender gets a ``threading.Event``; when one succeeds (or the deadline passes) the event
is set and each contender's ``stop`` hook runs, which breaks whatever the thread is blocked in
(closing a socket, killing systemd-ask-password, the prompt's select loop). Threads are joined
with a bound, and are daemons, so a stuck one can never keep the boot waiting. The main thread
only ever waits on a queue with a timeout, so signals (SIGTERM from the hooks) still reach it.

A contender with a ``grace`` (the gateway) shortens the race when it fails: the others get at
most that many seconds more, then its error ends the run. So a denial does not leave the
console waiting for the whole overall limit before OpenZFS's own prompt takes over.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from zkv.errors import UnlockTimeout, ZkvError

T = TypeVar("T")
JOIN_TIMEOUT = 3.0


class Cancelled(Exception):
    """Raised inside a contender that was told to stop; never reaches the user."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True at once if ``event`` is set."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class Deadline:
    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.end = clock.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0


BUSY_TICK = 0.1  # how often a race past its grace looks whether a busy contender is done


class Contender(Generic[T]):
    def __init__(
        self,
        name: str,
        run: Callable[[threading.Event], T],
        stop: Callable[[], None] = lambda: None,
        grace: float | None = None,
    ) -> None:
        self.name, self.run, self.stop = name, run, stop
        self.grace = grace  # when this one fails, the others' time left is capped to this
        # Set while it checks an answer already given (a typed passphrase in its KDF): a grace
        # that runs out then waits for the check, within the overall limit.
        self.busy = threading.Event()
        # Called from the main thread when this one fails while others go on: (error, time left).
        self.on_failure: Callable[[BaseException, float], None] = lambda _error, _left: None


class Winner(Generic[T]):
    def __init__(self, winner: str, value: T) -> None:
        self.winner, self.value = winner, value


def race(contenders: Sequence[Contender[T]], timeout: float) -> Winner[T]:
    """Return the first success. When all fail, raise the error of the first contender (in the
    order given) that failed with a ZkvError. When time runs out, raise the error of the
    contender whose grace ran out, else UnlockTimeout."""
    results: queue.Queue[tuple[int, T | None, BaseException | None]] = queue.Queue()
    cancel = threading.Event()

    def runner(index: int, contender: Contender[T]) -> None:
        try:
            results.put((index, contender.run(cancel), None))
        except BaseException as exc:  # reported to the main thread, which decides
            results.put((index, None, exc))

    threads = [
        threading.Thread(target=runner, args=(i, c), name=f"zkv-{c.name}", daemon=True)
        for i, c in enumerate(contenders)
    ]
    for thread in threads:
        thread.start()
    errors: dict[int, BaseException] = {}
    limit = end = time.monotonic() + timeout
    graced: BaseException | None = None  # the error that shortened the race
    try:
        while len(errors) < len(contenders):
            try:
                index, value, error = results.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                checking = any(c.busy.is_set() for i, c in enumerate(contenders) if i not in errors)
                if graced is not None and checking and time.monotonic() < limit:
                    end = min(limit, time.monotonic() + BUSY_TICK)
                    continue
                if graced is not None:
                    raise graced from None
                raise UnlockTimeout(seconds=f"{timeout:g}") from None
            if error is None:
                return Winner(contenders[index].name, value)  # type: ignore[arg-type]
            errors[index] = error
            grace = contenders[index].grace
            if grace is None or len(errors) == len(contenders) or isinstance(error, Cancelled):
                continue
            if grace <= 0:
                raise error
            end = min(end, time.monotonic() + grace)
            graced = error
            contenders[index].on_failure(error, max(0.0, end - time.monotonic()))
        raise _most_relevant(errors)
    finally:
        cancel.set()
        for contender in contenders:
            try:
                contender.stop()
            except Exception:  # noqa: S110 - stopping is best effort; the join below is bounded
                pass
        for thread in threads:
            thread.join(JOIN_TIMEOUT)


def _most_relevant(errors: dict[int, BaseException]) -> BaseException:
    for index in sorted(errors):
        if isinstance(errors[index], ZkvError):
            return errors[index]
    for index in sorted(errors):
        if not isinstance(errors[index], Cancelled):
            return errors[index]
    return errors[min(errors)]
