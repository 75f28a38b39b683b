"""Build time only: print the files the zkv boot client needs inside an initramfs, one a line.

Installed as /usr/lib/zkv/initramfs-files, a wrapper that runs this module.

Shared by the dracut module and the initramfs-tools hook, so both images carry the same
interpreter subset. Nothing here runs at boot.

    initramfs-files python PYZ   "SOURCE TARGET" lines: the Python interpreter, and the
                                 standard-library and python3-cryptography modules the zipapp
                                 imports (closure found by importing every module the zipapp
                                 names, in a child process with the flags used at boot). Pure
                                 Python modules go in as their bytecode only (a sourceless .pyc
                                 where the .py was): the image stays small
    initramfs-files ca CONF      the CA bundle named by [gateway] ca_file in early.conf (nothing
                                 when only pin_sha256 is set); fails when early.conf names
                                 neither, so an image never boots trusting the system's CAs
                                 by default
    initramfs-files luks KEYSTORE  the keystore's LUKS entries, one a line (its header, in the
                                 clear): the image then needs cryptsetup and dm-crypt, and its
                                 hooks hold the pool import until the client has opened them

Exit 1 with one sentence on stderr when something is missing: the hooks turn that into a failed
image build (the old image stays), never into a failed boot.
"""

from __future__ import annotations

import dis
import glob
import importlib.util
import marshal
import os
import subprocess
import sys
import types
import zipfile

from zkv import keystore, paths
from zkv.errors import ZkvError
from zkv_early import config

PYTHON = "/usr/bin/python3"

# Imported at run time by name (codecs looked up by the socket and http layers, lazy imports
# in the standard library) and so invisible to the import statements of the zipapp.
EXTRA_MODULES = (
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.utf_8_sig",
    "stringprep",
    "unicodedata",
    "_strptime",
)

# Runs in the interpreter that will run at boot, with the same flags (-I -S), and imports
# nothing of its own but the modules named: everything it loaded is what the boot needs.
# Debian's dist-packages goes on sys.path as the zipapp's entry point puts it under -S. The crypto
# module loads the OpenSSL binding it uses at import; pyca/cryptography's public API, named in
# functions as a fallback, goes in only when that binding is missing (then the boot uses it).
_PROBE = r"""
import sys
pyz, dist_packages = sys.argv[1], sys.argv[2]
sys.path.insert(0, pyz)
sys.path.append(dist_packages)
import zkv.crypto
public = zkv.crypto.public_api_needed()
for name in sys.argv[3:]:
    if name.startswith("cryptography.") and not public:
        continue
    try:
        __import__(name)
    except Exception:
        pass  # optional imports (other platforms, try/except fallbacks)
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path and not path.startswith(pyz):
        print(path)
"""


def _code_imports(code: types.CodeType) -> set[str]:
    found: set[str] = set()
    last = None
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":
            last = ins.argval
            found.add(last)
        elif ins.opname == "IMPORT_FROM" and last:
            found.add(f"{last}.{ins.argval}")
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _code_imports(const)
    return found


def module_names(pyz: str) -> list[str]:
    """Every module the zipapp holds or names in an import (its bytecode, read here)."""
    names = {"zkv", "zkv_early", "runpy", *EXTRA_MODULES}  # runpy: how python3 runs a zipapp
    with zipfile.ZipFile(pyz) as archive:
        for member in archive.namelist():
            stem, _, suffix = member.rpartition(".")
            if suffix != "pyc":
                continue
            module = stem.replace("/", ".").removesuffix(".__init__")
            if not module.endswith("__main__"):
                names.add(module)
            # Our own installed, root-owned zipapp: trusted input.
            names |= _code_imports(marshal.loads(archive.read(member)[16:]))  # noqa: S302
    # "from package import name" names a module only sometimes; failed imports are harmless.
    return sorted(names)


# Imported only inside try/except by modules the client uses (shutil, zipfile): leaving them out
# saves their libraries (libbz2, liblzma, libexpat).
LEFT_OUT = ("bz2", "_bz2", "lzma", "_lzma", "pyexpat", "xml")


def _left_out(path: str) -> bool:
    name = os.path.basename(path).split(".")[0]
    parts = path.split(os.sep)
    return name in LEFT_OUT or "xml" in parts


def fail(message: str) -> None:
    print(f"zkv initramfs-files: {message}", file=sys.stderr)
    raise SystemExit(1)


def python_files(pyz: str, python: str = PYTHON) -> list[tuple[str, str]]:
    if not os.path.isfile(pyz):
        fail(f"{pyz} is missing (make install)")
    try:
        names = module_names(pyz)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        fail(f"cannot read {pyz}: {exc}")
    done = subprocess.run(
        [python, "-I", "-S", "-c", _PROBE, os.path.abspath(pyz), paths.DIST_PACKAGES, *names],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        fail(f"probing the imports of {pyz} failed: {done.stderr.strip()[-500:]}")
    modules = done.stdout.splitlines()
    seen = {os.path.basename(os.path.dirname(f)) for f in modules}
    if "cryptography" not in seen:
        fail("python3-cryptography is not importable (apt install python3-cryptography)")
    real = os.path.realpath(python)
    files = {(real, real)}
    for path in modules:
        if _left_out(path):
            continue
        if path.endswith(".py"):
            cached = importlib.util.cache_from_source(path)
            if os.path.isfile(cached):
                files.add((cached, path[:-3] + ".pyc"))
                continue
        files.add((path, path))
    # cryptography (38) loads OpenSSL 3's legacy provider at import and fails without it.
    for provider in glob.glob("/usr/lib/*/ossl-modules/legacy.so"):
        files.add((provider, provider))
    # dracut-install resolves libraries only for executable files, and extension modules are
    # 0644: list what they link against here, for both generators.
    for src, _ in sorted(files):
        if src.endswith(".so") or ".so." in src or src == real:
            for lib in shared_libraries(src):
                files.add((lib, lib))
    missing = sorted(src for src, _ in files if not os.path.isfile(src))
    if missing:
        fail(f"missing file {missing[0]}")
    return sorted(files)


def shared_libraries(path: str) -> list[str]:
    """The libraries ``path`` loads (ldd), resolved to real paths of regular files."""
    done = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    libs = []
    for line in done.stdout.splitlines():
        parts = line.split()
        # "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" or "/lib64/ld-linux... (0x..)"
        target = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0] if parts else ""
        if target.startswith("/"):
            libs.append(target)
    return libs


def ca_file(conf: str) -> str:
    """The CA bundle early.conf names ("" for a pinned key only), read and checked by the boot
    client's own parser (so a file the client would refuse fails the image build, not the boot)."""
    try:
        with open(conf, encoding="utf-8") as handle:
            path = config.validate(config.parse(handle.read(), conf)).ca_file
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {conf}: {exc}")
    except ZkvError as exc:
        fail(exc.message)
    if path and not os.path.isfile(path):
        fail(f"the CA file {path} named in {conf} is missing")
    return path


def luks_entries(path: str) -> list[str]:
    """The LUKS entries the boot client opens in the initramfs (boot_unlock._open_devices)."""
    try:
        sealed = keystore.read(path)
    except ZkvError as exc:
        fail(exc.message)
    return [e.target for e in sealed.entries if e.kind == keystore.KIND_LUKS]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "python":
        print("\n".join(f"{src} {dst}" for src, dst in python_files(argv[1])))
    elif len(argv) == 2 and argv[0] == "ca":
        path = ca_file(argv[1])
        if path:
            print(path)
    elif len(argv) == 2 and argv[0] == "luks":
        for target in luks_entries(argv[1]):
            print(target)
    else:
        print("usage: initramfs-files python PYZ | ca CONF | luks KEYSTORE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
