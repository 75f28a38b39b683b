"""tests/vm/cache.py: what goes into an image's cache key."""

from __future__ import annotations

from pathlib import Path

from tests.vm import cache


def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    return root


def test_bytecode_caches_do_not_change_the_key(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    before = cache.tree_digest(root)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert cache.tree_digest(root) == before


def test_a_changed_source_changes_the_key(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    before = cache.tree_digest(root)
    (root / "pkg" / "mod.py").write_text("X = 2\n")
    assert cache.tree_digest(root) != before
