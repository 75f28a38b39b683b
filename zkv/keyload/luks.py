"""Loader for entries of kind ``luks``: a LUKS1/LUKS2 device opened with cryptsetup.

The device is named by the entry (``luks:UUID=...``, ``luks:PARTUUID=...``, or a stable path
such as a zvol's ``/dev/zvol/pool/vol``) and mapped as ``mapping_name(target)``: ``luks-<UUID>``
for a UUID, systemd-cryptsetup's default name, else ``zkv-`` and a digest of the entry name.
A device already open (under that name, or any dm-crypt mapping on it) is success, as is an
already loaded ZFS key. Candidates are tried newest first, as in zfs_native.py: a staged key
is the one a rotation in flight (zkv_admin/rotation.py) is moving to. A missing device is
``ABSENT`` (one line in the report), not a failure of the others. Standard library only, so the
boot client can run it unchanged.
"""

from __future__ import annotations

import hashlib

from zkv import errors
from zkv.cryptsetup import Cryptsetup
from zkv.keyload.report import EntryResult, Outcome
from zkv.keystore import KIND_LUKS


def mapping_name(target: str) -> str:
    """The device-mapper name an entry is opened as (at most 5 + 36 characters)."""
    locator = target.partition(":")[2]
    if locator.startswith("UUID="):
        return f"luks-{locator[5:]}"
    return "zkv-" + hashlib.sha256(target.encode()).hexdigest()[:16]


def open_device(
    crypt: Cryptsetup, target: str, device: str, candidates: list[bytes], verify_only: bool
) -> EntryResult:
    """Open (or dry-run check) ``device`` with the newest candidate that it accepts."""
    name = mapping_name(target)
    if not verify_only and (crypt.status(name) is not None or crypt.holder(device)):
        return EntryResult(target, Outcome.ALREADY_LOADED)
    detail = "cryptsetup rejected every key the keystore holds for it"
    for index in reversed(range(len(candidates))):
        try:
            if verify_only:
                crypt.test_key(device, candidates[index])
            else:
                crypt.open(device, name, candidates[index])
        except errors.CryptKeyRejected:
            continue
        except errors.CryptDeviceNotFound as exc:
            return EntryResult(target, Outcome.ABSENT, exc.message)
        except errors.CryptUnavailable as exc:
            return EntryResult(target, Outcome.FAILED, exc.message)
        except errors.CryptsetupError as exc:
            detail = exc.message
            continue
        return EntryResult(target, Outcome.VERIFIED if verify_only else Outcome.LOADED, "", index)
    return EntryResult(target, Outcome.FAILED, detail)


class LuksLoader:
    kind = KIND_LUKS

    def __init__(self, crypt: Cryptsetup) -> None:
        self._crypt = crypt

    def load(self, target: str, candidates: list[bytes], verify_only: bool) -> EntryResult:
        try:
            device = self._crypt.device(target.partition(":")[2])
        except errors.CryptDeviceNotFound as exc:
            return EntryResult(target, Outcome.ABSENT, exc.message)
        except errors.CryptsetupError as exc:
            return EntryResult(target, Outcome.FAILED, exc.message)
        return open_device(self._crypt, target, device, candidates, verify_only)
