"""A throwaway PostgreSQL cluster for the test session, and the database URL parameter.

The cluster (initdb + pg_ctl from Debian's postgresql package) lives in a private temp
directory and listens on a unix socket there only (no TCP at all); it runs as the `postgres`
user when the tests run as root, since initdb refuses root. Each test gets a fresh database.

Tests opt in with ``@on_both_databases``; the ``database_url`` fixture is sqlite otherwise.
Without PostgreSQL a postgres case skips, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASES = ["sqlite", "postgres"]
on_both_databases = pytest.mark.parametrize("database_url", DATABASES, indirect=True)


class Cluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.directory = Path(tempfile.mkdtemp(prefix="zkv-pg-"))
        self._names = itertools.count()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        data, options = self.directory / "data", f"-c listen_addresses='' -k {self.directory}"
        # Durability is pointless for a cluster deleted at the end; without it tests run faster.
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "start", "-w", "-D", str(data), "-l", log, "-o", options)

    def _run(self, tool: str, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        cmd = [*as_postgres, str(self.bindir / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def new_database(self) -> str:
        import psycopg

        name = f"zkv_{next(self._names)}"
        with psycopg.connect(host=str(self.directory), user="postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")  # a name we made, not input
        return f"postgresql+psycopg://postgres@/{name}?host={self.directory}"

    def remove(self) -> None:
        self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.directory / "data"))
        shutil.rmtree(self.directory)


def _bindir() -> Path | None:
    """The newest installed server, or None (then the caller skips or, under CI, fails)."""
    initdbs = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found = sorted(initdbs, key=lambda p: int(p.split("/")[4]))
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None:
        why = "PostgreSQL server or psycopg missing (apt-get install postgresql; pip psycopg)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must test the Postgres backend", pytrace=False)
        pytest.skip(why)
    cluster = Cluster(bindir)
    try:
        yield cluster
    finally:
        cluster.remove()


def url_for(kind: str, directory: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of this kind; postgres starts the cluster on first use."""
    if kind == "sqlite":
        return f"sqlite:///{directory / 'gateway.sqlite'}"
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(getattr(request, "param", "sqlite"), tmp_path, request)
