"""Boot client cost vs ``clevis decrypt`` with tang, both on loopback (not a test; `make bench`).

    python3 -m bench.early_vs_clevis [--runs 15] [--pyz dist/zkv-early.pyz] [--write-docs]

zkv: exec of the built pyz under /usr/bin/python3 -I -S (as the hooks run it) -> every key
loaded, against the real gateway (gunicorn, auto approver: approval already given), with a
minimal /bin/sh zfs stand-in
(the recording test fake starts a Python interpreter per call, which would time the fake).
clevis: ``clevis decrypt < jwe`` against ``tangd`` behind socat. Runs are interleaved; medians.

Also measured: the pyz size, and the smallest Python runtime an initramfs needs for it: the
interpreter, the stdlib modules the unlock actually imported (source + cached .pyc), the
extension modules, python3-cryptography and cffi, and the shared libraries they link.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import lzma
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.gateway import running_gateway
from tests.harness.protocol_client import challenge
from zkv import hostkey, keystore, protocol
from zkv_early import build_pyz

PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "boot-client.md"
MARK_BEGIN, MARK_END = "<!-- bench:early_vs_clevis -->", "<!-- /bench:early_vs_clevis -->"
ROOT_KEY = bytes(range(32))

FAKE_ZFS = """#!/bin/sh
# bench-only zfs: one raw-key encryption root "rpool"; its keystatus is the state file's word
s=$(cat "$ZKV_BENCH_ZFS_STATE")
case "$1" in
list) printf 'rpool\\trpool\\t%s\\traw\\n' "$s" ;;  # -o name,encryptionroot,keystatus,keyformat
get) printf 'encryptionroot\\trpool\\nkeystatus\\t%s\\nkeyformat\\traw\\n' "$s" ;;
load-key) cat >/dev/null; echo available > "$ZKV_BENCH_ZFS_STATE" ;;
*) exit 2 ;;
esac
"""

# Runs the pyz in-process, then lists every module file it imported (for the runtime closure).
PROBE = """
import json, runpy, sys
out, pyz = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
try:
    runpy.run_path(pyz, run_name="__main__")
except SystemExit as exc:
    status = exc.code
files = set()
for module in list(sys.modules.values()):
    for attr in ("__file__", "__cached__"):
        path = getattr(module, attr, None)
        if path and not path.startswith(pyz):
            files.add(path)
json.dump({"status": status, "files": sorted(files)}, open(out, "w"))
"""


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float  # user + system of the whole process tree (servers excluded): robust to load


def timed(argv: list[str], **kwargs: Any) -> tuple[Sample, subprocess.CompletedProcess[bytes]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, **kwargs)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Sample(wall, cpu), result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- zkv side ---------------------------------------------------------------------------------


class Zkv:
    def __init__(self, root: Path, pyz: Path, gateway_url: str, repository_key: bytes) -> None:
        self.root, self.pyz = root, pyz
        store = keystore.create(repository_key, b"bench recovery words", kdf=keystore.WEAK_KDF)
        store.put(keystore.Entry("rpool", "raw"), ROOT_KEY)
        keystore.write(root / "keystore", store)
        hostkey.generate(root / "host.key")
        (root / "early.conf").write_text(
            f"[gateway]\nurl = {gateway_url}\n[host]\nkeystore = {root / 'keystore'}\n"
            f"host_key = {root / 'host.key'}\nname = bench\n"
        )
        (root / "cmdline").write_text("quiet\n")
        zfs = root / "zfs"
        zfs.write_text(FAKE_ZFS)
        zfs.chmod(0o755)
        self.state = root / "zfs-state"
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "ZKV_ZFS": str(zfs),
            "ZKV_BENCH_ZFS_STATE": str(self.state),
        }

    def args(self) -> list[str]:
        return [
            str(self.pyz),
            "--config",
            str(self.root / "early.conf"),
            "--cmdline",
            str(self.root / "cmdline"),
            "unlock",
            "--prompt",
            "none",
            "--handover",
            "/dev/shm/zkv-bench-unused/handover",
        ]

    def enroll(self, url: str, token: str) -> None:
        private = hostkey.load(self.root / "host.key")
        fresh = challenge(url).challenge
        request = protocol.EnrollRequest.create("bench", private, token, fresh)
        body = json.dumps(request.to_json()).encode()
        request = urllib.request.Request(
            url + protocol.PATH_HOSTS, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            accepted = protocol.EnrollAccepted.from_json(json.load(response))
        assert accepted.status == "approved"

    def once(self) -> Sample:
        self.state.write_text("unavailable\n")
        sample, result = timed([PYTHON, "-IS", *self.args()], env=self.env)
        if result.returncode != 0 or self.state.read_text().strip() != "available":
            raise RuntimeError(f"zkv unlock failed ({result.returncode}): {result.stderr!r}")
        return sample

    def imported_files(self) -> list[str]:
        self.state.write_text("unavailable\n")
        out = self.root / "modules.json"
        subprocess.run(
            [PYTHON, "-IS", "-c", PROBE, str(out), *self.args()],
            env=self.env,
            check=True,
            capture_output=True,
        )
        data = json.loads(out.read_text())
        if data["status"] not in (0, None):
            raise RuntimeError(f"probe run failed with status {data['status']}")
        return [f for f in data["files"] if os.path.isfile(f)]


# --- clevis side ------------------------------------------------------------------------------


@contextmanager
def tang(folder: Path) -> Iterator[str]:
    db = folder / "tang-db"
    db.mkdir()
    subprocess.run(["/usr/libexec/tangd-keygen", str(db)], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            f"EXEC:/usr/libexec/tangd {db}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "/adv", timeout=2):
                    break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(5)


def clevis_jwe(folder: Path, url: str) -> Path:
    adv = folder / "adv.jws"
    with urllib.request.urlopen(url + "/adv", timeout=5) as response:
        adv.write_bytes(response.read())
    jwe = folder / "secret.jwe"
    pin = json.dumps({"url": url, "adv": str(adv)})
    with jwe.open("wb") as out:
        subprocess.run(
            ["clevis", "encrypt", "tang", pin],
            input=ROOT_KEY.hex().encode(),
            stdout=out,
            check=True,
        )
    return jwe


def clevis_once(jwe: Path) -> Sample:
    with jwe.open("rb") as stdin:
        sample, result = timed(["clevis", "decrypt"], stdin=stdin)
    if result.returncode != 0 or result.stdout.strip() != ROOT_KEY.hex().encode():
        raise RuntimeError(f"clevis decrypt failed: {result.stderr!r}")
    return sample


# --- where zkv's time goes ----------------------------------------------------------------------

CRYPTO_IMPORT = (
    "import cryptography.hazmat.primitives.ciphers.aead, "
    "cryptography.hazmat.primitives.asymmetric.ed25519, "
    "cryptography.hazmat.primitives.asymmetric.x25519, cryptography.hazmat.primitives.kdf.hkdf"
)


def breakdown(pyz: Path, runs: int) -> list[tuple[str, float]]:
    """Median CPU of the interpreter alone, of the big imports, and of all the pyz's imports."""
    every_import = f"import sys; sys.path.insert(0, {str(pyz)!r}); import zkv_early.boot_unlock"
    cases = {
        "python3 -I -S, nothing imported": [PYTHON, "-IS", "-c", "pass"],
        "... + ssl, socket, json, subprocess": [
            PYTHON,
            "-IS",
            "-c",
            "import ssl, socket, json, subprocess",
        ],
        "... + every module of the unlock, no work": [PYTHON, "-IS", "-c", every_import],
        "python3 -I + cryptography 38 public API (not imported: openssl_evp.py)": [
            PYTHON,
            "-I",
            "-c",
            CRYPTO_IMPORT,
        ],
    }
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            cpu[name].append(timed(argv)[0].cpu)
    return [(name, statistics.median(values)) for name, values in cpu.items()]


# --- runtime closure --------------------------------------------------------------------------


def shared_libraries(elves: list[str]) -> set[str]:
    libs: set[str] = set()
    for elf in elves:
        out = subprocess.run(["ldd", elf], capture_output=True, text=True).stdout
        libs.update(m.group(1) for m in re.finditer(r"=> (/\S+)", out))
        libs.update(m.group(1) for m in re.finditer(r"^\s*(/\S+ld-linux\S*)", out, re.M))
    return libs


def package_files(*packages: str) -> list[str]:
    out = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if os.path.isfile(p) and "/doc/" not in p]


def sizes(files: list[str]) -> dict[str, int]:
    unique = sorted({os.path.realpath(f) for f in files})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in unique:
            tar.add(path, recursive=False)
    data = buffer.getvalue()
    zstd = (
        subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True).stdout
        if shutil.which("zstd")
        else b""
    )
    return {
        "files": len(unique),
        "raw": sum(os.path.getsize(p) for p in unique),
        "gzip": len(gzip.compress(data, 9)),
        "xz": len(lzma.compress(data, preset=9)),
        "zstd": len(zstd),
    }


def closure(imported: list[str]) -> dict[str, dict[str, int]]:
    interpreter = os.path.realpath(PYTHON)
    crypto_pkgs = package_files("python3-cryptography", "python3-cffi-backend")
    crypto_pkgs = [p for p in crypto_pkgs if "/dist-packages/" in p]
    stdlib = [f for f in imported if "/dist-packages/" not in f]
    crypto_used = [f for f in imported if "/dist-packages/" in f]
    extensions = [f for f in imported if f.endswith(".so")]
    crypto_so = [f for f in crypto_pkgs if f.endswith(".so")]
    libs = shared_libraries([interpreter, *extensions, *crypto_so])
    return {
        "interpreter": sizes([interpreter]),
        "stdlib imported (.py + .pyc + lib-dynload)": sizes(stdlib),
        "cryptography + cffi imported (.py + .pyc + .so)": sizes(crypto_used),
        "python3-cryptography + cffi-backend (whole)": sizes(crypto_pkgs),
        "shared libraries (incl. libc, libssl, libcrypto)": sizes(sorted(libs)),
        "total: interpreter + imported + libraries": sizes([interpreter, *imported, *sorted(libs)]),
    }


# --- report -----------------------------------------------------------------------------------


def kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def ms(values: list[float]) -> tuple[str, str, str]:
    return tuple(
        f"{v * 1000:.0f} ms" for v in (statistics.median(values), min(values), max(values))
    )  # type: ignore[return-value]


def report(
    zkv: list[Sample],
    clevis: list[Sample],
    pyz: Path,
    runtime: dict[str, dict[str, int]],
    costs: list[tuple[str, float]],
) -> str:
    rows = []
    for name, samples in (
        ("zkv-early.pyz unlock (approved, key loaded)", zkv),
        ("clevis decrypt (tang)", clevis),
    ):
        wall, cpu = [s.wall for s in samples], [s.cpu for s in samples]
        rows.append(f"| {name} | {' | '.join(ms(wall))} | {ms(cpu)[0]} |")
    ratio_wall = statistics.median(s.wall for s in zkv) / statistics.median(s.wall for s in clevis)
    ratio_cpu = statistics.median(s.cpu for s in zkv) / statistics.median(s.cpu for s in clevis)
    load = os.getloadavg()[0]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores (load average "
        f"{load:.1f} at the end), {len(zkv)} runs each, interleaved, Debian {PYTHON} "
        f"{_target_version()}.",
        "",
        "| | wall median | wall min | wall max | CPU median |",
        "|---|---:|---:|---:|---:|",
        *rows,
        f"| **ratio zkv / clevis** (target <= 1.0) | **{ratio_wall:.2f}** | | | "
        f"**{ratio_cpu:.2f}** |",
        "",
        "| CPU of | median |",
        "|---|---:|",
        *(f"| {name} | {value * 1000:.0f} ms |" for name, value in costs),
        "",
        f"zkv-early.pyz: {pyz.stat().st_size:,} bytes.",
        "",
        "| runtime part | files | raw | gzip -9 | xz -9 | zstd -19 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in runtime.items():
        lines.append(
            f"| {name} | {s['files']} | {kib(s['raw'])} | {kib(s['gzip'])} | "
            f"{kib(s['xz'])} | {kib(s['zstd'])} |"
        )
    return "\n".join(lines)


def _target_version() -> str:
    out = subprocess.run(
        [PYTHON, "-I", "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def write_docs(text: str) -> None:
    doc = DOC.read_text()
    if MARK_BEGIN not in doc:
        raise SystemExit(f"{DOC} has no {MARK_BEGIN} marker")
    head, rest = doc.split(MARK_BEGIN, 1)
    _old, tail = rest.split(MARK_END, 1)
    DOC.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pyz", type=Path, default=REPO / "dist" / "zkv-early.pyz")
    parser.add_argument("--write-docs", action="store_true", help=f"put the figures in {DOC}")
    args = parser.parse_args(argv)
    for tool in ("clevis", "socat", "/usr/libexec/tangd", PYTHON):
        if not shutil.which(tool):
            print(f"skipped: {tool} is not installed")
            return 0
    with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp:
        folder = Path(tmp)
        pyz = args.pyz if args.pyz.exists() else build_pyz.build(folder / "zkv-early.pyz", PYTHON)
        repository_key = os.urandom(32)
        with (
            running_gateway(
                folder / "gw", approver="auto", secret=repository_key.hex().encode()
            ) as gw,
            tang(folder) as tang_url,
        ):
            (folder / "host").mkdir()
            zkv = Zkv(folder / "host", pyz, gw.url, repository_key)
            zkv.enroll(gw.url, gw.invite("bench"))
            jwe = clevis_jwe(folder, tang_url)
            zkv.once(), clevis_once(jwe)  # warm caches on both sides
            zkv_times, clevis_times = [], []
            for _ in range(args.runs):
                zkv_times.append(zkv.once())
                clevis_times.append(clevis_once(jwe))
            runtime = closure(zkv.imported_files())
            costs = breakdown(pyz, args.runs)
        text = report(zkv_times, clevis_times, pyz, runtime, costs)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
