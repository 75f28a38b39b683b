"""Load the keys of an open keystore into ZFS: shared by ``zkv unlock`` and the boot client.

For every entry whose dataset is an imported encryption root, try its candidate keys in order
(the current key, then a key staged by an interrupted rotation). A key that is already loaded
is success, not an error: another unit (or a person at the console) may have been faster.
Nothing here raises for one bad entry; the report says what happened to each, so the caller
decides what is fatal. Key material never appears in a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import NamedTuple

from .errors import (
    ZfsDatasetNotFound,
    ZfsError,
    ZfsKeyAlreadyLoaded,
    ZfsKeyRejected,
    ZfsNotEncryptionRoot,
    ZfsUnavailable,
)
from .keystore import OpenKeystore
from .zfs import KeyInfo, Zfs, root_status


class Outcome(StrEnum):
    LOADED = "loaded"  # the key is now loaded
    VERIFIED = "verified"  # dry run (zfs load-key -n) accepted a key
    ALREADY_LOADED = "already-loaded"  # nothing to do
    ABSENT = "absent"  # not an encryption root of an imported pool right now
    NO_ENTRY = "no-entry"  # asked for by name, but the keystore has no entry for it
    FAILED = "failed"  # zfs refused every candidate key, or failed otherwise


_GOOD = (Outcome.LOADED, Outcome.VERIFIED, Outcome.ALREADY_LOADED)


class EntryResult(NamedTuple):
    target: str
    outcome: Outcome
    detail: str = ""
    candidate: int | None = None  # index of the candidate key zfs accepted (1 = staged key)

    @property
    def ok(self) -> bool:
        return self.outcome in _GOOD


class UnlockReport:
    def __init__(self, results: list[EntryResult] | None = None) -> None:
        self.results = results if results is not None else []

    @property
    def ok(self) -> bool:
        """True when no entry failed; absent datasets (pool not imported) do not count."""
        return not self.failed

    @property
    def failed(self) -> list[EntryResult]:
        return [r for r in self.results if r.outcome in (Outcome.FAILED, Outcome.NO_ENTRY)]

    @property
    def loaded(self) -> list[EntryResult]:
        return [r for r in self.results if r.outcome is Outcome.LOADED]

    def by_target(self) -> dict[str, EntryResult]:
        return {r.target: r for r in self.results}


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

    ``listing``: a fresh Zfs.key_infos() (the boot client's), so zfs is not asked again.
    ``confirm``: read each key's status back after zfs loaded it (Zfs.load_key).
    Raises only when zfs itself cannot be run or listed (ZfsError); per-entry problems are
    reported in the returned UnlockReport.
    """
    roots = dict(zfs.encryption_roots()) if listing is None else root_status(listing)
    known = {e.target for e in store.entries()}
    wanted = sorted(known) if only is None else list(dict.fromkeys(only))
    report = UnlockReport()
    for target in wanted:
        if target not in known:
            report.results.append(EntryResult(target, Outcome.NO_ENTRY, "not in the keystore"))
        elif target not in roots:
            detail = "not an encryption root of an imported pool"
            report.results.append(EntryResult(target, Outcome.ABSENT, detail))
        elif roots[target] == "available" and not verify_only:
            report.results.append(EntryResult(target, Outcome.ALREADY_LOADED))
        else:
            info = listing.get(target) if listing is not None else None
            report.results.append(_try_candidates(store, zfs, target, verify_only, info, confirm))
    return report


def _try_candidates(
    store: OpenKeystore,
    zfs: Zfs,
    target: str,
    verify_only: bool,
    info: KeyInfo | None,
    confirm: bool,
) -> EntryResult:
    success = Outcome.VERIFIED if verify_only else Outcome.LOADED
    detail = "zfs rejected every key the keystore holds for it"
    for index, key in enumerate(store.candidates(target)):
        try:
            zfs.load_key(target, key, verify_only=verify_only, info=info, confirm=confirm)
        except ZfsKeyAlreadyLoaded:
            return EntryResult(target, Outcome.ALREADY_LOADED)
        except (ZfsDatasetNotFound, ZfsNotEncryptionRoot, ZfsUnavailable) as exc:
            return EntryResult(target, Outcome.FAILED, exc.message)
        except ZfsKeyRejected:
            continue
        except ZfsError as exc:
            # e.g. "Raw key too short": a staged key in the format a rotation moves to
            detail = exc.message
            continue
        return EntryResult(target, success, candidate=index)
    return EntryResult(target, Outcome.FAILED, detail)
