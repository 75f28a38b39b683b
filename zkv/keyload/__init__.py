"""Load the keys of an open keystore: shared by ``zkv unlock``, the boot client and the handover.

Each entry names its kind; one loader module per kind does the work behind one interface
(``Loader``): ``zfs_native``, ``luks``, ``loopfile``. ``ORDER`` is the one place that says which
kinds go first: block devices (loop files, then LUKS devices) before ZFS keys, because pools
may sit on them.
Nothing here raises for one bad entry; the report says what happened to each, so the caller
decides what is fatal. Key material never appears in a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from zkv import keystore
from zkv.cryptsetup import Cryptsetup
from zkv.keyload.loopfile import LoopfileLoader
from zkv.keyload.luks import LuksLoader
from zkv.keyload.report import EntryResult, Outcome, UnlockReport
from zkv.keyload.zfs_native import ZfsNativeLoader
from zkv.keystore import OpenKeystore
from zkv.zfs import KeyInfo, Zfs

__all__ = ["ORDER", "EntryResult", "Loader", "Outcome", "UnlockReport", "load_entries"]

# A loop file's device is opened as LUKS, a pool may sit on either: they come first.
ORDER = (keystore.KIND_LOOPFILE, keystore.KIND_LUKS, keystore.KIND_ZFS)


class Loader(Protocol):
    kind: str

    def load(self, target: str, candidates: list[bytes], verify_only: bool) -> EntryResult:
        """Load (or dry-run check) the first candidate key the target accepts."""
        ...


def load_entries(
    store: OpenKeystore,
    zfs: Zfs,
    only: list[str] | None = None,
    *,
    verify_only: bool = False,
    listing: Mapping[str, KeyInfo] | None = None,
    confirm: bool = True,
    crypt: Cryptsetup | None = None,
) -> UnlockReport:
    """Load (or with ``verify_only`` dry-run check) every entry, or the ``only`` ones.

    ``listing`` and ``confirm`` go to the ZFS loader (see ZfsNativeLoader). Raises only when
    zfs cannot be run at all (ZfsError); per-entry problems are in the report. Entries are
    loaded in ``ORDER`` of their kinds, by name within a kind.
    """
    crypt = crypt or Cryptsetup()
    loaders: dict[str, Loader] = {
        ZfsNativeLoader.kind: ZfsNativeLoader(zfs, listing, confirm),
        LuksLoader.kind: LuksLoader(crypt),
        LoopfileLoader.kind: LoopfileLoader(crypt),
    }
    entries = {e.target: e for e in store.entries()}
    wanted = sorted(entries) if only is None else list(dict.fromkeys(only))
    wanted.sort(key=lambda t: ORDER.index(entries[t].kind) if t in entries else len(ORDER))
    report = UnlockReport()
    for target in wanted:
        entry = entries.get(target)
        loader = loaders.get(entry.kind) if entry is not None else None
        if entry is None:
            report.results.append(EntryResult(target, Outcome.NO_ENTRY, "not in the keystore"))
        elif loader is None:
            detail = f"no loader for entries of kind {entry.kind!r}"
            report.results.append(EntryResult(target, Outcome.FAILED, detail))
        else:
            report.results.append(loader.load(target, store.candidates(target), verify_only))
    return report
