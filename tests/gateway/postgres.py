"""A throwaway PostgreSQL cluster for the test session (tests/harness/postgres.py), and the
database URL parameter. Each test gets a fresh database.

Tests opt in with ``@on_both_databases``; the ``database_url`` fixture is sqlite otherwise.
Without PostgreSQL a postgres case skips, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import postgres as harness_pg
from tests.harness.postgres import Cluster

DATABASES = ["sqlite", "postgres"]
on_both_databases = pytest.mark.parametrize("database_url", DATABASES, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    bindir = harness_pg.bindir()
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
