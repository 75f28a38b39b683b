"""Every failure zkv reports to a person: a one-line message and an exit code.

The class docstring is the message template (borg's style); ``str.format`` fills it with the
keyword arguments given at raise time. Exit codes are part of the interface: docs/exit-codes.md
and the boot client's --help list them (both generated from these classes: catalogue()),
tests/unit/test_errors.py pins them. Messages never contain key material.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar


class ZkvError(Exception):
    """{detail}"""

    exit_code: ClassVar[int] = 1

    def __init__(self, detail: str = "", **kwargs: object) -> None:
        self.kwargs: dict[str, object] = {"detail": detail, **kwargs}
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = (type(self).__doc__ or "{detail}").strip().splitlines()[0]
        try:
            return template.format(**self.kwargs)
        except (KeyError, IndexError):
            return template


# --- usage and configuration (2-9) ----------------------------------------------------------


class UsageError(ZkvError):
    """{detail}"""

    exit_code = 2


class ConfigError(ZkvError):
    """configuration error: {detail}"""

    exit_code = 3


class SecretOnCommandLine(UsageError):
    """secrets are never accepted on the command line: {detail}"""


class InputError(ZkvError):
    """{detail}"""

    exit_code = 4


# --- keystore (10-19) -----------------------------------------------------------------------


class KeystoreError(ZkvError):
    """keystore error: {detail}"""

    exit_code = 10


class KeystoreNotFound(KeystoreError):
    """no keystore at {path} (create one with 'zkv init')"""

    exit_code = 11


class KeystoreExists(KeystoreError):
    """a keystore already exists at {path}; refusing to overwrite it"""

    exit_code = 12


class KeystoreCorrupt(KeystoreError):
    """keystore {path} is damaged or not a zkv keystore: {detail}"""

    exit_code = 13


class KeystoreUnsupportedVersion(KeystoreCorrupt):  # a damaged version field looks the same
    """keystore {path} has format version {version}, which this zkv cannot read"""

    exit_code = 14


class KeystoreLocked(KeystoreError):
    """the keystore could not be opened: wrong key or passphrase, or the file was tampered with"""

    exit_code = 15


class ReleaseRejected(KeystoreLocked):
    """the released key does not open the keystore"""


class EntryNotFound(KeystoreError):
    """the keystore has no entry for {target}"""

    exit_code = 16


class InvalidKeyMaterial(KeystoreError):
    """invalid key for keyformat {keyformat}: {detail}"""

    exit_code = 17


class FileWriteError(ZkvError):
    """could not write {path}: {detail}"""

    exit_code = 18


# --- zfs (20-25) ----------------------------------------------------------------------------


class HostKeyError(ZkvError):
    """host key {path}: {detail}"""

    exit_code = 19


class ZfsError(ZkvError):
    """zfs: {detail}"""

    exit_code = 20


class ZpoolError(ZfsError):
    """zpool: {detail}"""


class DevicePoolsNotImported(ZpoolError):  # handover-load; a zpool error's 20: 40-49 are taken
    """the pools on {devices} were not imported: {detail}"""


class ZfsKeyRejected(ZfsError):
    """zfs rejected the key for {dataset}"""

    exit_code = 21


class ZfsKeyAlreadyLoaded(ZfsError):
    """the key for {dataset} is already loaded"""

    exit_code = 22


class ZfsDatasetNotFound(ZfsError):
    """no such ZFS dataset: {dataset}"""

    exit_code = 23


class ZfsNotEncryptionRoot(ZfsError):
    """{dataset} is not an encryption root ({root})"""

    exit_code = 24


class ZfsUnavailable(ZfsError):
    """cannot run zfs: {detail}"""

    exit_code = 25


# --- LUKS and loop devices (26-29; zkv/cryptsetup.py) ---------------------------------------


class CryptsetupError(ZkvError):
    """cryptsetup: {detail}"""

    exit_code = 26


class LoopError(CryptsetupError):
    """losetup: {detail}"""


class CryptNotLuks(CryptsetupError):
    """{device} is not a LUKS device"""


class CryptKeyRejected(CryptsetupError):
    """cryptsetup rejected the key for {device}"""

    exit_code = 27


class CryptDeviceNotFound(CryptsetupError):
    """no such device: {device}"""

    exit_code = 28


class CryptUnavailable(CryptsetupError):
    """{detail} (install cryptsetup-bin)"""

    exit_code = 29


# --- gateway and approval (30-39) -----------------------------------------------------------


class GatewayError(ZkvError):
    """gateway error: {detail}"""

    exit_code = 30


class GatewayUnreachable(GatewayError):
    """cannot reach the gateway at {url}: {detail}"""

    exit_code = 31


class GatewayRefused(GatewayError):
    """the gateway refused the request (host unknown, revoked, suspended; boot flags; malformed)"""

    exit_code = 32


class ApprovalDenied(GatewayError):
    """the owner denied the unlock request"""

    exit_code = 33


class ApprovalExpired(GatewayError):
    """the unlock request expired before it was approved"""

    exit_code = 34


class RateLimited(GatewayError):
    """the gateway is rate limiting this host"""

    exit_code = 35


class SecretShared(GatewayError):
    """the gateway releases this host's repository key to other hosts too: not rotated"""

    exit_code = 37


class RepositoryKeyNotRotated(GatewayError):
    """the repository key is not rotated: {detail}"""

    exit_code = 38


class GatewayBusy(GatewayError):  # 503, or 502/504 from a proxy in front: worth a retry
    """the gateway cannot serve unlocks right now ({detail})"""


class AheadNotApproved(GatewayError):
    """the owners did not approve the planned reboot ahead (the request is {state}): not rebooted"""

    exit_code = 39


class RebootFailed(ZkvError):  # zkv reboot; the admin range goes on past 59
    """approved ahead, but the reboot did not start: {detail}"""

    exit_code = 60


class ProtocolError(GatewayError):
    """unexpected answer from the gateway: {detail}"""

    exit_code = 36


# --- boot-time (40-49) ----------------------------------------------------------------------


class NetworkTimeout(ZkvError):
    """the network did not come up in time: {detail}"""

    exit_code = 40


class PassphraseRetriesExceeded(ZkvError):
    """too many wrong recovery passphrases"""

    exit_code = 41


class TpmError(ZkvError):
    """TPM: {detail}"""

    exit_code = 42


class TpmKeyMissing(TpmError):
    """the host key is not in this TPM (cleared, replaced, or another machine's disk): re-enrol with 'zkv enroll', or unlock with the recovery passphrase"""  # noqa: E501

    exit_code = 49


class UnlockTimeout(ZkvError):
    """no approval and no recovery passphrase within {seconds} s"""

    exit_code = 43


class KeysNotLoaded(ZkvError):
    """keys not loaded for: {datasets}"""

    exit_code = 44


class PromptUnavailable(ZkvError):
    """cannot ask for the recovery passphrase: {detail}"""

    exit_code = 45


class HandoverError(ZkvError):
    """handover file {path}: {detail}"""

    exit_code = 46


class PoolsNotImported(ZkvError):
    """the keys are ready but the pools were not imported within {seconds} s"""

    exit_code = 47


class KeysDropped(ZkvError):
    """pools not imported, their keys were dropped for this boot: {datasets}; once the pool is imported, load them with: zkv unlock {datasets}"""  # noqa: E501

    exit_code = 48


class Interrupted(ZkvError):
    """interrupted"""

    exit_code = 130


# --- admin CLI (50-69) ----------------------------------------------------------------------


class EntryExists(ZkvError):
    """the keystore already has an entry for {target} (use --force to replace it)"""

    exit_code = 50


class ZfsKeyNotLoaded(ZfsError):
    """the key of {dataset} must be loaded to change it (run 'zkv unlock {dataset}' first)"""

    exit_code = 51


class RotationFailed(ZkvError):
    """changing the key of {dataset} failed: {detail}"""

    exit_code = 52


class BootImageFailed(ZkvError):
    """rebuilding the boot image failed: {detail}"""

    exit_code = 56


class EpochPropertyInvalid(ZkvError):
    """{dataset}: {name} holds {value!r}, not an epoch (choose another --epoch-property)"""

    exit_code = 57


class RotationBusy(ZkvError):
    """another 'zkv rotate' or 'zkv reconcile' is running on {path}"""

    exit_code = 58


class VerifyFailed(ZkvError):
    """{count} of {total} entries could not be verified"""

    exit_code = 53


class UnlockFailed(ZkvError):
    """{count} of {total} keys could not be loaded"""

    exit_code = 54


class DoctorFoundProblems(ZkvError):
    """{count} problem(s) found"""

    exit_code = 55


class WipeFailed(ZkvError):
    """the gateway asked for a wipe, but the repository slot of {path} is not destroyed: {detail}"""

    exit_code = 59


class NoTerminal(UsageError):
    """no terminal to ask for the {what}; give it with {option}"""


# --- the catalogue --------------------------------------------------------------------------


ADMIN_CODES = 50  # 50-69: the admin CLI's own; the boot client never ends with them
SIGNAL_CODES = 128


def catalogue() -> list[type[ZkvError]]:
    """Every error class, by exit code then name."""
    found = [v for v in globals().values() if isinstance(v, type) and issubclass(v, ZkvError)]
    return sorted(found, key=lambda c: (c.exit_code, c.__name__))


def summary(cls: type[ZkvError]) -> str:
    """A few words from the class name: GatewayUnreachable -> "gateway unreachable"."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()


def exit_codes(wanted: Callable[[int], bool]) -> list[tuple[int, str]]:
    """(code, what it means) for each exit code that ``wanted`` accepts: --help, man pages."""
    by_code: dict[int, list[str]] = {}
    for cls in catalogue():
        if wanted(cls.exit_code):
            by_code.setdefault(cls.exit_code, []).append(summary(cls))
    return [(code, " / ".join(names)) for code, names in sorted(by_code.items())]


def exit_code_help(wanted: Callable[[int], bool]) -> str:
    """One line per exit code that ``wanted`` accepts, for a program's --help."""
    return "\n".join(f"  {code:<4} {meaning}" for code, meaning in exit_codes(wanted))
