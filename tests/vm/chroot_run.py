"""Running guest scripts inside a chroot with the API file systems and DNS they need."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

# Keeps maintainer scripts from starting daemons on the host.
_POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def run(
    root: Path, script: Path, args: Sequence[str] = (), env: dict[str, str] | None = None
) -> None:
    """Run ``script`` with /bin/sh inside ``root``; raise CalledProcessError on failure."""
    inside = Path("/tmp") / f"zkv-e2e-{script.name}"
    shutil.copyfile(script, root / inside.relative_to("/"))
    environment = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        **(env or {}),
    }
    try:
        with prepared(root):
            subprocess.run(
                ["chroot", str(root), "/bin/sh", "-eu", str(inside), *args],
                check=True,
                env=environment,
            )
    finally:
        (root / inside.relative_to("/")).unlink(missing_ok=True)


@contextmanager
def prepared(root: Path) -> Iterator[None]:
    with ExitStack() as stack:
        for source, target, options in (
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--rbind", "--make-rslave"]),
            ("tmpfs", "run", ["-t", "tmpfs"]),
        ):
            mountpoint = root / target
            subprocess.run(["mount", *options, source, str(mountpoint)], check=True)
            stack.callback(_umount, mountpoint)
        stack.enter_context(_replaced(root / "usr/sbin/policy-rc.d", _POLICY_RC_D, 0o755))
        stack.enter_context(_replaced(root / "etc/resolv.conf", _host_resolv_conf(), 0o644))
        yield


def _umount(mountpoint: Path) -> None:
    subprocess.run(["umount", "--recursive", "--lazy", str(mountpoint)], check=True)


def _host_resolv_conf() -> str:
    return Path("/etc/resolv.conf").read_text()


@contextmanager
def _replaced(path: Path, content: str, mode: int) -> Iterator[None]:
    """Put ``content`` at ``path`` for the duration, then restore what was there."""
    saved = path.with_name(path.name + ".zkv-e2e-saved")
    had_original = os.path.lexists(path)
    if had_original:
        os.replace(path, saved)
    path.write_text(content)
    path.chmod(mode)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        if had_original:
            os.replace(saved, path)
