"""The layout's rules, read from the import statements of every module (ast, not imports):

- the shared core (zkv/) imports only the standard library, and only crypto.py and the OpenSSL
  fast path may reach pyca/cryptography (the others go through crypto.py);
- the core never imports a program (boot client, admin CLI, gateway);
- the gateway never imports the boot client or the admin CLI; the boot client never the admin
  CLI or the gateway;
- the zipapp holds the boot client and core modules only: no admin code, nothing of the gateway;
- bench/ and the test-bed libraries (tests/vm, tests/harness) import no test module.
"""

from __future__ import annotations

import ast
import re
import sys
import zipfile
from pathlib import Path

import pytest

from zkv_early import build_pyz

REPO = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
PROGRAMS = {"zkv_early", "zkv_admin", "gateway"}


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Absolute names imported by a module, relative imports resolved against its package."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.add(node.module)
    return names


def roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported(path)}


@pytest.mark.parametrize("path", modules("zkv"), ids=lambda p: p.relative_to(REPO).as_posix())
def test_core_imports_stdlib_and_itself_only(path: Path) -> None:
    allowed = STDLIB | {"zkv"}
    if path.name in ("crypto.py", "openssl_evp.py"):
        allowed.add("cryptography")
    assert roots(path) <= allowed


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("gateway", {"zkv_early", "zkv_admin"}),
        ("zkv_early", {"zkv_admin", "gateway"}),
        ("zkv_admin", {"gateway"}),
    ],
)
def test_programs_import_the_core_not_each_other(package: str, forbidden: set[str]) -> None:
    offenders = {
        path.relative_to(REPO).as_posix(): sorted(roots(path) & forbidden)
        for path in modules(package)
        if roots(path) & forbidden
    }
    assert offenders == {}


@pytest.mark.parametrize("folder", ["bench", "tests/vm", "tests/harness"])
def test_benchmarks_and_libraries_import_libraries_not_test_modules(folder: str) -> None:
    libraries = ("tests.vm", "tests.harness")
    offenders = {
        path.relative_to(REPO).as_posix(): sorted(bad)
        for path in modules(folder)
        if (
            bad := {
                name
                for name in imported(path)
                if name.split(".")[0] == "tests" and not name.startswith(libraries)
            }
        )
    }
    assert offenders == {}


def test_gateway_uses_the_core() -> None:
    """The wire protocol the gateway speaks is the one the client speaks: the core's."""
    assert any("zkv.protocol" in imported(p) for p in modules("gateway"))


def test_zipapp_holds_no_admin_or_gateway_code(tmp_path: Path) -> None:
    pyz = build_pyz.build(tmp_path / "zkv-early.pyz", sys.executable)
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"__main__.pyc", "zkv", "zkv_early"}
    assert not [n for n in names if "admin" in n or "gateway/" in n.removeprefix("zkv_early/")]
    assert "zkv_early/build_pyz.pyc" not in names and "zkv_early/initramfs_files.pyc" not in names


def test_zipapp_modules_import_nothing_outside_it() -> None:
    """Everything the packed modules import from zkv or zkv_early is packed too."""
    packed = {
        f"{pkg}.{m.replace('/', '.')}".removesuffix(".__init__")
        for pkg, mods in build_pyz.PACKAGES.items()
        for m in mods
    }
    for name in packed:
        path = REPO / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / name.replace(".", "/") / "__init__.py"
        for dep in imported(path):
            if dep.split(".")[0] in ("zkv", "zkv_early"):
                assert dep in packed or dep.rpartition(".")[0] in packed, (name, dep)


def test_paths_the_shell_and_the_units_spell_out_are_the_cores() -> None:
    """Unit files cannot source zkv-lib.sh and each script needs the lib's own path to source
    it: what they write must be what zkv/paths.py says (the gateway's /etc/zkv is its own)."""
    from zkv import paths

    known = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str)}
    pattern = re.compile(r"(/(?:usr/lib|run|boot)/zkv(?:/[\w.-]+)?)")
    files = [
        *sorted((REPO / "systemd").rglob("*.service")),
        *sorted((REPO / "systemd").rglob("*.conf")),
        *sorted((REPO / "dracut").rglob("*")),
        *sorted((REPO / "initramfs-tools").rglob("*")),
    ]
    for path in (p for p in files if p.is_file()):
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            for found in pattern.findall(line):
                assert found in known, f"{path.relative_to(REPO)}: {found} is not in zkv/paths.py"
