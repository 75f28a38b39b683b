"""The zkv .deb depends on every Debian package its Python code imports: on a stock host only
what debian/control pulls in is there (`zkv enroll` imported requests, which the package did
not depend on, and was an "internal error" in the stock guest)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("zkv", "zkv_admin", "zkv_early")  # what the zkv .deb installs
# zkv enroll speaks HTTPS with urllib: python3-requests is not among them on purpose.
DEBIAN_NAME = {"cryptography": "python3-cryptography"}


def third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in (*PACKAGES, "__future__"):
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def zkv_depends() -> set[str]:
    stanzas = (ROOT / "debian" / "control").read_text().split("\n\n")
    (stanza,) = [s for s in stanzas if re.search(r"^Package: zkv$", s, re.M)]
    field = re.search(r"^Depends:(.*(?:\n[ \t].*)*)", stanza, re.M)
    assert field, "the zkv package has no Depends"
    return {alt.strip().split()[0] for dep in field.group(1).split(",") for alt in dep.split("|")
            if alt.strip()}  # fmt: skip


def test_every_third_party_import_is_a_dependency_of_the_zkv_package() -> None:
    imports = third_party_imports()
    assert "cryptography" in imports  # the scan sees imports at all
    unknown = sorted(set(imports) - set(DEBIAN_NAME))
    assert not unknown, f"imports with no Debian package named here: {unknown}"
    depends = zkv_depends()
    missing = {DEBIAN_NAME[m]: sorted(imports[m]) for m in imports if DEBIAN_NAME[m] not in depends}
    assert not missing, f"debian/control's zkv lacks {missing}"
