"""What happened to each keystore entry when its key was loaded: shared by every loader."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Outcome(StrEnum):
    LOADED = "loaded"  # the key is now loaded
    VERIFIED = "verified"  # dry run (zfs load-key -n) accepted a key
    ALREADY_LOADED = "already-loaded"  # nothing to do
    ABSENT = "absent"  # not an encryption root of an imported pool right now
    NO_ENTRY = "no-entry"  # asked for by name, but the keystore has no entry for it
    FAILED = "failed"  # every candidate key was refused, or loading failed otherwise


_GOOD = (Outcome.LOADED, Outcome.VERIFIED, Outcome.ALREADY_LOADED)


class EntryResult(NamedTuple):
    target: str
    outcome: Outcome
    detail: str = ""
    candidate: int | None = None  # the accepted key's index in the keystore (1 = staged)

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
