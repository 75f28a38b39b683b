"""Durable, private file writes: the only way zkv writes a keystore or a host key.

temp file (0600, same folder) -> write -> fsync -> rename -> fsync the folder. A crash at any
point leaves either the old file or the new one, never a mix (borg's SaveFile pattern).
"""

from __future__ import annotations

import contextlib
import os
import time

from zkv.errors import FileWriteError

# os.path, not pathlib, in every module the boot client imports: one import less (3 ms on the
# host, a multiple of that under an emulated CPU), and paths are plain strings there anyway.


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    target = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(target))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise FileWriteError(path=target, detail=exc.strerror or str(exc)) from None
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _testonly_pause()
        os.replace(tmp, target)
        fsync_dir(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FileWriteError(path=target, detail=exc.strerror or str(exc)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _testonly_pause() -> None:
    """Tests kill -9 a writer here to prove a crash leaves the old file intact."""
    delay = os.environ.get("ZKV_TESTONLY_PAUSE_BEFORE_RENAME")
    if delay:
        time.sleep(float(delay))


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_limited(path: str | os.PathLike[str], limit: int) -> bytes:
    """Read at most ``limit`` bytes; raise ValueError when the file is larger."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def which(name: str) -> str | None:
    """shutil.which for the boot path (shutil would pull in more imports)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def wipe_file(path: str | os.PathLike[str]) -> None:
    """Overwrite then unlink. Best effort on tmpfs (/run); never raises for a missing file."""
    try:
        size = os.path.getsize(path)
        with open(path, "r+b", buffering=0) as handle:
            handle.write(b"\0" * size)
            os.fsync(handle.fileno())
        os.unlink(path)
    except FileNotFoundError:
        return
