"""Loader for entries of kind ``zfs``: ZFS native encryption, one key per encryption root.

Candidates are tried newest first: the key staged by a rotation in flight (the keystore's last
candidate, the newer epoch), then the current one. A power cut between ``zfs change-key`` and
the keystore's commit leaves ZFS with the staged key, so it is the likely one; before
change-key the current one works (zkv_admin/rotation.py). A key that is already loaded is
success, not an error: another unit (or a person at the console) may have been faster.
"""

from __future__ import annotations

from collections.abc import Mapping

from zkv import errors
from zkv.keyload.report import EntryResult, Outcome
from zkv.zfs import KeyInfo, Zfs, root_status

KIND = "zfs"
# Failures that no other candidate key could mend.
_NO_KEY_WILL_DO = (errors.ZfsDatasetNotFound, errors.ZfsNotEncryptionRoot, errors.ZfsUnavailable)


class ZfsNativeLoader:
    """``listing``: a fresh Zfs.key_infos() (the boot client's), so zfs is not asked again.
    ``confirm``: read each key's status back after zfs loaded it (Zfs.load_key)."""

    kind = KIND

    def __init__(
        self, zfs: Zfs, listing: Mapping[str, KeyInfo] | None = None, confirm: bool = True
    ) -> None:
        self._zfs = zfs
        self._listing = listing
        self._confirm = confirm
        self._roots: dict[str, str] | None = None

    def _key_status(self) -> dict[str, str]:
        """Encryption root -> keystatus, listed once (raises ZfsError if zfs cannot run)."""
        if self._roots is None:
            listing = self._listing
            self._roots = (
                dict(self._zfs.encryption_roots()) if listing is None else root_status(listing)
            )
        return self._roots

    def load(self, target: str, candidates: list[bytes], verify_only: bool) -> EntryResult:
        roots = self._key_status()
        if target not in roots:
            return EntryResult(target, Outcome.ABSENT, "not an encryption root of an imported pool")
        if roots[target] == "available" and not verify_only:
            return EntryResult(target, Outcome.ALREADY_LOADED)
        info = self._listing.get(target) if self._listing is not None else None
        success = Outcome.VERIFIED if verify_only else Outcome.LOADED
        detail = "zfs rejected every key the keystore holds for it"
        for index in reversed(range(len(candidates))):
            key = candidates[index]
            try:
                self._zfs.load_key(
                    target, key, verify_only=verify_only, info=info, confirm=self._confirm
                )
            except errors.ZfsKeyAlreadyLoaded:
                return EntryResult(target, Outcome.ALREADY_LOADED)
            except _NO_KEY_WILL_DO as exc:
                return EntryResult(target, Outcome.FAILED, exc.message)
            except errors.ZfsKeyRejected:
                continue
            except errors.ZfsError as exc:
                # e.g. "Raw key too short": a staged key in the format a rotation moves to
                detail = exc.message
                continue
            return EntryResult(target, success, candidate=index)
        return EntryResult(target, Outcome.FAILED, detail)
