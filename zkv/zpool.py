"""The one place zkv talks to ``zpool``: creating a pool (``zkv filepool create``) and, at boot,
importing the pools on LUKS mappings opened after the boot's own import (``handover-load``).
No key ever goes to zpool: its vdevs are opened dm-crypt mappings. Failures become ZpoolError
with zpool's first line. Standard library only: the boot client runs it."""

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
# What `zpool import -a` says when the devices hold no pool it may import (all imported
# already, or none there): nothing to do, not a failure (some versions exit 1 with it).
NOTHING_TO_IMPORT = "no pools available to import"


def check_pool_name(name: str) -> str:
    if _POOL_RE.fullmatch(name) is None:
        raise InputError(f"not a pool name: {name[:80]!r} (a letter, then letters, digits, _-.:)")
    return name


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else "failed without a message"


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
        text = self._run(["create", check_pool_name(name), *vdev, *devices])
        if text is not None:
            raise ZpoolError(detail=f"create {name}: {_first_line(text)}")

    def import_from(self, devices: list[str]) -> None:
        """``zpool import -N -a -o cachefile=none -d DEVICE...``: every pool on these devices,
        nothing mounted yet (zfs-mount.service does that, after the keys). No cache file: the
        devices (a zvol's mapping) exist only once zkv opened them, so the boot's
        zfs-import-cache.service must not look for the pool next time."""
        if not devices:  # without -d, zpool would import every pool it finds anywhere in /dev
            return
        searched = [word for device in devices for word in ("-d", device)]
        text = self._run(["import", "-N", "-a", "-o", "cachefile=none", *searched])
        if text is not None and NOTHING_TO_IMPORT not in text:
            raise ZpoolError(detail=f"import: {_first_line(text)}")

    def _run(self, args: list[str]) -> str | None:
        """Run ``zpool ARGS``: None on success, else what it said on stderr."""
        try:
            result = subprocess.run(
                [self.binary, *args],
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
            raise ZpoolError(detail=f"'zpool {args[0]}' took over {self.timeout:g} s") from None
        if result.returncode == 0:
            return None
        return result.stderr.decode("utf-8", "replace").strip()
