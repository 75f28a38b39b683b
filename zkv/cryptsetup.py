"""The one place zkv talks to ``cryptsetup``, ``losetup`` and ``blkid``: keys on stdin or a pipe.

Keys never reach argv or a file: ``--key-file=-`` makes cryptsetup read the key from stdin to
its end (no newline is stripped, so the bytes are exactly the stored key), and luksAddKey's
*new* key comes through a second pipe named ``/dev/fd/N`` (``pass_fds``). cryptsetup's exit
codes (cryptsetup(8) "RETURN CODES": 1 wrong parameters, 2 no permission = bad passphrase,
4 wrong device, 5 device busy or already exists) become typed errors, so no message is parsed
but for status. Standard library only: the boot client will run this in the initramfs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from zkv import zvol
from zkv.errors import (
    CryptDeviceNotFound,
    CryptKeyRejected,
    CryptNotLuks,
    CryptsetupError,
    CryptUnavailable,
    LoopError,
)
from zkv.fsutil import which

ENV_CRYPTSETUP, ENV_LOSETUP, ENV_BLKID = "ZKV_CRYPTSETUP", "ZKV_LOSETUP", "ZKV_BLKID"
# Where udev links devices by UUID (present in the initramfs and the real root with udev).
BY_ID = {"UUID": "/dev/disk/by-uuid", "PARTUUID": "/dev/disk/by-partuuid"}
SYS_BLOCK = "/sys/class/block"
_WRONG_KEY, _WRONG_DEVICE, _BUSY = 2, 4, 5
# Tests set it (as for scrypt, zkv/keystore.py): new keyslots without seconds of PBKDF.
_WEAK_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def _binary(env: str, name: str) -> str:
    explicit = os.environ.get(env)
    if explicit:
        return explicit
    found = which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return name


def _first_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:200] if text else "failed without a message"


class Cryptsetup:
    def __init__(self, timeout: float = 120.0) -> None:
        self.cryptsetup = _binary(ENV_CRYPTSETUP, "cryptsetup")
        self.losetup = _binary(ENV_LOSETUP, "losetup")
        self.blkid = _binary(ENV_BLKID, "blkid")
        self.timeout = timeout

    def _run(
        self, argv: list[str], stdin: bytes = b"", pass_fds: Sequence[int] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                pass_fds=pass_fds,
            )
        except (FileNotFoundError, PermissionError):
            raise CryptUnavailable(detail=f"{argv[0]} cannot be run") from None
        except subprocess.TimeoutExpired:
            name = os.path.basename(argv[0])
            raise CryptsetupError(
                detail=f"'{name} {argv[1]}' took over {self.timeout:g} s"
            ) from None

    def _luks(
        self, args: list[str], device: str, stdin: bytes = b"", pass_fds: Sequence[int] = ()
    ) -> str:
        result = self._run([self.cryptsetup, *args], stdin, pass_fds)
        if result.returncode == 0:
            return result.stdout.decode("utf-8", "replace")
        if result.returncode == _WRONG_KEY:
            raise CryptKeyRejected(device=device)
        if result.returncode == _WRONG_DEVICE and not os.path.exists(device):
            raise CryptDeviceNotFound(device=device)
        raise CryptsetupError(detail=f"{args[0]} {device}: {_first_line(result.stderr)}")

    # --- LUKS headers (no device-mapper needed) ----------------------------------------------

    def is_luks(self, device: str) -> bool:
        result = self._run([self.cryptsetup, "isLuks", device])
        if result.returncode == _WRONG_DEVICE:
            raise CryptDeviceNotFound(device=device)
        return result.returncode == 0

    def require_luks(self, device: str) -> None:
        if not self.is_luks(device):
            raise CryptNotLuks(device=device)

    def luks_uuid(self, device: str) -> str:
        self.require_luks(device)
        return self._luks(["luksUUID", device], device).strip().lower()

    def test_key(self, device: str, key: bytes) -> None:
        """Does a keyslot of ``device`` open with ``key``? CryptKeyRejected if not."""
        self._luks(["open", "--test-passphrase", "--key-file=-", device], device, key)

    def format(self, device: str, key: bytes) -> None:
        """A new LUKS2 header on ``device`` (a file or block device) with one keyslot for ``key``
        (on stdin). Destroys what was there: callers format only what they just created."""
        weak = _WEAK_PBKDF if os.environ.get("ZKV_TESTONLY_WEAKEN_KDF") == "1" else []
        args = ["luksFormat", "-q", "--type", "luks2", *weak, "--key-file=-", device]
        self._luks(args, device, key)

    def add_key(self, device: str, existing: bytes, new: bytes) -> None:
        """A new keyslot for ``new``; ``existing`` (any key it has) on stdin, ``new`` on a pipe."""
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, new)  # far below the pipe's buffer (keys are <= 4 KiB)
            os.close(write_end)
            write_end = -1
            weak = _WEAK_PBKDF if os.environ.get("ZKV_TESTONLY_WEAKEN_KDF") == "1" else []
            args = ["luksAddKey", *weak, "--key-file=-", device, f"/dev/fd/{read_end}"]
            self._luks(args, device, existing, pass_fds=(read_end,))
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)

    def remove_key(self, device: str, key: bytes) -> None:
        """Remove the keyslot that ``key`` opens (luksRemoveKey; the key on stdin)."""
        self._luks(["luksRemoveKey", "--key-file=-", device], device, key)

    # --- mappings (device-mapper) ------------------------------------------------------------

    def open(self, device: str, name: str, key: bytes) -> None:
        self._luks(["open", "--type", "luks", "--key-file=-", device, name], device, key)

    def status(self, name: str) -> str | None:
        """The device under the active mapping ``name``, or None if no such mapping is active."""
        result = self._run([self.cryptsetup, "status", name])
        if result.returncode != 0:
            return None
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            field, _, value = line.strip().partition(":")
            if field == "device":
                return value.strip()
        return ""

    def holder(self, device: str) -> str | None:
        """The dm-crypt mapping already open on ``device`` under any name (sysfs), if one is."""
        folder = os.path.join(SYS_BLOCK, os.path.basename(os.path.realpath(device)), "holders")
        try:
            holders = sorted(os.listdir(folder))
        except OSError:
            return None
        for holder in holders:
            dm = os.path.join(SYS_BLOCK, holder, "dm")
            try:
                with open(os.path.join(dm, "uuid")) as uuid, open(os.path.join(dm, "name")) as nm:
                    if uuid.read().startswith("CRYPT-"):
                        return nm.read().strip()
            except OSError:
                continue
        return None

    def close(self, name: str) -> None:
        self._luks(["close", name], name)

    # --- loop devices and device names -------------------------------------------------------

    def _loop(self, args: list[str]) -> str:
        result = self._run([self.losetup, *args])
        if result.returncode != 0:
            raise LoopError(detail=f"{args[-1]}: {_first_line(result.stderr)}")
        return result.stdout.decode("utf-8", "replace")

    def loop_of(self, path: str) -> str | None:
        """The loop device ``path`` is attached to already, if any (the first one)."""
        if not os.path.isfile(path):
            raise CryptDeviceNotFound(device=path)
        out = self._loop(["--list", "--noheadings", "--output", "NAME", "--associated", path])
        names = [line.strip() for line in out.splitlines() if line.strip()]
        return names[0] if names else None

    def attach(self, path: str) -> str:
        """``path`` on a loop device: the one it is attached to, else a new one."""
        return self.loop_of(path) or self._loop(["--find", "--show", path]).strip()

    def detach(self, loop: str) -> None:
        self._loop(["--detach", loop])

    def device(self, locator: str) -> str:
        """The device node of ``UUID=...``/``PARTUUID=...`` (udev's link, else blkid) or a path.
        CryptDeviceNotFound if there is none."""
        tag, sep, value = locator.partition("=")
        if not sep or tag not in BY_ID:
            # A zvol without udev's link is still found by its kernel node (zvol.py).
            node = zvol.node_of(locator) if locator.startswith(zvol.PREFIX) else None
            if node is None and not os.path.exists(locator):
                raise CryptDeviceNotFound(device=locator)
            return node or locator
        link = os.path.join(BY_ID[tag], value)
        if os.path.exists(link):
            return link
        result = self._run([self.blkid, "--match-token", locator, "--output", "device"])
        found = result.stdout.decode("utf-8", "replace").split()
        if result.returncode != 0 or not found:
            raise CryptDeviceNotFound(device=locator)
        return found[0]
