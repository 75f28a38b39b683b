"""What the person at the console reads: status lines, the PIN, the countdown. Key material has
no path to it. Some of the text is the gateway's (an error code in a message), so ``say`` drops
every control character: C0 (ESC starts a terminal escape sequence, CR rewrites the line, LF
starts a line that looks like ours), DEL and C1 (0x9B is a one-character CSI). A status line
is one line.

Two threads talk at once (the gateway's progress and the passphrase prompt), so lines are
written under a lock, and a pending prompt is shown again after each status line.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

PREFIX = "zkv: "
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])  # str.translate: drop them


class Console:
    def __init__(self, stream: TextIO | None = None, debug: bool = False) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.debugging = debug
        self._lock = threading.Lock()
        self._pending_prompt = ""

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
        message = message.translate(_CONTROLS)
        with self._lock:
            lead = "\n" if self._pending_prompt else ""
            self._write(f"{lead}{PREFIX}{message}\n{self._pending_prompt}")

    def debug(self, message: str) -> None:
        if self.debugging:
            self.say(f"debug: {message}")

    def show_prompt(self, text: str) -> None:
        with self._lock:
            self._pending_prompt = text
            self._write(text)

    def end_prompt(self, newline: bool = True) -> None:
        with self._lock:
            if self._pending_prompt and newline:
                self._write("\n")
            self._pending_prompt = ""

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
