"""Boot driver: boots an image under QEMU and talks to it over the serial console (pexpect).

Every wait has a timeout; on failure a ``BootFailure`` carries the last console lines.
"""

from __future__ import annotations

import collections
import contextlib
import re
import shlex
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pexpect

from tests.vm import own_boot, qemu, testbed
from tests.vm.testbed import Image

# dracut's console agent, then initramfs-tools' plain `zfs load-key`. The TAB hint keeps the
# wall broadcast ("Password entry required for 'Encrypted ZFS password for …'") from matching.
PROMPT = re.compile(
    r"Encrypted ZFS password for (?P<d>\S+) \(press TAB for no echo\)"
    r"|Enter passphrase for '(?P<i>[^']+)':"
)
KEY_REJECTED = re.compile(r"Key load error: Incorrect key provided")
MARKER = re.compile(testbed.BOOT_MARKER + r" root=(\S+) data_mounted=(\S+)\r*\n")
KERNEL_START = re.compile(r"Linux version \d")
# The real root's systemd greets the console when it takes over: the root is mounted and
# switched to. dracut's initrd systemd greets first with "... (Initramfs)!", which does not
# count. The OS name is in bold: "Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!".
SWITCHED_ROOT = re.compile(
    r"Welcome to (?:\x1b\[[0-9;]*m)?(?![^\r\n!]*Initramfs)[^\r\n\x1b!]+(?:\x1b\[[0-9;]*m)?!"
)
BOOT_FAILED = re.compile(
    r"No pool imported|Manually import the root pool|Kernel panic"
    r"|You are in emergency mode|Give root password for maintenance|\(initramfs\) "
)
SHELL_PROMPT = re.compile(r"root@zkv-e2e:[^\r\n]*# ")
# Typed as RC''= so that the echo of the command line itself never matches.
_RC = re.compile(r"ZKV-RC=(\d+)\r*\n")
# Colours, bracketed-paste toggles and other CSI sequences in shell output.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

TAIL_LINES = 60
own_boot_files = own_boot.read_boot_files  # a name the unit tests can replace


class BootFailure(AssertionError):
    """The guest did not do what the test waited for; the message ends with its console."""


@dataclass
class Timings:
    """Seconds since QEMU started."""

    kernel: float | None = None
    prompts: list[float] = field(default_factory=list)
    root: float | None = None  # the real root's marker line, after zfs-mount.service
    switched: float | None = None  # the real root's systemd took over (SWITCHED_ROOT)

    def summary(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        prompts = ",".join(fmt(p) for p in self.prompts) or "-"
        return (
            f"kernel {fmt(self.kernel)} s, prompt {prompts} s, switched {fmt(self.switched)} s, "
            f"root {fmt(self.root)} s"
        )


@dataclass
class BootResult:
    root_source: str
    data_mounted: bool
    timings: Timings


class _ConsoleLog:
    """pexpect logfile: keeps the whole console in a file and the last lines in memory.

    Each line in the file starts with the host's seconds since QEMU started ("[  12.345] "),
    so a boot's phases can be timed from the log alone (the guest's own clock runs slow and
    jumps under TCG).
    """

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("w", encoding="utf-8", errors="replace")
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._partial = ""
        self._at_line_start = True
        self.started = time.monotonic()

    def write(self, data: str) -> None:
        stamp = f"[{time.monotonic() - self.started:8.3f}] "
        for piece in data.splitlines(keepends=True):
            if self._at_line_start:
                self._file.write(stamp)
            self._file.write(piece)
            self._at_line_start = piece.endswith("\n")
        lines = (self._partial + data).replace("\r", "").split("\n")
        self._partial = lines.pop()
        self._tail.extend(lines)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def tail(self) -> str:
        return "\n".join([*self._tail, self._partial])


class Guest:
    """One boot of ``image`` on a throw-away qcow2 overlay. Use as a context manager.

    ``host_port``: the guest reaches 127.0.0.1:<host_port> as 10.0.2.100:80.
    ``extra_cmdline``: appended to the kernel command line (e.g. ``rd.zkv=0``).
    ``icount``: QEMU's -icount (see qemu.command): the guest's clock counts instructions.
    ``devices``: more QEMU device arguments (qemu.command), the same for every boot.

    ``boot_again()`` boots the same disk once more: QEMU runs with -no-reboot, so the guest's
    own ``systemctl reboot`` ends it; the next QEMU starts on the same overlay, which lives
    until ``close()`` (what the first boot wrote, the second one finds). With
    ``own_boot=True`` that boot, and every later one, runs the kernel and initrd the guest
    wrote to its own /boot (tests/vm/own_boot.py), as a real reboot would.
    """

    def __init__(
        self,
        image: Image,
        *,
        host_port: int | None = None,
        extra_cmdline: Sequence[str] = (),
        console_log: Path | None = None,
        icount: str | None = None,
        devices: Sequence[str] = (),
    ) -> None:
        self.image = image
        self.devices = tuple(devices)
        self.host_port = host_port
        self.icount = icount
        self.extra_cmdline = tuple(extra_cmdline)
        self._workdir = tempfile.TemporaryDirectory(prefix="zkv-e2e-boot-")
        log_path = console_log or Path(self._workdir.name) / "console.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.console_log_path = log_path
        self._log = _ConsoleLog(log_path)
        self._child: pexpect.spawn | None = None
        self._started = 0.0
        self.boot_files: own_boot.BootFiles | None = None  # None: the image's kernel and initrd

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def cmdline(self) -> list[str]:
        return [
            testbed.root_argument(self.image.flavour),
            *testbed.BASE_CMDLINE,
            *self.extra_cmdline,
        ]

    @property
    def disk(self) -> Path:
        """This guest's qcow2 overlay, made on the first start and kept across boots."""
        return Path(self._workdir.name) / "disk.qcow2"

    def start(self) -> None:
        if not self.disk.exists():
            qemu.overlay(self.image.disk, self.disk, self.image.disk_format)
        overlay = self.disk
        files = self.boot_files
        command = qemu.command(
            kernel=self.image.kernel if files is None else files.kernel,
            initrd=self.image.initrd if files is None else files.initrd,
            cmdline=self.cmdline(),
            drives=[f"file={overlay},format=qcow2,if=virtio,cache=unsafe"],
            serial="stdio",
            host_port=self.host_port,
            icount=self.icount,
            devices=self.devices,
        )
        self._started = self._log.started = time.monotonic()
        self._log.write(f"$ {shlex.join(command)}\n")
        self._child = pexpect.spawn(
            command[0],
            command[1:],
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(50, 250),
            logfile=None,
        )
        self._child.logfile_read = self._log

    def boot_again(self, timeout: float = 120, *, own_boot: bool = False) -> None:
        """Wait up to ``timeout`` for this boot's QEMU to exit (the guest rebooted or powered
        off: -no-reboot), stop it if it did not, then start QEMU again on the same disk;
        ``own_boot``: from the kernel and initrd now in the guest's /boot."""
        if self._child is not None:
            if self._child.isalive():
                self._child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
            self._stop_qemu()
        if own_boot:
            # A fresh folder per boot: a later boot reads what the guest wrote since.
            boots = Path(self._workdir.name) / "own-boot"
            count = len(list(boots.iterdir())) if boots.exists() else 0
            self.boot_files = own_boot_files(self.disk, boots / str(count))
        where = "" if self.boot_files is None else f" with its own /boot {self.boot_files.version}"
        self._log.write(f"--- boot again on {self.disk}{where} ---\n")
        self.start()

    def power_off(self, timeout: float = 60) -> None:
        """Cut the power now: QEMU quits at once (SIGTERM: it closes its disk files, so its
        qcow2 stays whole), and what the guest had not written out is lost, as in a power
        cut. ``boot_again()`` then starts the next boot."""
        if self._child is not None and self._child.isalive():
            self._child.kill(signal.SIGTERM)
            self._child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        self._log.write("--- power off ---\n")
        self._stop_qemu()

    def _stop_qemu(self) -> None:
        if self._child is not None:
            if self._child.isalive():
                # SIGKILL, then wait until it is gone: on a loaded host QEMU can outlive the
                # short pauses of pexpect's terminate(), and close() then raises "Could not
                # terminate the child" in a test's teardown.
                self._child.kill(signal.SIGKILL)
                self._child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=60)
                with contextlib.suppress(pexpect.ExceptionPexpect):
                    self._child.wait()
            self._child.close()
            self._child = None

    def close(self) -> None:
        self._stop_qemu()
        self._log.close()
        self._workdir.cleanup()

    @property
    def child(self) -> pexpect.spawn:
        if self._child is None:
            raise RuntimeError("guest not started")
        return self._child

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def fail(self, message: str) -> BootFailure:
        return BootFailure(
            f"{self.image.flavour}/{self.image.channel}: {message} after {self.elapsed():.0f} s\n"
            f"--- last console lines ({self.console_log_path}) ---\n{self._log.tail()}"
        )

    def _expect(self, patterns: list[Any], deadline: float, what: str) -> int:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self.fail(f"timed out waiting for {what}")
        index: int = self.child.expect([*patterns, pexpect.EOF, pexpect.TIMEOUT], timeout=remaining)
        if index == len(patterns):
            raise self.fail(f"QEMU exited while waiting for {what}")
        if index == len(patterns) + 1:
            raise self.fail(f"timed out waiting for {what}")
        return index

    def boot(
        self, answers: Sequence[str] = (testbed.ROOT_PASSPHRASE,), timeout: float = 600
    ) -> BootResult:
        """Answer root-key prompts with ``answers`` in order, until the real root's marker.

        After an answer, only a prompt that follows a "key rejected" message counts as new:
        the console agent may redraw the old prompt. A prompt with no answer left fails.
        """
        deadline = self._started + timeout
        timings = Timings()
        pending = list(answers)
        armed = True
        patterns = [KERNEL_START, PROMPT, KEY_REJECTED, MARKER, BOOT_FAILED, SWITCHED_ROOT]
        while True:
            index = self._expect(patterns, deadline, "the root key prompt or the boot marker")
            if index == 0:
                timings.kernel = timings.kernel or self.elapsed()
            elif index == 1 and armed:
                if not pending:
                    raise self.fail("prompted for the root key again, but no answer is left")
                timings.prompts.append(self.elapsed())
                self.child.send(pending.pop(0) + "\r")
                armed = False
            elif index == 2:
                armed = True
            elif index == 3:
                timings.root = self.elapsed()
                match = self.child.match
                if pending:
                    raise self.fail(f"booted with {len(pending)} answer(s) unused")
                return BootResult(match.group(1), match.group(2) == "yes", timings)
            elif index == 4:
                raise self.fail(f"boot failed: {self.child.after!r}")
            elif index == 5:
                timings.switched = timings.switched or self.elapsed()

    def login(self, timeout: float = 180) -> None:
        """Wait for the autologin root shell on the serial console."""
        self.child.send("\r")
        self._expect([SHELL_PROMPT], time.monotonic() + timeout, "the root shell")

    def shell(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run ``command`` in the root shell; return its exit status and the console output.

        The output is everything since the command was typed, its echo included, with the
        carriage returns and terminal escape sequences removed.
        """
        self.child.sendline(f"{command}; echo ZKV-RC''=$?")
        self._expect([_RC], time.monotonic() + timeout, f"`{command}` to finish")
        match = self.child.match
        output = _ANSI.sub("", str(self.child.before)).replace("\r", "")
        return int(match.group(1)), output

    def check(self, command: str, timeout: float = 120) -> str:
        status, output = self.shell(command, timeout)
        if status != 0:
            raise self.fail(f"`{command}` exited {status}")
        return output

    def answer(
        self, command: str, prompt: re.Pattern[str], secret: str, timeout: float = 180
    ) -> int:
        """Run ``command`` in the root shell, type ``secret`` at its ``prompt``; its status."""
        self.child.sendline(f"{command}; echo ZKV-RC''=$?")
        self._expect([prompt], time.monotonic() + timeout, f"the prompt of `{command}`")
        self.child.send(secret + "\r")
        self._expect([_RC], time.monotonic() + timeout, f"`{command}` to finish")
        return int(self.child.match.group(1))

    def load_data_key(self, key: str, timeout: float = 180) -> None:
        """Type ``zfs load-key tank/secure`` and the key at its prompt, then mount it."""
        prompt = re.compile(rf"Enter hex key for '{re.escape(testbed.DATA_DATASET)}':")
        if self.answer(f"zfs load-key {testbed.DATA_DATASET}", prompt, key, timeout) != 0:
            raise self.fail("zfs load-key tank/secure failed")
        self.check(f"zfs mount {testbed.DATA_DATASET}", timeout)
