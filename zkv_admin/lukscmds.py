"""``zkv add --luks DEVICE|FILE``: keystore entries for LUKS devices and LUKS image files.

A device is stored by its LUKS UUID (``luks:UUID=...``) unless named by a stable path (a zvol,
``/dev/disk/by-*``, ``/dev/mapper/*``), so the entry survives disks being renumbered; a regular
file becomes a ``loopfile:`` entry. Without ``--generate`` the given key is checked with
``cryptsetup open --test-passphrase``; with it, a new random key gets a keyslot of its own
(``luksAddKey``, the existing passphrase on stdin) and only the keystore holds it. A crash
between luksAddKey and the keystore's write leaves an extra keyslot whose key nobody has,
never a keystore with a key the device does not take.
"""

from __future__ import annotations

import argparse
import os

from zkv import keystore
from zkv.cryptsetup import Cryptsetup
from zkv.errors import (
    CryptKeyRejected,
    CryptsetupError,
    EntryExists,
    InputError,
    InvalidKeyMaterial,
    UsageError,
    ZkvError,
)
from zkv_admin import rotation, secret_input
from zkv_admin.common import open_store, path_of, save, say

_STABLE_PATHS = ("/dev/zvol/", "/dev/disk/", "/dev/mapper/")
_TAGS = ("UUID=", "PARTUUID=")


def entry_for(crypt: Cryptsetup, name: str) -> tuple[str, str, str]:
    """(kind, entry name, what cryptsetup reads) for ``--luks NAME``."""
    if name.upper().startswith(_TAGS):
        tag, _, value = name.partition("=")
        locator = f"{tag.upper()}={value.lower()}"
        target = keystore.block_target(keystore.KIND_LUKS, locator)
        return keystore.KIND_LUKS, target, crypt.device(locator)
    if name.startswith("/dev/"):
        crypt.require_luks(name)
        if name.startswith(_STABLE_PATHS):
            return keystore.KIND_LUKS, keystore.block_target(keystore.KIND_LUKS, name), name
        locator = f"UUID={crypt.luks_uuid(name)}"
        return keystore.KIND_LUKS, keystore.block_target(keystore.KIND_LUKS, locator), name
    path = os.path.abspath(name)
    target = keystore.block_target(keystore.KIND_LOOPFILE, path)
    if not os.path.isfile(path):
        raise UsageError(f"{name} is neither a device (/dev/..., UUID=, PARTUUID=) nor a file")
    return keystore.KIND_LOOPFILE, target, path


def keyformat_of(args: argparse.Namespace) -> str:
    fmt: str = args.keyformat or "passphrase"
    if fmt not in keystore.KIND_KEYFORMATS[keystore.KIND_LUKS]:
        raise UsageError("a LUKS key is a passphrase or a keyfile (--keyformat)")
    return fmt


def cmd_add(args: argparse.Namespace) -> int:
    key_source = args.key_file or secret_input.STDIN
    secret_input.check_one_stdin(
        key_source, args.repository_key_file, args.recovery_passphrase_file
    )
    path = path_of(args)
    sealed = keystore.read(path)  # fail before asking for anything if there is no keystore
    crypt = Cryptsetup()
    kind, target, device = entry_for(crypt, args.luks)
    crypt.require_luks(device)
    if target in sealed.targets() and not args.force:
        raise EntryExists(target=target)
    keyformat = keyformat_of(args)
    what = f"{'existing' if args.generate else 'the'} key of {target}"
    material = secret_input.read_key(key_source, keyformat, what)
    keystore.check_material(keyformat, material)
    store = open_store(args, sealed)
    if args.generate:
        keyformat = "keyfile" if args.raw else "passphrase"
        new = rotation.generate_key(keyformat)
        crypt.add_key(device, material, new)
        material = new
    else:
        crypt.test_key(device, material)
    store.put(keystore.Entry(target, keyformat, kind), material)
    save(path, store)
    done = "a new keyslot holds a new random key" if args.generate else "cryptsetup accepted it"
    say(f"added {target} ({keyformat}); {done}")
    return 0


def device_of(crypt: Cryptsetup, entry: keystore.Entry) -> str:
    """What cryptsetup reads for a block entry: the device, or the image file itself."""
    if entry.kind == keystore.KIND_LOOPFILE:
        return entry.locator
    return crypt.device(entry.locator)


class LuksRotatable:
    """A LUKS device for zkv_admin/rotation.py: the change adds a keyslot for the new key
    (the device then takes both); settling removes the older key's keyslot, then the keystore
    forgets it. A crash between leaves two keyslots, which the next settle() reduces to one."""

    tool: str = "cryptsetup"
    failure: type[ZkvError] = CryptsetupError

    def __init__(self, crypt: Cryptsetup, device: str) -> None:
        self.crypt, self.device = crypt, device

    @classmethod
    def of(cls, entry: keystore.Entry) -> LuksRotatable:
        crypt = Cryptsetup()
        return cls(crypt, device_of(crypt, entry))

    def ready(self) -> None:
        self.crypt.require_luks(self.device)

    def look(self) -> None:
        """Nothing to read: the keyslots answer accepts()."""

    def accepts(self, key: bytes) -> bool:
        try:
            self.crypt.test_key(self.device, key)
        except CryptKeyRejected:
            return False
        return True

    def begin(self, epoch: int) -> None:
        """Nothing to mark: the keystore's staged key is the record."""

    def change(self, old: bytes, new: bytes, keyformat: str) -> None:
        self.crypt.add_key(self.device, old, new)

    def settle(self, keys: list[bytes], winner: int, epoch: int | None) -> int | None:
        for older in keys[:winner]:
            if self.accepts(older):
                self.crypt.remove_key(self.device, older)
        return epoch

    def keyformat(self, key: bytes) -> str:
        try:
            keystore.check_material("passphrase", key)
        except (InputError, InvalidKeyMaterial):
            return "keyfile"
        return "passphrase"
