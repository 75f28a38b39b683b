"""``zkv doctor``: check the installation and explain each problem in one sentence.

Every check runs even after a failure, so one run lists everything to fix. Nothing here needs
a key: the keystore's header (dataset names, formats) is readable without one.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import stat
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from zkv import hostkey, keystore, paths
from zkv.cryptsetup import Cryptsetup
from zkv.errors import DoctorFoundProblems, ZkvError
from zkv.zfs import Zfs
from zkv_admin import lukscmds, rotation
from zkv_admin.common import path_of
from zkv_early import config

Finding = tuple[bool, str]  # (ok, one sentence)


@dataclass(frozen=True)
class Places:
    """Where things are installed; tests point these into a temporary folder."""

    config: str = config.DEFAULT_PATH
    hooks: tuple[str, ...] = ("/usr/share/initramfs-tools/hooks/zkv",)
    dracut_modules: str = "/usr/lib/dracut/modules.d/*zkv*"
    boot_images: tuple[str, ...] = ("/boot/initrd.img-{release}", "/boot/initramfs-{release}.img")
    release: str = os.uname().release


def cmd_doctor(args: argparse.Namespace) -> int:
    findings = list(check_all(path_of(args), Places(), Zfs()))
    for ok, sentence in findings:
        print(f"{'ok     ' if ok else 'PROBLEM'}  {sentence}", flush=True)
    problems = sum(1 for ok, _ in findings if not ok)
    if problems:
        raise DoctorFoundProblems(count=problems)
    return 0


def check_all(path: Path, places: Places, zfs: Zfs) -> Iterator[Finding]:
    yield from _config(places)
    sealed = yield from _keystore(path)
    yield from _wipe_ready(path, sealed)
    yield from _host_key(path)
    yield from _zfs(zfs, sealed)
    yield from _hooks(places)
    yield from _boot_image(path, places)


def _config(places: Places) -> Iterator[Finding]:
    try:
        settings = config.load(places.config)
    except ZkvError as exc:
        yield False, f"the boot client's settings are not usable: {exc.message}."
        return
    yield True, f"{places.config} is valid (gateway {settings.gateway_url or 'disabled'})."
    yield from _trust(settings)


def _trust(settings: config.Config) -> Iterator[Finding]:
    """What the boot trusts for the gateway; config.validate already refused "nothing"."""
    if not settings.gateway_url.startswith("https"):
        return
    if settings.ca_file and not os.path.isfile(settings.ca_file):
        yield False, f"the gateway CA file {settings.ca_file} is missing: no image can be built."
        return
    trust = []
    if settings.ca_file == paths.SYSTEM_CA_BUNDLE:  # ca_file = system: allowed, but say so
        trust.append("any CA of the system bundle (ca_file = system; its own CA is narrower)")
    elif settings.ca_file:
        trust.append(f"its own CA {settings.ca_file}")
    if settings.pins:
        trust.append(f"its pinned key ({len(settings.pins)} pin_sha256)")
    yield True, f"the boot trusts the gateway on the word of {' and '.join(trust)}."


def _keystore(path: Path) -> Generator[Finding, None, keystore.SealedKeystore | None]:
    """Yields findings and returns the parsed keystore, or None."""
    try:
        sealed = keystore.read(path)
    except ZkvError as exc:
        yield False, f"{exc.message}."
        return None
    yield True, f"{path} is a valid keystore with {len(sealed.entries)} entries."
    if len(sealed.repository_key_ids()) > 1:
        why = "a repository key rotation was interrupted (two repository slots)"
        yield False, f"{why}: run 'zkv reconcile', which asks the gateway which key it holds."
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        yield False, f"{path} is readable by others: run 'chmod 600 {path}'."
    elif info.st_uid != 0 and os.geteuid() == 0:
        yield False, f"{path} is not owned by root: run 'chown root: {path}'."
    else:
        yield True, f"{path} is private (mode {stat.S_IMODE(info.st_mode):04o})."
    return sealed


def _wipe_ready(path: Path, sealed: keystore.SealedKeystore | None) -> Iterator[Finding]:
    """A remote wipe needs the recovery-only twin that every keystore write leaves."""
    if sealed is None or all(s.kind != keystore.SLOT_REPOSITORY for s in sealed.slots):
        return
    try:
        keystore.check_recovery_only(path, sealed)
    except ZkvError as exc:
        yield False, f"a remote wipe would fail: {exc.kwargs['detail']}."
        return
    yield True, "a remote wipe can destroy the repository slot (its recovery-only twin is ready)."


def _host_key(path: Path) -> Iterator[Finding]:
    key_path = hostkey.default_path(path)
    try:
        hostkey.load(key_path)
    except ZkvError as exc:
        yield False, f"{exc.message}."
        return
    yield True, f"the host key {key_path} is present."


def _zfs(zfs: Zfs, sealed: keystore.SealedKeystore | None) -> Iterator[Finding]:
    try:
        zfs.encryption_roots()
    except ZkvError as exc:
        yield False, f"zfs does not work ({exc.message}), so no entry could be checked."
        return
    yield True, f"zfs works ({zfs.binary})."
    for entry in sealed.entries if sealed else ():
        if entry.kind != keystore.KIND_ZFS:
            yield from _block(entry)
            continue
        try:
            zfs.require_encryption_root(entry.target)
        except ZkvError as exc:
            yield False, f"entry {entry.target}: {exc.message}; remove it or fix the dataset."
        else:
            yield True, f"entry {entry.target} is an encryption root."
            yield from _rotation(zfs, entry.target)


def _block(entry: keystore.Entry) -> Iterator[Finding]:
    """A LUKS device or image file: there, and LUKS (its keys: 'zkv verify')."""
    crypt = Cryptsetup()
    try:
        crypt.require_luks(lukscmds.device_of(crypt, entry))
    except ZkvError as exc:
        yield False, f"entry {entry.target}: {exc.message}; remove it or attach the device."
    else:
        yield True, f"entry {entry.target} is a LUKS device."


def _rotation(zfs: Zfs, target: str) -> Iterator[Finding]:
    """A rotation a crash interrupted still unlocks, but the keystore holds two keys."""
    pending = rotation.names(rotation.DEFAULT_PROPERTY).pending
    try:
        found = zfs.local_properties(target, [pending])
    except ZkvError:
        return
    if pending in found:
        yield (
            False,
            f"a rotation of {target} to epoch {found[pending]} was interrupted: "
            "run 'zkv reconcile'.",
        )


def _hooks(places: Places) -> Iterator[Finding]:
    found = [h for h in places.hooks if os.path.exists(h)] + glob.glob(places.dracut_modules)
    if found:
        yield True, f"boot hooks are installed ({', '.join(found)})."
    else:
        yield (
            False,
            "no zkv boot hook is installed, so the boot image cannot unlock: 'make install'.",
        )


def _boot_image(path: Path, places: Places) -> Iterator[Finding]:
    images = [p.format(release=places.release) for p in places.boot_images]
    image = next((i for i in images if os.path.exists(i)), None)
    if image is None:
        yield True, f"no boot image for kernel {places.release} to compare (skipped)."
        return
    built = os.stat(image).st_mtime
    # The image carries copies of both files (the hooks copy them in).
    for what, source in (("keystore", path), ("host key", hostkey.default_path(path))):
        if source.exists() and source.stat().st_mtime > built:
            yield (
                False,
                (
                    f"{image} is older than the {what}, so it boots with a stale copy: "
                    "run 'update-initramfs -u -k all' or 'dracut -f --regenerate-all'."
                ),
            )
            return
    listing = _list_image(image)
    if listing is not None and "etc/zkv/keystore" not in listing:
        yield False, f"{image} holds no keystore: rebuild it after installing the hooks."
        return
    yield True, f"{image} is newer than the keystore."


def _list_image(image: str) -> str | None:
    tool = shutil.which("lsinitramfs") or shutil.which("lsinitrd")
    if tool is None:
        return None
    try:
        result = subprocess.run([tool, image], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.decode("utf-8", "replace") if result.returncode == 0 else None
