"""The Debian packages of `make deb`, and running apt inside a chroot of the test bed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.vm import cache, chroot_run
from zkv import __version__

REPO = Path(__file__).resolve().parents[2]
_CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}


@dataclass(frozen=True)
class Debs:
    zkv: Path
    gateway: Path


def build() -> Debs:
    """`make deb` in the repository (build/deb, dist/): the commands a person runs."""
    done = subprocess.run(["make", "-s", "deb"], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"make deb failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    debs = build_names()
    for deb in (debs.zkv, debs.gateway):
        if not deb.is_file():
            raise FileNotFoundError(f"make deb did not write {deb}")
    return debs


def build_names() -> Debs:
    """Where `make deb` writes the two packages."""
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Debs(
        REPO / "dist" / f"zkv_{__version__}_all.deb",
        REPO / "dist" / f"zkv-gateway_{__version__}_{arch}.deb",
    )


def cached_build() -> Debs:
    """``build()`` once per state of the sources: parallel test workers (and later runs) share
    the result, and nobody rewrites dist/ while another worker installs from it."""

    def make(work: Path) -> None:
        built = build()
        for deb in (built.zkv, built.gateway):
            shutil.copyfile(deb, work / deb.name)

    entry = cache.entry("debs", {"sources": _sources_digest()}, make)
    built = build_names()
    return Debs(entry / built.zkv.name, entry / built.gateway.name)


def _sources_digest() -> str:
    """Every tracked file a package could hold (the tests and CI scripts cannot), as they are
    in the working tree."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.split(b"\0")
    digest = hashlib.sha256()
    for name in sorted(n.decode() for n in names if n):
        path = REPO / name
        if name.startswith(("tests/", ".ci/")) or not path.is_file():
            continue
        digest.update(f"{name}\0{path.stat().st_mode & 0o111}\0".encode())
        digest.update(cache.file_digest(path).encode() + b"\n")
    return digest.hexdigest()


def copy_in(root: Path, deb: Path) -> str:
    """Put ``deb`` into the chroot's /tmp; return its path inside, as apt wants it (./...)."""
    shutil.copyfile(deb, root / "tmp" / deb.name)
    return f"/tmp/{deb.name}"


def run(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """One command inside ``root`` (API file systems mounted, no daemons started)."""
    with chroot_run.prepared(root):
        return subprocess.run(
            ["chroot", str(root), *argv],
            env=_CHROOT_ENV,
            capture_output=True,
            text=True,
            check=False,
        )


def apt(root: Path, *args: str) -> str:
    """``apt-get -y ARGS`` offline inside ``root``; its output, or AssertionError with it."""
    done = run(root, "apt-get", "-y", "--no-install-recommends", *args)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"apt-get {' '.join(args)} failed:\n{output}"
    return output
