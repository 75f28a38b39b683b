"""``zkv filepool create NAME --files N --size S [--raidz2] DIR``: seed 004 as one command.

N sparse files ``DIR/NAME-<i>.img`` of S bytes each, each a LUKS2 image with its own random key
(32 bytes, a keyfile) on a loop device, opened, and a pool over the mappings. The files can be
copied to a backup host without showing the pool's structure. The keys go into the keystore as
``loopfile:`` entries, saved BEFORE any file is formatted: a crash never leaves an image whose
key nobody has (only entries for files that are not there yet, which ``zkv remove`` drops). A
failure before the pool exists undoes what was made: mappings closed, loops detached, files
and entries removed. At boot the initramfs hands the entries to the real root, whose
zkv-open-devices.service opens them before zfs-import-cache.service imports the pool.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re

from zkv import keystore
from zkv.cryptsetup import Cryptsetup
from zkv.errors import InputError, UsageError, ZkvError
from zkv.keyload.luks import mapping_name
from zkv.zpool import Zpool, check_pool_name
from zkv_admin import rotation
from zkv_admin.common import REBUILD_HINT, open_store, path_of, save, say

MAX_FILES = 64
MIN_SIZE = 64 << 20  # zpool refuses vdevs below 64 MiB
_SIZE_RE = re.compile(r"([0-9]+)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
KEYFORMAT = "keyfile"


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``1GiB``, or bytes."""
    found = _SIZE_RE.fullmatch(text.strip())
    if found is None:
        raise UsageError(f"not a size: {text[:40]!r} (e.g. 1G, 512M)")
    size = int(found.group(1)) * _UNITS[found.group(2).upper()]
    if size < MIN_SIZE:
        raise UsageError(f"--size must be at least {MIN_SIZE >> 20}M (zpool's smallest vdev)")
    return size


def files_of(name: str, count: int, folder: str) -> list[str]:
    return [os.path.join(folder, f"{name}-{i}.img") for i in range(count)]


class _Made:
    """What create() has made so far, to undo in reverse on a failure."""

    def __init__(self, crypt: Cryptsetup) -> None:
        self.crypt = crypt
        self.files: list[str] = []
        self.loops: list[str] = []
        self.mappings: list[str] = []

    def undo(self) -> list[str]:
        """Best effort; what could not be undone, one phrase each."""
        left: list[str] = []
        for name in reversed(self.mappings):
            try:
                self.crypt.close(name)
            except ZkvError:
                left.append(f"mapping {name}")
        for loop in reversed(self.loops):
            try:
                self.crypt.detach(loop)
            except ZkvError:
                left.append(f"loop device {loop}")
        for path in reversed(self.files):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return left


def _sparse(path: str, size: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path} exists already: choose another NAME or DIR") from None
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def cmd_create(args: argparse.Namespace) -> int:
    name = check_pool_name(args.name)
    if not 1 <= args.files <= MAX_FILES:
        raise UsageError(f"--files must be between 1 and {MAX_FILES}")
    size = parse_size(args.size)
    folder = os.path.abspath(args.dir)
    files = files_of(name, args.files, folder)
    targets = [keystore.block_target(keystore.KIND_LOOPFILE, f) for f in files]
    path = path_of(args)
    sealed = keystore.read(path)  # before asking for anything
    for target in targets:
        if target in sealed.targets():
            raise InputError(f"the keystore already has an entry for {target}")
    for file in files:
        if os.path.lexists(file):
            raise InputError(f"{file} exists already: choose another NAME or DIR")
    store = open_store(args, sealed)
    keys = [rotation.generate_key(KEYFORMAT) for _ in files]
    for target, key in zip(targets, keys, strict=True):
        store.put(keystore.Entry(target, KEYFORMAT, keystore.KIND_LOOPFILE), key)
    save(path, store, remind=False)  # the keys first: no image ever exists without its key
    crypt = Cryptsetup()
    made = _Made(crypt)
    failure: ZkvError | None = None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for file, target, key in zip(files, targets, keys, strict=True):
            _sparse(file, size)
            made.files.append(file)
            crypt.format(file, key)
            loop = crypt.attach(file)
            made.loops.append(loop)
            crypt.open(loop, mapping_name(target), key)
            made.mappings.append(mapping_name(target))
        Zpool().create(name, args.layout, [f"/dev/mapper/{m}" for m in made.mappings])
    except ZkvError as exc:
        failure = exc
    except OSError as exc:
        failure = InputError(f"{folder}: {exc.strerror or exc}")
    if failure is not None:
        left = made.undo()
        for target in targets:
            store.remove(target)
        save(path, store, remind=False)
        if left:
            say(f"left behind, remove by hand: {', '.join(left)}")
        raise failure
    say(
        f"pool {name} created: {args.layout} over {len(files)} LUKS2 image files of "
        f"{args.size} in {folder}, their keys in the keystore ({len(targets)} loopfile entries); "
        + REBUILD_HINT
    )
    return 0
