"""The non-VM suite inside a clean Debian 12 chroot: what a newcomer's fresh machine does.

The chroot is mmdebstrap's minbase plus only what `make deps` needs to start (make, git,
python3: Debian's, the only one on PATH). `make deps` then runs inside it from a copy of the
tree: the apt packages, the project venv from Debian's python3-venv, pip from the registries.
That result is cached (tests/vm/cache.py) under a key of its inputs: the package list,
.ci/install-deps, pyproject.toml, tests/vm/apt-packages.txt, and the host's trust anchors and
pip settings (the way out to the registries, copied in as the host has them).

Every run works on an overlay of the cached root, so nothing a run writes survives it: a fresh
copy of the tree's tracked files, `make deps` again (now a check), then `make unit`. The API
file systems (/proc, /sys, /dev with /dev/shm, /run) and a tmpfs /tmp are mounted for the run
and unmounted on the way out, also after a failure or SIGTERM; what the run left running inside
is ended first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from tests.vm import cache, chroot_run, rootfs, testbed

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("make", "git", "python3", "ca-certificates")
# What `make deps` reads; a change rebuilds the cached chroot.
DEPS_INPUTS = (".ci/install-deps", "pyproject.toml", "tests/vm/apt-packages.txt")
TREE = "/src/zkv"  # the tree's copy inside the chroot
VENV = "/opt/zkv-venv"  # outside the tree, so each run's fresh copy keeps the cached venv
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
PIP_CONF = Path("/etc/pip.conf")
_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "VENV": VENV,
}


def inputs(repo: Path = REPO) -> cache.Inputs:
    """Everything the cached chroot is made of (its cache key)."""
    return {
        "layer": "clean-debian",
        "sources": rootfs.sources("bookworm"),
        "packages": list(PACKAGES),
        "deps": {name: cache.file_digest(repo / name) for name in DEPS_INPUTS},
        "host": {str(path): cache.file_digest(path) for path in _host_files()},
    }


def _host_files() -> list[Path]:
    """The host's own trust anchors and pip settings: how this machine reaches the registries."""
    cas = sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []
    return [*cas, *([PIP_CONF] if PIP_CONF.is_file() else [])]


def mmdebstrap_argv(root: Path) -> list[str]:
    copies = [f"--customize-hook=copy-in {path} {path.parent}" for path in _host_files()]
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        '--aptopt=APT::Install-Recommends "false"',
        f"--include={','.join(PACKAGES)}",
        '--customize-hook=mkdir -p "$1"/usr/local/share/ca-certificates',
        *copies,
        '--customize-hook=chroot "$1" update-ca-certificates --fresh',
        rootfs.SUITE,
        str(root),
        *rootfs.sources("bookworm"),  # as a Debian 12 install has them: with security updates
    ]


def commands(make_args: Sequence[str]) -> list[list[str]]:
    """What runs inside, in the tree's copy: `make deps`, then `make` with ``make_args``
    (none: deps only). No shell between: the arguments reach make as they are."""
    steps = [["make", "deps"], *([["make", *make_args]] if make_args else [])]
    return [["env", "-C", TREE, *step] for step in steps]


def tracked_files(repo: Path = REPO) -> list[str]:
    """The tree's tracked files as they are now (uncommitted edits too; deleted ones left out)."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z"], check=True, capture_output=True
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and os.path.lexists(repo / name)]


def copy_tree(repo: Path, target: Path) -> None:
    """A clean copy of the tree: its tracked files only (no venv, caches or build output)."""
    if target.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(target)], check=True)
    target.mkdir(parents=True)
    names = "\0".join(tracked_files(repo)).encode()
    pack = subprocess.Popen(
        ["tar", "-C", str(repo), "--null", "-T", "-", "-cf", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    unpack = subprocess.Popen(["tar", "-C", str(target), "-xf", "-"], stdin=pack.stdout)
    assert pack.stdin is not None and pack.stdout is not None
    pack.stdout.close()  # the unpacker holds it now
    pack.stdin.write(names)
    pack.stdin.close()
    if pack.wait() != 0 or unpack.wait() != 0:
        raise RuntimeError(f"copying the tree into {target} failed")


def build(work: Path) -> None:
    """The cache entry: the bootstrap, then `make deps` once from a copy of the tree."""
    root = work / "root"
    subprocess.run(mmdebstrap_argv(root), check=True)
    _run_inside(root, [], env={})


def entry() -> Path:
    return cache.entry("clean-debian", inputs(), build) / "root"


def _run_inside(root: Path, make_args: Sequence[str], env: dict[str, str]) -> None:
    """Each command in the chroot, timed; CalledProcessError on the first that fails."""
    copy_tree(REPO, root / TREE.lstrip("/"))
    debs = testbed.cache_dir() / "debs"  # the test bed's .deb cache: no download twice
    debs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(chroot_run.prepared(root))
        stack.enter_context(_mounted(["--bind", str(debs)], root / "var/cache/apt/archives"))
        # The tests' own overlays (test_clean_debian.py) cannot have their upper layer on this
        # overlay; a tmpfs /tmp, as Debian 13 has by default, is also the fast place for them.
        stack.enter_context(_mounted(["-t", "tmpfs", "-o", "mode=1777", "tmpfs"], root / "tmp"))
        for argv in commands(make_args):
            started = time.monotonic()
            try:
                subprocess.run(["chroot", str(root), *argv], check=True, env={**_ENV, **env})
            finally:
                step = " ".join(argv[3:])
                cache.log(f"clean chroot: {step}: {time.monotonic() - started:.0f} s")


@contextmanager
def _mounted(how: Sequence[str], target: Path) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *how, str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=True)


@contextmanager
def overlay(lower: Path) -> Iterator[Path]:
    """A writable view of ``lower`` whose writes go to a scratch directory, removed at the end."""
    scratch = Path(tempfile.mkdtemp(prefix="clean-debian-run-", dir=lower.parent.parent))
    merged = scratch / "root"
    for name in ("upper", "work", "root"):
        (scratch / name).mkdir()
    options = f"lowerdir={lower},upperdir={scratch / 'upper'},workdir={scratch / 'work'}"
    try:
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True
        )
        yield merged
    finally:
        _end_processes_inside(merged)
        cache.discard(scratch)  # unmounts whatever is still below it, then removes it


def _end_processes_inside(root: Path) -> None:
    """Whatever the run left running in the chroot (a daemon a failed test never stopped)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            inside = os.readlink(proc / "root") == str(root.resolve())
        except OSError:  # gone already, or not ours to read
            continue
        if inside:
            cache.log(f"clean chroot: ending left-over process {proc.name}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def passed_env() -> dict[str, str]:
    """The caller's settings that the suite reads: CI=true turns skips into failures, and
    PYTEST_ADDOPTS (say -rs, -x) reaches pytest as in `make unit`."""
    return {name: os.environ[name] for name in ("CI", "PYTEST_ADDOPTS") if name in os.environ}


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the mounts like any failure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("make_args", nargs="*", default=["unit"], help="make targets (unit)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        print("clean_debian: needs root and mmdebstrap (make deps)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    started = time.monotonic()
    lower = entry()
    cache.log(f"clean chroot: {lower} ready in {time.monotonic() - started:.0f} s")
    with overlay(lower) as root:
        try:
            _run_inside(root, args.make_args, passed_env())
        except subprocess.CalledProcessError as exc:
            cache.log(f"clean chroot: {' '.join(exc.cmd[5:])} failed ({exc.returncode})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
