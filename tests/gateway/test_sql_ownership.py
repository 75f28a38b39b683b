"""SQL lives only in the gateway's data-access modules; everything else calls them.

Read from the source with ast, so a query written in service.py (or any new module) fails here.
The rule: only store.py, audit.py, ratelimit.py, owner_store.py and boot_store.py import
sqlalchemy, name a table or run statements on a connection. config.py may import the two
names it needs to check the database URL when the settings load; it builds no query.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Table

import gateway
from gateway import boot_store, owner_store, store

GATEWAY = Path(gateway.__file__).parent
DATA_ACCESS = {"store", "audit", "ratelimit", "owner_store", "boot_store"}
ALLOWED = {"config": {"sqlalchemy.engine.make_url", "sqlalchemy.exc.ArgumentError"}}
TABLES = {
    name
    for module in (store, owner_store, boot_store)
    for name, value in vars(module).items()
    if isinstance(value, Table)
}
# Connection (and DB-API) methods that run SQL, whatever built it: text, a string, a construct.
RUNS_SQL = {"execute", "exec_driver_sql", "executemany", "executescript", "scalar", "scalars"}


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import, relative to the package: `from .store import x`
    and `from gateway.store import x` both give `store.x`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 0 and base.startswith("gateway"):
                base = base.removeprefix("gateway").lstrip(".")
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name


def violations(module: str, source: str) -> list[str]:
    if module in DATA_ACCESS:
        return []
    tree = ast.parse(source)
    found = [
        f"{module}:{line} imports {name}"
        for line, name in _imported(tree)
        if (
            (name == "sqlalchemy" or name.startswith("sqlalchemy."))
            and name not in ALLOWED.get(module, set())
        )
        or name in {f"store.{table}" for table in TABLES}
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "store" and node.attr in TABLES:
                found.append(f"{module}:{node.lineno} names the table store.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in RUNS_SQL:
                found.append(f"{module}:{node.lineno} runs SQL with .{node.func.attr}()")
    return found


def _modules() -> dict[str, str]:
    return {
        path.relative_to(GATEWAY).with_suffix("").as_posix().replace("/", "."): path.read_text()
        for path in GATEWAY.rglob("*.py")
    }


def test_only_the_data_access_modules_hold_sql() -> None:
    modules = _modules()
    assert DATA_ACCESS | {"service", "api", "cli", "config"} <= modules.keys()
    assert {"hosts", "requests", "audit_log"} <= TABLES
    assert [v for name, source in modules.items() for v in violations(name, source)] == []


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import select",
        "import sqlalchemy as sa",
        "from sqlalchemy.engine import make_url",  # allowed in config.py only
        "from .store import requests",
        "from gateway.store import hosts",
        "from . import store\nstore.nonces.delete()",
        "conn.execute(text('SELECT 1'))",
        "conn.exec_driver_sql('DELETE FROM nonces')",
    ],
)
def test_a_query_outside_the_data_access_modules_is_caught(source: str) -> None:
    assert violations("service", source)
    assert violations("store", source) == []


def test_config_may_check_the_database_url() -> None:
    assert violations("config", "from sqlalchemy.engine import make_url") == []
    assert violations("config", "from sqlalchemy import text")
