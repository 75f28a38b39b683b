"""A throwaway PostgreSQL cluster (Debian's postgresql package: initdb + pg_ctl), for the gateway
tests (tests/gateway/postgres.py) and the load benchmark (bench/gateway_load.py).

The cluster lives in a private temp directory and listens on a unix socket there only (no TCP
at all); it runs as the `postgres` user when we run as root, since initdb refuses root.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


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

    def lock_waiters(self) -> int:
        """Sessions waiting for a lock now (row, key or advisory: store.py's write path)."""
        import psycopg

        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        with psycopg.connect(host=str(self.directory), user="postgres", autocommit=True) as c:
            row = c.execute(query).fetchone()
        return int(row[0]) if row else 0

    def remove(self) -> None:
        self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.directory / "data"))
        shutil.rmtree(self.directory)


def bindir() -> Path | None:
    """The newest installed server, or None (no server, or no psycopg to talk to it)."""
    initdbs = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found = sorted(initdbs, key=lambda p: int(p.split("/")[4]))
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None
    return Path(found[-1]).parent if found else None
