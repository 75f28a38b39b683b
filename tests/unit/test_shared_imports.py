"""The shared modules (imported by the initramfs client and by the gateway) stay small:
standard library plus `cryptography`, and only crypto.py may import `cryptography`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zkv_early"
SHARED = ["crypto", "encoding", "errors", "fsutil", "hostkey", "keystore", "protocol", "zfs"]


def imported_roots(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", SHARED)
def test_shared_module_imports_only_stdlib(module: str) -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    if module == "crypto":
        allowed.add("cryptography")
    assert imported_roots(module) <= allowed
