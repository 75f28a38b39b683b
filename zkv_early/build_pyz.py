"""Build ``zkv-early.pyz``, the boot client, with the standard ``zipapp``.

What goes in is an explicit allowlist: the boot client (``zkv_early``) and the modules of the
shared core (``zkv``) it imports, nothing else (no admin CLI, no gateway, no third-party
packages: HTTPS is ``zkv_early/http11.py`` over ``ssl``). The crypto
backend is *not* in the zip because compiled extensions cannot load from one; the initramfs
hooks install Debian's python3-cryptography as real files (the zip's ``__main__.py`` puts
their folder on sys.path when python3 runs with -S, as the hooks start it).

Modules are shipped as legacy ``.pyc`` only (``compileall -b``), compiled by the *target*
interpreter so the magic number matches and nothing recompiles at boot (zipimport never uses
``__pycache__`` nor writes one). Unchecked-hash pycs, sorted entries and fixed timestamps make
the output byte-for-byte reproducible for the same interpreter.

    python3 -m zkv_early.build_pyz --output dist/zkv-early.pyz [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp
import zipfile
from pathlib import Path

INTERPRETER = "/usr/bin/python3 -IS"  # one word: a shebang passes one argument
TARGET_PYTHON = "/usr/bin/python3"
# What the boot client imports, package by package: the shared core's boot-time modules and
# the client itself. Never the admin CLI (zkv_admin), the gateway or this build's own modules.
PACKAGES: dict[str, tuple[str, ...]] = {
    "zkv": (
        "__init__",
        "crypto",
        "cryptsetup",
        "encoding",
        "errors",
        "fsutil",
        "hostkey",
        "keyload/__init__",
        "keyload/loopfile",
        "keyload/luks",
        "keyload/report",
        "keyload/zfs_native",
        "keystore",
        "openssl_evp",
        "paths",
        "protocol",
        "tpm",  # a TPM-held host key signs through it (no tpm2-tools in the image)
        "tpm_format",
        "zfs",
        "zpool",  # handover-load imports the pools on the LUKS zvols it opens
        "zvol",  # ... and finds those zvols without udev's links
    ),
    "zkv_early": (
        "__init__",
        "args",
        "boot_unlock",
        "cli",
        "cmdline",
        "config",
        "console",
        "gateway_client",
        "gateway_contender",
        "handover",
        "http11",
        "net",
        "passphrase_contender",
        "passphrase_prompt",
        "pinning",
        "race",
    ),
}
ALLOWED = frozenset(
    {"__main__.pyc", *(f"{pkg}/{m}.pyc" for pkg, mods in PACKAGES.items() for m in mods)}
)
# The zip's own __main__.py is zkv_early/__main__.py (the sys.path line lives there).
ENTRY = "__main__"
EPOCH = (1980, 1, 1, 0, 0, 0)

_COMPILE = """
import compileall, py_compile, sys
ok = compileall.compile_dir(sys.argv[1], ddir="zkv-early.pyz", quiet=2, legacy=True, optimize=0,
    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
sys.exit(0 if ok else 1)
"""


def stage(source: Path, into: Path) -> None:
    """``source``: the repository (or installed) folder that holds the packages."""
    for package, modules in PACKAGES.items():
        for module in modules:
            target = into / package / f"{module}.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / package / f"{module}.py", target)
    shutil.copyfile(source / "zkv_early" / f"{ENTRY}.py", into / "__main__.py")


def compile_tree(tree: Path, python: str) -> None:
    """Compile with the interpreter that will run the zip, then drop the sources.

    Not ``-I``: it would ignore PYTHONHASHSEED, and a fixed seed keeps the order of frozenset
    constants (``x in {...}``) stable. A bare environment and cwd keep the process isolated.
    """
    env = {"PYTHONHASHSEED": "0", "PATH": os.defpath}
    subprocess.run([python, "-s", "-c", _COMPILE, str(tree)], check=True, env=env, cwd=tree)
    for path in tree.rglob("*.py"):
        path.unlink()


def archive(tree: Path, output: Path) -> None:
    names = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    unexpected = set(names) - ALLOWED
    if unexpected or set(names) != ALLOWED:
        raise SystemExit(f"pyz contents differ from the allowlist: {sorted(set(names) ^ ALLOWED)}")
    plain = output.with_name(output.name + ".zip.tmp")
    with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, (tree / name).read_bytes())
    try:
        # A str target: zipapp then also sets the executable bits.
        zipapp.create_archive(str(plain), str(output), interpreter=INTERPRETER)
    finally:
        plain.unlink()


def build(output: Path, python: str) -> Path:
    source = Path(__file__).resolve().parent.parent
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zkv-pyz-") as tmp:
        tree = Path(tmp)
        stage(source, tree)
        compile_tree(tree, python)
        archive(tree, output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m zkv_early.build_pyz", description=__doc__)
    parser.add_argument("--output", default="dist/zkv-early.pyz", type=Path)
    default_python = TARGET_PYTHON if os.access(TARGET_PYTHON, os.X_OK) else sys.executable
    parser.add_argument(
        "--python",
        default=default_python,
        help="interpreter of the target initramfs, used to byte-compile (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    path = build(args.output, args.python)
    print(f"{path}: {path.stat().st_size} bytes, {len(ALLOWED)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
