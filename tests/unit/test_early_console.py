"""The boot console's countdown: the text, in place on a terminal, spaced-out lines elsewhere,
the ticker, with fake clocks (no sleeps)."""

from __future__ import annotations

import io
import threading

from zkv import protocol
from zkv_early.console import LINE_EVERY, Console, Ticker, waiting_text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_text_names_the_code_for_what_it_is() -> None:
    where = "gw.example.org"
    assert waiting_text(protocol.CODE_REQUEST, "482913", where, 298) == (
        "request code 482913 - approve at gw.example.org - waiting, 4:58 left"
    )
    # Under the legacy sms-pin policy the code does approve (by SMS reply): it says so.
    assert waiting_text(protocol.CODE_PIN, "482913", where, 61.9).startswith("PIN 482913 - ")
    assert waiting_text(None, "482913", "", -5) == "PIN 482913 - waiting, 0:00 left"


def test_in_place_on_a_terminal() -> None:
    out = Terminal()
    console = Console(out)
    console.progress("request code 1 - waiting, 10:00 left", 0)
    console.progress("request code 1 - waiting, 9:55 left", 5)
    assert out.getvalue() == (
        "\rzkv: request code 1 - waiting, 10:00 left\rzkv: request code 1 - waiting, 9:55 left "
    )  # the shorter line pads over the longer one's last character
    console.say("approved; opening the keystore")
    assert out.getvalue().endswith("9:55 left \nzkv: approved; opening the keystore\n")


def test_new_lines_at_most_every_line_every_seconds_elsewhere() -> None:
    out = io.StringIO()  # a serial log, a file: no terminal
    console = Console(out)
    for now in range(0, 61, 5):  # a tick every 5 s for a minute
        console.progress(f"waiting, {100 - now} left", now)
    lines = out.getvalue().splitlines()
    assert lines == [f"zkv: waiting, {100 - t} left" for t in range(0, 61, int(LINE_EVERY))]


def test_with_the_prompt_open_the_line_above_it_is_rewritten() -> None:
    """The recovery prompt waits below the countdown: the countdown is rewritten there (the
    cursor saved and restored), the prompt is never overwritten."""
    out = Terminal()
    console = Console(out)
    console.progress("waiting, 5:00 left", 0)
    console.show_prompt("Recovery passphrase: ")
    console.progress("waiting, 4:55 left", 5)
    assert out.getvalue() == (
        "\rzkv: waiting, 5:00 left\nRecovery passphrase: "
        "\x1b7\x1b[A\rzkv: waiting, 4:55 left\x1b[K\x1b8"
    )
    # Another status line comes between: from then on, spaced-out lines until one sits above.
    console.say("clock off by 40 s (behind the gateway); using its time")
    start = len(out.getvalue())
    console.progress("waiting, 4:50 left", 10)  # too soon for a new line
    console.progress("waiting, 4:35 left", 25)
    console.progress("waiting, 4:30 left", 30)
    assert out.getvalue()[start:] == (
        "\nzkv: waiting, 4:35 left\nRecovery passphrase: "
        "\x1b7\x1b[A\rzkv: waiting, 4:30 left\x1b[K\x1b8"
    )


def test_another_processs_prompt_gets_new_lines_only() -> None:
    """dracut: systemd-ask-password's agent owns the prompt line (boot_unlock sets tty off)."""
    out = Terminal()
    console = Console(out)
    console.tty = False
    for now in (0, 5, 10, 20):
        console.progress(f"waiting, {300 - now} left", now)
    assert out.getvalue() == "zkv: waiting, 300 left\nzkv: waiting, 280 left\n"


def test_the_console_strips_control_characters_from_progress() -> None:
    out = io.StringIO()
    Console(out).progress("approve at gw\x1b[2J\rzkv: approved\n", 0)
    assert out.getvalue() == "zkv: approve at gw[2Jzkv: approved\n"


def test_the_ticker_ticks_until_stopped() -> None:
    ticks: list[float] = []
    stop_after = 3
    waits: list[float] = []

    def wait(event: threading.Event, seconds: float) -> bool:  # a fake clock's wait
        waits.append(seconds)
        if len(waits) > stop_after:
            event.wait()  # until stop()
        return event.is_set()

    ticker = Ticker(lambda: ticks.append(len(waits)), every=5, wait=wait).start()
    deadline = threading.Event()
    while len(waits) <= stop_after and not deadline.wait(0.01):
        pass
    ticker.stop()
    assert ticks == [1, 2, 3] and waits[:3] == [5, 5, 5]
