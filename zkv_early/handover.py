"""Keys for pools imported after the initramfs (data pools) are handed to the real root.

The boot client writes them to ``/run/zkv/handover`` (folder 0700, file 0600, root only): /run
is a tmpfs that both dracut and initramfs-tools carry over into the real root, so the keys never
touch a disk; a file anywhere else is refused. In the real root, ahead of the pool import,
``zkv-open-devices.service`` runs ``zkv-early.pyz handover-open``: it opens the LUKS devices and
loop files (the data pools may sit on them), but not the LUKS devices on zvols (their pool is
not imported yet), and leaves the file in place. After the import ``zkv-load-keys.service``
runs ``handover-load``: the block devices not open yet (the zvols, a device that came late),
then ``zpool import`` of the pools on the mappings it just opened (the boot's import ran before
they existed), then the ZFS keys; then it wipes the file and removes the folder, whatever
happened. Keys for pools still not imported are dropped, and handover-load fails (exit 48,
KeysDropped: zkv-load-keys.service shows as failed) naming them; ``zkv unlock`` loads them
later with the recovery passphrase. A failed import of those pools is said on its own line
(DevicePoolsNotImported), and the other keys are still loaded.

File: one line of canonical JSON, ``{"entries": [{"keyformat", "keys": [b64...], "target"}],
"format": "zkv-handover", "version": 1}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from zkv import paths, zvol
from zkv.encoding import b64, canonical, unb64
from zkv.errors import DevicePoolsNotImported, HandoverError, ZkvError, ZpoolError
from zkv.fsutil import atomic_write, read_limited, wipe_file
from zkv.keyload import EntryResult, UnlockReport, load_entries
from zkv.keyload.luks import mapping_name
from zkv.keystore import BLOCK_KINDS, Entry, OpenKeystore, kind_of
from zkv.zfs import Zfs
from zkv.zpool import Zpool

DEFAULT_PATH = paths.HANDOVER
FORMAT = "zkv-handover"
VERSION = 1
MAX_SIZE = 1 << 20
ZVOL_WAIT_S = 30.0  # for a zvol's device after its pool's import
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs", "rootfs")


def filesystem_of(path: str, mounts: str = "/proc/self/mounts") -> str:
    """The type of the file system holding ``path`` (longest matching mount point)."""
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in _read_text(mounts).splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def write(
    path: str, store: OpenKeystore, targets: list[str], mounts: str = "/proc/self/mounts"
) -> None:
    """Hand on the keys of ``targets``; entries already in the file for others are kept."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise HandoverError(path=path, detail=exc.strerror or str(exc)) from None
    kind = filesystem_of(str(folder), mounts)
    if kind not in MEMORY_FILESYSTEMS:
        raise HandoverError(path=path, detail=f"refusing to write keys to a {kind or '?'} disk")
    entries = {e["target"]: e for e in _document(path)["entries"]} if os.path.exists(path) else {}
    for target in targets:
        entry = store.entry(target)
        keys = [b64(k) for k in store.candidates(target)]
        entries[target] = {"keyformat": entry.keyformat, "keys": keys, "target": target}
    document = {
        "entries": [entries[t] for t in sorted(entries)],
        "format": FORMAT,
        "version": VERSION,
    }
    atomic_write(path, canonical(document) + b"\n", mode=0o600)


def read(path: str) -> OpenKeystore:
    """The handed-over entries as an in-memory keystore (no slots: it is never written)."""
    doc = _document(path)
    try:
        entries = {
            e["target"]: Entry(e["target"], e["keyformat"], kind_of(e["target"]))
            for e in doc["entries"]
        }
        keys = {e["target"]: [unb64(k) for k in e["keys"]] for e in doc["entries"]}
    except ZkvError:
        raise HandoverError(path=path, detail="unreadable (an entry name)") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise HandoverError(path=path, detail=f"unreadable ({type(exc).__name__})") from None
    return OpenKeystore(host_id="", data_key=b"", slots=[], entries=entries, keys=keys)


def _document(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(read_limited(path, MAX_SIZE))
        if not isinstance(doc, dict) or (doc.get("format"), doc.get("version")) != (
            FORMAT,
            VERSION,
        ):
            raise ValueError("not a zkv handover file")
        if not isinstance(doc.get("entries"), list):
            raise ValueError("no entries")
        return doc
    except (OSError, ValueError, RecursionError) as exc:
        raise HandoverError(path=path, detail=f"unreadable ({type(exc).__name__})") from None


class LoadReport(UnlockReport):
    """``load``'s report: every entry's result, and the import of the pools on the devices it
    opened, when that failed (the keys were still loaded where they could be)."""

    def __init__(
        self,
        results: list[EntryResult] | None = None,
        not_imported: DevicePoolsNotImported | None = None,
    ) -> None:
        super().__init__(results)
        self.not_imported = not_imported


def load(path: str, zfs: Zfs, zpool: Zpool | None = None) -> LoadReport:
    """After the boot's pool import: the block devices not open yet, the pools on them, the ZFS
    keys; then wipe the file. An absent file is an empty report."""
    if not os.path.exists(path):
        return LoadReport()
    try:
        store = read(path)
        _await_zvols(store, zfs)
        devices = load_entries(store, zfs, only=_block_targets(store, zvols=True))
        not_imported = _import_pools(devices, zpool or Zpool())
        keys = load_entries(
            store, zfs, only=[e.target for e in store.entries() if e.kind not in BLOCK_KINDS]
        )
        return LoadReport(devices.results + keys.results, not_imported)
    finally:
        discard(path)


def _await_zvols(store: OpenKeystore, zfs: Zfs) -> None:
    """The zvols under LUKS entries whose pool is imported: wait (bounded) for their devices,
    which come a moment after the import. Not zfs-volume-wait.service: it waits for udev's
    links, and for 10 minutes when udev lost one (zkv/zvol.py finds the device without it)."""
    links = [e.locator for e in store.entries() if e.on_zvol]
    if not links:
        return
    try:
        present = zfs.key_infos()
    except ZkvError:
        return  # zfs cannot say: the loader reports each device as it finds it
    zvol.await_nodes([link for link in links if link[len(zvol.PREFIX) :] in present], ZVOL_WAIT_S)


def open_devices(path: str, zfs: Zfs) -> UnlockReport:
    """Before the pool import: open the handed-over LUKS devices and loop files only, and keep
    the file for ``load`` after the import (which finds them open). A garbled file is wiped."""
    if not os.path.exists(path):
        return UnlockReport()
    try:
        store = read(path)
    except HandoverError:
        discard(path)
        raise
    return load_entries(store, zfs, only=_block_targets(store, zvols=False))


def _block_targets(store: OpenKeystore, zvols: bool) -> list[str]:
    """The LUKS devices and loop files; a zvol's only after the import (``zvols``): until its
    pool is imported there is no such device."""
    return [e.target for e in store.entries() if e.kind in BLOCK_KINDS and (zvols or not e.on_zvol)]


def _import_pools(devices: UnlockReport, zpool: Zpool) -> DevicePoolsNotImported | None:
    """Import the pools on the mappings opened just now: the boot's import (zfs-import-cache,
    -scan) ran before they existed. Mappings opened by handover-open were there for it."""
    opened = {f"/dev/mapper/{mapping_name(r.target)}": r.target for r in devices.loaded}
    if not opened:
        return None
    try:
        zpool.import_from(list(opened))
    except ZpoolError as exc:
        named = ", ".join(f"{mapper} ({target})" for mapper, target in opened.items())
        return DevicePoolsNotImported(devices=named, detail=exc.message)
    return None


def discard(path: str) -> None:
    wipe_file(path)
    with contextlib.suppress(OSError):  # rmdir: only when empty, never someone else's files
        os.rmdir(os.path.dirname(os.path.abspath(path)))


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(1 << 20)
    except OSError:
        return ""
