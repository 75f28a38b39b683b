"""Content-addressed cache entries under testbed.cache_dir().

An entry is a directory named after a hash of everything that went into it. It is built in a
``.partial`` sibling and renamed into place only when complete, under an exclusive file lock,
so an interrupted build leaves nothing that a later run would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.vm import testbed

Inputs = Mapping[str, object]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of a directory tree: names, types, modes, link targets and file contents."""
    digest = hashlib.sha256()
    for path in sorted(_walk(root)):
        info = path.lstat()
        rel = path.relative_to(root).as_posix()
        digest.update(
            f"{rel}\0{stat.S_IFMT(info.st_mode)}\0{stat.S_IMODE(info.st_mode)}\0".encode()
        )
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(file_digest(path).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):
        # Python writes bytecode caches as it imports: they are no input, and would change
        # the key of every image after each run.
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in [*dirs, *files]:
            yield Path(directory, name)


def key_of(inputs: Inputs) -> str:
    """Cache key: sha256 of the canonical JSON of the inputs (parent keys, digests, options)."""
    blob = json.dumps(dict(inputs), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry(name: str, inputs: Inputs, build: Callable[[Path], None]) -> Path:
    """Return the cached directory for ``name``/``inputs``, building it with ``build`` if absent.

    ``build`` receives an empty work directory; whatever it leaves there becomes the entry.
    """
    key = key_of(inputs)
    final = testbed.cache_dir() / f"{name}-{key[:16]}"
    if final.is_dir():
        return final
    with _locked(testbed.cache_dir() / "locks" / f"{final.name}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        partial = final.with_name(final.name + ".partial")
        if partial.exists():
            log(f"discarding an interrupted build: {partial}")
            discard(partial)
        partial.mkdir(parents=True)
        log(f"building {final.name}")
        started = time.monotonic()
        build(partial)
        record = json.dumps(dict(inputs), indent=2, sort_keys=True)
        (partial / "inputs.json").write_text(record + "\n")
        os.replace(partial, final)
        log(f"built {final.name} in {time.monotonic() - started:.0f} s")
    return final


def discard(path: Path) -> None:
    """Remove an interrupted build, which may still have the host's /dev etc. mounted inside.

    Unmount everything below it first, and never let rm cross into another file system.
    """
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def log(message: str) -> None:
    print(f"[zkv-e2e] {message}", flush=True)
