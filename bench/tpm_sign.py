"""One boot-path signature through the TPM, two ways, against a throwaway swtpm (`make bench`).

    python3 -m bench.tpm_sign [--rounds N]

* zkv's command layer (zkv/tpm.py: TPM2_ReadPublic + TPM2_Sign written to the TPM, as the
  boot client does), and
* tpm2-tools (``tpm2_sign`` as a process, as a shell hook would run it),

with the bytes each adds to an initramfs: zkv/tpm.py + zkv/tpm_format.py, against the tpm2
binary, the libtss2 libraries and the TCTI module it loads (ldd's closure, less what the image
has anyway: libc, libcrypto). swtpm answers in microseconds; a hardware TPM adds its own
ECDSA time (tens of ms) to both alike, so the difference between the rows is what the choice
costs. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness.swtpm import running_swtpm
from zkv import hostkey, tpm, tpm_tools

IN_IMAGE_ANYWAY = ("libc.so", "libcrypto.so", "ld-linux", "linux-vdso", "libm.so", "libz.so")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work, running_swtpm(Path(work)) as chip:
        with tpm_tools.tools(chip.tcti) as tools:
            held = tools.host_key()
        key = hostkey.TpmKey(tpm.HOST_KEY_HANDLE, held.point, str(chip.socket))
        ours = _timed(args.rounds, lambda: key.sign(b"zkv-v1 unlock-request\n{}"))
        theirs = _timed(args.rounds, lambda: _tpm2_sign(chip.tcti, Path(work)))
    print("| way | median signature | initramfs bytes added |")
    print("|---|---|---|")
    print(f"| zkv/tpm.py command layer | {ours * 1000:.2f} ms | {_python_bytes():,} |")
    print(f"| tpm2_sign (tpm2-tools) | {theirs * 1000:.2f} ms | {_tools_bytes():,} |")
    return 0


def _timed(rounds: int, step: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tpm2_sign(tcti: str, work: Path) -> None:
    digest = work / "digest"
    digest.write_bytes(tpm.digest(b"zkv-v1 unlock-request\n{}"))
    subprocess.run(
        [
            "tpm2_sign",
            "-c",
            hex(tpm.HOST_KEY_HANDLE),
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-d",
            "-o",
            str(work / "sig"),
            str(digest),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "TPM2TOOLS_TCTI": tcti},
    )


def _python_bytes() -> int:
    folder = Path(tpm.__file__).parent
    return sum((folder / name).stat().st_size for name in ("tpm.py", "tpm_format.py"))


def _tools_bytes() -> int:
    binary = Path("/usr/bin/tpm2")
    libs = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    paths = {line.split("=>")[1].split()[0] for line in libs.splitlines() if "=> /" in line}
    tcti = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libtss2-tcti-device.so*"))
    kept = [Path(p) for p in paths if not any(mark in p for mark in IN_IMAGE_ANYWAY)]
    return sum(p.stat().st_size for p in [binary, *kept, *tcti[-1:]])


if __name__ == "__main__":
    raise SystemExit(main())
