"""The gateway's container image (deploy/Dockerfile) built and run with rootful podman.

No registry is reachable: the base is an mmdebstrap bookworm tarball (python3, python3-venv)
imported into podman, cached in the test bed's cache. pip inside the build reaches PyPI with
the host's trust store and pip settings bind-mounted (the build never copies them in).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.vm import cache, rootfs

REPO = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/zkv-base:bookworm"
IMAGE_TAG = "localhost/zkv-gateway:e2e"
_BASE_PACKAGES = ("python3", "python3-venv", "passwd")
# This machine's sandbox: crun refuses its hybrid cgroup layout, and podman's default rlimits
# are above the host's hard limits (EPERM in the container's init), so runc and lower ones.
RUN_OPTIONS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
PODMAN = ("podman", "--runtime", "runc")


def base_tarball() -> Path:
    inputs: cache.Inputs = {"layer": "container-base", "packages": list(_BASE_PACKAGES)}

    def build(work: Path) -> None:
        subprocess.run(
            [
                "mmdebstrap",
                "--mode=root",
                "--variant=minbase",
                f"--include={','.join(_BASE_PACKAGES)}",
                '--aptopt=APT::Install-Recommends "false"',
                rootfs.SUITE,
                str(work / "base.tar"),
                rootfs.MIRROR,
            ],
            check=True,
        )

    return cache.entry("container-base", inputs, build) / "base.tar"


def build_image() -> str:
    subprocess.run([*PODMAN, "import", str(base_tarball()), BASE_TAG], check=True)
    mounts = ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    if Path("/etc/pip.conf").is_file():
        mounts += ["-v", "/etc/pip.conf:/etc/pip.conf:ro"]
    subprocess.run(
        [
            *PODMAN,
            "build",
            "--isolation=chroot",  # RUN steps without an OCI runtime (see RUN_OPTIONS)
            *mounts,
            "--build-arg",
            f"BASE={BASE_TAG}",
            "-f",
            str(REPO / "deploy/Dockerfile"),
            "-t",
            IMAGE_TAG,
            str(REPO),
        ],
        check=True,
    )
    return IMAGE_TAG


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=False)
