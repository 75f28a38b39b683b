"""What the person at the console reads: status lines, the request code, the countdown. Key
material has no path to it, nor has the approval secret: the code shown is a request code the
owner matches against the page or message (only the legacy sms-pin policy makes it a PIN).
Some of the text is the gateway's (an error code in a message), so ``say`` drops every control
character: C0 (ESC starts a terminal escape sequence, CR rewrites the line, LF
starts a line that looks like ours), DEL and C1 (0x9B is a one-character CSI). A status line
is one line.

Two threads talk at once (the gateway's progress and the passphrase prompt), so lines are
written under a lock, and a pending prompt is shown again after each status line.

The countdown (``progress``, every WAIT_TICK seconds from a ``Ticker``) is rewritten in place
on a terminal: its own line with CR, or, with the recovery prompt open below it, the line above
the prompt (save the cursor, up one line, rewrite, restore: the prompt's echo is off, so the
cursor stays where it was). Otherwise (no terminal, another status line in between, another
process's prompt) it is a new line at most every LINE_EVERY seconds, so a five-minute wait
never floods a serial log.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from zkv.protocol import CODE_PIN, CONTROLS

PREFIX = "zkv: "
WAIT_TICK = 5.0  # seconds between countdown updates in place
LINE_EVERY = 20.0  # at least this long between countdown updates written as new lines


class Console:
    def __init__(self, stream: TextIO | None = None, debug: bool = False) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.debugging = debug
        self._lock = threading.Lock()
        self._pending_prompt = ""
        self._in_place = 0  # length of the progress line the cursor is on (0: none)
        self._above_prompt = False  # the line above the pending prompt is the countdown's
        self._last_line: float | None = None  # when progress last wrote
        try:
            self.tty = self.stream.isatty()
        except (OSError, ValueError):
            self.tty = False

    @classmethod
    def open(cls, device: str | None, debug: bool = False) -> Console:
        """Write to ``device`` (the console the prompt is on) when possible, else stderr."""
        if device:
            try:
                fd = os.open(device, os.O_WRONLY | os.O_NOCTTY)
                return cls(os.fdopen(fd, "w", encoding="utf-8", errors="replace"), debug)
            except OSError:
                pass
        return cls(sys.stderr, debug)

    def say(self, message: str) -> None:
        message = message.translate(CONTROLS)
        with self._lock:
            lead = "\n" if self._pending_prompt or self._end_in_place() else ""
            self._write(f"{lead}{PREFIX}{message}\n{self._pending_prompt}")
            self._above_prompt = False

    def progress(self, message: str, now: float) -> None:
        """A status line that supersedes the previous one (the countdown); ``now``: seconds
        on any steady clock, to space out the lines written when it cannot rewrite."""
        message = message.translate(CONTROLS)
        with self._lock:
            if self.tty and not self._pending_prompt:
                pad = " " * max(0, self._in_place - len(PREFIX + message))
                self._write(f"\r{PREFIX}{message}{pad}")
                self._in_place, self._last_line = len(PREFIX + message), now
            elif self.tty and self._above_prompt:
                # DECSC, cursor up, the line rewritten and cleared to its end, DECRC
                self._write(f"\x1b7\x1b[A\r{PREFIX}{message}\x1b[K\x1b8")
                self._last_line = now
            elif self._last_line is None or now - self._last_line >= LINE_EVERY:
                self._last_line = now
                lead = "\n" if self._pending_prompt or self._end_in_place() else ""
                self._write(f"{lead}{PREFIX}{message}\n{self._pending_prompt}")
                self._above_prompt = bool(self._pending_prompt)

    def _end_in_place(self) -> bool:
        """Leave the progress line as it stands; True if there was one (a newline is due)."""
        was, self._in_place = self._in_place, 0
        return was > 0

    def debug(self, message: str) -> None:
        if self.debugging:
            self.say(f"debug: {message}")

    def show_prompt(self, text: str) -> None:
        with self._lock:
            self._pending_prompt = text
            self._above_prompt = self._end_in_place()
            self._write(("\n" if self._above_prompt else "") + text)

    def end_prompt(self, newline: bool = True) -> None:
        with self._lock:
            if self._pending_prompt and newline:
                self._write("\n")
            self._pending_prompt, self._above_prompt = "", False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a console that went away must not stop the unlock
            pass

    def close(self) -> None:
        if self.stream not in (sys.stderr, sys.stdout):
            try:
                self.stream.close()
            except OSError:
                pass


def countdown(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def waiting_text(code_kind: str | None, code: str, where: str, left: float) -> str:
    """The line the owner matches: what the code is, where to approve, the time left. A
    request code approves nothing (it is shown so the owner can tell this boot's request from
    another's); a PIN (sms-pin policy, or a gateway that does not say) does, by SMS reply."""
    name = "request code" if code_kind is not None and code_kind != CODE_PIN else "PIN"
    at = f" - approve at {where}" if where else ""
    return f"{name} {code}{at} - waiting, {countdown(left)} left"


class Ticker:
    """Calls ``tick`` every ``every`` seconds in a daemon thread until ``stop``; ``wait`` is
    Event.wait-shaped (True: stopped), for tests."""

    def __init__(
        self,
        tick: Callable[[], None],
        every: float = WAIT_TICK,
        wait: Callable[[threading.Event, float], bool] | None = None,
    ) -> None:
        self.tick, self.every = tick, every
        self._wait = wait or (lambda event, seconds: event.wait(seconds))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zkv-countdown", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._wait(self._stop, self.every):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)
