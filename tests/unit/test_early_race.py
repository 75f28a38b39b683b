"""The race between the gateway and the console, and the terminal prompt it cancels."""

from __future__ import annotations

import os
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from zkv.errors import ApprovalDenied, PassphraseRetriesExceeded, UnlockTimeout
from zkv_early.console import Console
from zkv_early.passphrase_prompt import AskPasswordPrompt, TtyPrompt
from zkv_early.race import Cancelled, Contender, race


def blocker(stopped: list[str], name: str) -> Contender[str]:
    """A contender that only ends when cancelled, like a long-poll or an unanswered prompt."""

    def run(cancel: threading.Event) -> str:
        cancel.wait(30)
        stopped.append(name)
        raise Cancelled

    return Contender(name, run)


def test_first_success_wins_and_the_other_is_cancelled() -> None:
    stopped: list[str] = []
    started = time.monotonic()
    outcome = race([blocker(stopped, "gateway"), Contender("passphrase", lambda c: "store")], 10)
    assert (outcome.winner, outcome.value) == ("passphrase", "store")
    assert stopped == ["gateway"]
    assert time.monotonic() - started < 2


def test_a_failure_does_not_end_the_race_while_another_may_succeed() -> None:
    def denied(cancel: threading.Event) -> str:
        raise ApprovalDenied

    def slow(cancel: threading.Event) -> str:
        time.sleep(0.2)
        return "typed"

    assert race([Contender("gateway", denied), Contender("passphrase", slow)], 10).value == "typed"


def test_all_fail_reports_the_first_contenders_error() -> None:
    def denied(cancel: threading.Event) -> str:
        time.sleep(0.1)
        raise ApprovalDenied

    def wrong(cancel: threading.Event) -> str:
        raise PassphraseRetriesExceeded

    with pytest.raises(ApprovalDenied):
        race([Contender("gateway", denied), Contender("passphrase", wrong)], 10)


def test_deadline_cancels_everything() -> None:
    stopped: list[str] = []
    hook: list[str] = []
    contenders = [blocker(stopped, "a"), blocker(stopped, "b")]
    contenders[0].stop = lambda: hook.append("a")
    with pytest.raises(UnlockTimeout):
        race(contenders, 0.3)
    assert sorted(stopped) == ["a", "b"] and hook == ["a"]


def denied_now(cancel: threading.Event) -> str:
    raise ApprovalDenied


def test_a_failure_with_grace_caps_the_others_time_and_its_error_ends_the_race() -> None:
    stopped: list[str] = []
    told: list[tuple[str, float]] = []
    gateway = Contender("gateway", denied_now, grace=0.3)
    gateway.on_failure = lambda error, left: told.append((type(error).__name__, left))
    started = time.monotonic()
    with pytest.raises(ApprovalDenied):
        race([gateway, blocker(stopped, "passphrase")], 30)
    assert 0.25 < time.monotonic() - started < 2  # the grace, not the overall 30 s
    assert stopped == ["passphrase"]
    assert len(told) == 1 and told[0][0] == "ApprovalDenied" and 0 < told[0][1] <= 0.3


def test_the_other_may_still_win_during_the_grace() -> None:
    def typed_soon(cancel: threading.Event) -> str:
        time.sleep(0.2)
        return "typed"

    gateway = Contender("gateway", denied_now, grace=5)
    assert race([gateway, Contender("passphrase", typed_soon)], 30).value == "typed"


def test_zero_grace_ends_the_race_at_once() -> None:
    stopped: list[str] = []
    told: list[float] = []
    gateway = Contender("gateway", denied_now, grace=0)
    gateway.on_failure = lambda _error, left: told.append(left)
    started = time.monotonic()
    with pytest.raises(ApprovalDenied):
        race([gateway, blocker(stopped, "passphrase")], 30)
    assert time.monotonic() - started < 1
    assert stopped == ["passphrase"] and told == []


def test_grace_never_extends_the_overall_limit() -> None:
    gateway = Contender("gateway", denied_now, grace=60)
    started = time.monotonic()
    with pytest.raises(ApprovalDenied):
        race([gateway, blocker([], "passphrase")], 0.3)
    assert time.monotonic() - started < 2


def test_a_failure_without_grace_leaves_the_overall_limit() -> None:
    def wrong(cancel: threading.Event) -> str:
        raise PassphraseRetriesExceeded

    with pytest.raises(UnlockTimeout):  # the gateway (still running) keeps its whole time
        race([blocker([], "gateway"), Contender("passphrase", wrong)], 0.3)


def test_bugs_are_not_swallowed() -> None:
    def bug(cancel: threading.Event) -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        race([Contender("gateway", bug)], 5)


# --- the terminal prompt ----------------------------------------------------------------------


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    yield master, name
    os.close(master)
    os.close(slave)


def echo(fd: int) -> bool:
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


def test_tty_prompt_reads_a_line_with_echo_off_then_restores(pty: tuple[int, str]) -> None:
    master, name = pty
    prompt = TtyPrompt(name, Console(open(os.devnull, "w")))
    answer: list[bytes | None] = []
    thread = threading.Thread(target=lambda: answer.append(prompt.ask("pw: ", threading.Event())))
    thread.start()
    deadline = time.monotonic() + 5
    while echo(master) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not echo(master)  # echo is off while asking
    os.write(master, b"secret words\n")
    thread.join(5)
    assert answer == [b"secret words"]
    assert echo(master)
    prompt.close()


def test_tty_prompt_cancelled_returns_none_and_restores_echo(pty: tuple[int, str]) -> None:
    master, name = pty
    prompt = TtyPrompt(name, Console(open(os.devnull, "w")))
    cancel = threading.Event()
    answer: list[bytes | None] = []
    thread = threading.Thread(target=lambda: answer.append(prompt.ask("pw: ", cancel)))
    thread.start()
    time.sleep(0.3)
    cancel.set()
    thread.join(2)
    assert not thread.is_alive() and answer == [None]
    assert echo(master)
    prompt.close()


def test_ask_password_is_terminated_when_cancelled(tmp_path: object) -> None:
    fake = os.path.join(str(tmp_path), "ask")
    with open(fake, "w") as handle:
        handle.write("#!/bin/sh\nexec sleep 30\n")
    os.chmod(fake, 0o755)
    prompt = AskPasswordPrompt(fake, 30)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    assert prompt.ask("Recovery passphrase: ", cancel) is None
    assert time.monotonic() - started < 5


def test_ask_password_answer(tmp_path: object) -> None:
    fake = os.path.join(str(tmp_path), "ask")
    with open(fake, "w") as handle:
        handle.write('#!/bin/sh\n[ "$1" = --no-tty ] || exit 3\necho "typed words"\n')
    os.chmod(fake, 0o755)
    assert AskPasswordPrompt(fake, 30).ask("pw: ", threading.Event()) == b"typed words"


def test_a_passphrase_being_checked_when_the_grace_ends_is_checked_to_the_end() -> None:
    # Typed in time, its KDF still running when the grace is over (a slow machine): it wins.
    def typed_then_slow_check(cancel: threading.Event) -> str:
        passphrase.busy.set()
        time.sleep(0.6)  # past the 0.2 s grace
        passphrase.busy.clear()
        return "opened"

    gateway = Contender("gateway", denied_now, grace=0.2)
    passphrase = Contender("passphrase", typed_then_slow_check)
    assert race([gateway, passphrase], 30).value == "opened"


def test_a_check_never_outlasts_the_overall_limit() -> None:
    def endless_check(cancel: threading.Event) -> str:
        passphrase.busy.set()
        cancel.wait(30)
        raise Cancelled

    gateway = Contender("gateway", denied_now, grace=0.1)
    passphrase = Contender("passphrase", endless_check)
    started = time.monotonic()
    with pytest.raises(ApprovalDenied):  # the grace's error, once the overall 0.5 s is over
        race([gateway, passphrase], 0.5)
    assert 0.4 < time.monotonic() - started < 2
