"""Loader for entries of kind ``loopfile``: a LUKS image file, attached with losetup, then opened.

Seed 004's file-backed vdevs (sparse files that can be copied to a backup host without showing
the pool's structure). The file's existing loop device is reused; a new one is detached again
when no key opens it, so a failed unlock leaves nothing behind. A dry run (``zkv verify``)
needs no loop device: cryptsetup reads the header from the file itself.
"""

from __future__ import annotations

from zkv import errors
from zkv.cryptsetup import Cryptsetup
from zkv.keyload.luks import open_device
from zkv.keyload.report import EntryResult, Outcome
from zkv.keystore import KIND_LOOPFILE


class LoopfileLoader:
    kind = KIND_LOOPFILE

    def __init__(self, crypt: Cryptsetup) -> None:
        self._crypt = crypt

    def load(self, target: str, candidates: list[bytes], verify_only: bool) -> EntryResult:
        path = target.partition(":")[2]
        try:
            loop = self._crypt.loop_of(path)
            if verify_only:
                return open_device(self._crypt, target, loop or path, candidates, True)
            attached = loop is None
            loop = loop or self._crypt.attach(path)
        except errors.CryptDeviceNotFound as exc:
            return EntryResult(target, Outcome.ABSENT, exc.message)
        except errors.CryptsetupError as exc:
            return EntryResult(target, Outcome.FAILED, exc.message)
        result = open_device(self._crypt, target, loop, candidates, False)
        if attached and not result.ok:
            try:
                self._crypt.detach(loop)
            except errors.CryptsetupError as exc:
                return result._replace(detail=f"{result.detail}; {exc.message}")
        return result
