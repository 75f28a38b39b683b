"""The one place zkv talks to ``zpool``: creating a pool (``zkv filepool create``). No key ever
goes to zpool: its vdevs are opened dm-crypt mappings. Failures become ZpoolError with zpool's
first line."""

from __future__ import annotations

import os
import re
import subprocess

from zkv.errors import InputError, ZpoolError
from zkv.fsutil import which

ENV_BINARY = "ZKV_ZPOOL"
# zpool(8): a pool name starts with a letter and holds letters, digits and "_-.:"; the names
# zpool reserves (mirror, raidz..., spare, log, c[0-9]...) are refused by zpool itself.
_POOL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,254}")
LAYOUTS = ("stripe", "mirror", "raidz1", "raidz2", "raidz3")


def check_pool_name(name: str) -> str:
    if _POOL_RE.fullmatch(name) is None:
        raise InputError(f"not a pool name: {name[:80]!r} (a letter, then letters, digits, _-.:)")
    return name


class Zpool:
    def __init__(self, binary: str | None = None, timeout: float = 120.0) -> None:
        explicit = binary or os.environ.get(ENV_BINARY)
        self.binary = explicit or which("zpool") or "/usr/sbin/zpool"
        self.timeout = timeout

    def create(self, name: str, layout: str, devices: list[str]) -> None:
        """``zpool create NAME [LAYOUT] DEVICE...`` with the default cache file, so that the
        boot's zfs-import-cache.service imports it (after zkv-open-devices.service)."""
        if layout not in LAYOUTS:
            raise InputError(f"not a pool layout: {layout!r}")
        vdev = [] if layout == "stripe" else [layout]
        argv = [self.binary, "create", check_pool_name(name), *vdev, *devices]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (FileNotFoundError, PermissionError):
            raise ZpoolError(
                detail=f"{self.binary} cannot be run (install zfsutils-linux)"
            ) from None
        except subprocess.TimeoutExpired:
            raise ZpoolError(detail=f"'zpool create' took over {self.timeout:g} s") from None
        if result.returncode != 0:
            text = result.stderr.decode("utf-8", "replace").strip()
            first = text.splitlines()[0][:200] if text else "failed without a message"
            raise ZpoolError(detail=f"create {name}: {first}")
