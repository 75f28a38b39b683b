"""Asking a person for the recovery passphrase, in a way another thread can call off.

Two ways to ask:
- ``TtyPrompt``: on a terminal (/dev/console or --tty), echo off, canonical mode kept so the
  usual line editing works. The read waits in ``select`` with a short tick, so cancelling
  needs no signals. Terminal settings are restored in ``finally`` and again by ``close()``.
- ``AskPasswordPrompt``: ``systemd-ask-password --no-tty`` (dracut with systemd), so the
  console and plymouth agents answer it. Cancelling terminates it, which withdraws the question.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import termios
import threading
from typing import Any, Protocol

from zkv.errors import PromptUnavailable
from zkv.fsutil import which
from zkv_early.console import Console

MAX_PASSPHRASE = 1024
TICK = 0.2


class Prompt(Protocol):
    def ask(self, message: str, cancel: threading.Event) -> bytes | None:
        """The line typed (without its newline), or None once ``cancel`` is set."""
        ...

    def close(self) -> None: ...


class TtyPrompt:
    def __init__(self, device: str, console: Console) -> None:
        self.device = device
        self.console = console
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._saved: list[Any] | None = None

    def ask(self, message: str, cancel: threading.Event) -> bytes | None:
        fd = self._open()
        line: bytes | None = None
        try:
            self._echo_off(fd)
            self.console.show_prompt(message)
            line = self._read_line(fd, cancel)
        finally:
            self._restore()
            # ECHONL already moved past a typed line; an abandoned prompt needs the newline.
            self.console.end_prompt(newline=line is None)
        return line

    def _open(self) -> int:
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY)
                except OSError as exc:
                    raise PromptUnavailable(f"{self.device}: {exc.strerror or exc}") from None
            return self._fd

    def _echo_off(self, fd: int) -> None:
        with self._lock:
            try:
                attrs = termios.tcgetattr(fd)
            except termios.error:
                raise PromptUnavailable(f"{self.device} is not a terminal") from None
            self._saved = list(attrs)
            attrs[3] = (attrs[3] & ~termios.ECHO) | termios.ECHONL | termios.ICANON
            termios.tcsetattr(fd, termios.TCSANOW, attrs)

    def _restore(self) -> None:
        """Idempotent; called by the reading thread and again by the main thread at the end."""
        with self._lock:
            if self._fd is not None and self._saved is not None:
                with contextlib.suppress(termios.error, OSError):
                    termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
                self._saved = None

    def _read_line(self, fd: int, cancel: threading.Event) -> bytes | None:
        buffer = bytearray()
        while not cancel.is_set():
            ready, _, _ = select.select([fd], [], [], TICK)
            if not ready:
                continue
            chunk = os.read(fd, MAX_PASSPHRASE)
            if not chunk:  # hang-up: nobody will answer on this terminal
                raise PromptUnavailable(f"{self.device} was closed")
            buffer += chunk
            if b"\n" in buffer or len(buffer) > MAX_PASSPHRASE:
                line = bytes(buffer.split(b"\n", 1)[0]).rstrip(b"\r")
                buffer[:] = b"\0" * len(buffer)
                return line
        buffer[:] = b"\0" * len(buffer)
        return None

    def close(self) -> None:
        self._restore()
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None


class AskPasswordPrompt:
    def __init__(self, binary: str, timeout: float) -> None:
        self.binary = binary
        self.timeout = timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def ask(self, message: str, cancel: threading.Event) -> bytes | None:
        argv = [
            self.binary,
            "--no-tty",
            "--id=zkv",
            f"--timeout={max(1, int(self.timeout))}",
            message.strip().rstrip(":"),
        ]
        with self._lock:
            if cancel.is_set():
                return None
            try:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            except OSError as exc:
                raise PromptUnavailable(f"{self.binary}: {exc.strerror or exc}") from None
            self._process = process
        try:
            while process.poll() is None:
                if cancel.wait(TICK):
                    self._terminate()
                    return None
            assert process.stdout is not None
            answer = process.stdout.read(MAX_PASSPHRASE + 2)
        finally:
            self._terminate()
        if cancel.is_set():
            return None
        if process.returncode != 0:
            raise PromptUnavailable(f"systemd-ask-password ended with status {process.returncode}")
        return answer.split(b"\n", 1)[0]

    def _terminate(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(2)
        if process.stdout is not None:
            process.stdout.close()

    def close(self) -> None:
        self._terminate()


def choose(
    mode: str, device: str, console: Console, timeout: float, run_dir: str = "/run/systemd/system"
) -> Prompt | None:
    """``auto``: systemd-ask-password in a systemd initrd, otherwise the terminal."""
    if mode == "none":
        return None
    ask_password = which("systemd-ask-password")
    if mode == "ask-password" or (mode == "auto" and ask_password and os.path.isdir(run_dir)):
        if not ask_password:
            raise PromptUnavailable("systemd-ask-password is not installed")
        return AskPasswordPrompt(ask_password, timeout)
    return TtyPrompt(device, console)
