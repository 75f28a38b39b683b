"""Load the keys of an open keystore: shared by ``zkv unlock``, the boot client and the handover.

Each entry names its kind; one loader module per kind does the work behind one interface
(``Loader``), so another kind (LUKS, a loop file) is one more module beside ``zfs_native``.
Nothing here raises for one bad entry; the report says what happened to each, so the caller
decides what is fatal. Key material never appears in a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from zkv.keyload.report import EntryResult, Outcome, UnlockReport
from zkv.keyload.zfs_native import ZfsNativeLoader
from zkv.keystore import OpenKeystore
from zkv.zfs import KeyInfo, Zfs

__all__ = ["EntryResult", "Loader", "Outcome", "UnlockReport", "load_entries"]


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
) -> UnlockReport:
    """Load (or with ``verify_only`` dry-run check) every entry, or the ``only`` ones.

    ``listing`` and ``confirm`` go to the ZFS loader (see ZfsNativeLoader). Raises only when
    a loader's tool cannot be run at all (ZfsError); per-entry problems are in the report.
    """
    loaders: dict[str, Loader] = {ZfsNativeLoader.kind: ZfsNativeLoader(zfs, listing, confirm)}
    entries = {e.target: e for e in store.entries()}
    wanted = sorted(entries) if only is None else list(dict.fromkeys(only))
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
