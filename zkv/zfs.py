"""The one place zkv talks to ``zfs``: keys go in on stdin, results come back as typed errors.

``zfs load-key`` exits 255 for every failure (wrong key, already loaded, not an encryption
root...), so the cause is read from its stderr and cross-checked with ``keystatus`` and
``encryptionroot`` before and after. A key is never part of argv: ``-L prompt`` with a pipe
makes zfs read it from stdin (raw keys: exactly 32 bytes, no newline; hex and passphrase: one
line). See docs/zfs-layer.md for the OpenZFS behaviour this relies on.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from typing import NamedTuple

from zkv.errors import (
    InputError,
    ZfsDatasetNotFound,
    ZfsError,
    ZfsKeyAlreadyLoaded,
    ZfsKeyRejected,
    ZfsNotEncryptionRoot,
    ZfsUnavailable,
)
from zkv.fsutil import which

ENV_BINARY = "ZKV_ZFS"
# zfsprops(7): user property names are lowercase letters, digits and ":-._", contain a colon
# and are at most 256 characters. Checked before they reach argv, so a name can never be read
# as an option ("-o...") or carry a second "name=value".
_USER_PROPERTY_RE = re.compile(r"[a-z0-9][a-z0-9:._-]*")
MAX_PROPERTY_NAME = 256
# What zkv writes as a value: printable ASCII, no tab (the separator of "zfs get -H").
_VALUE_RE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
MAX_VALUE = 1024
_SEARCH = ("/usr/sbin/zfs", "/sbin/zfs", "/usr/local/sbin/zfs")


class KeyInfo(NamedTuple):
    dataset: str
    encryption_root: str | None
    keystatus: str  # "available" | "unavailable" | "none" (not encrypted)
    keyformat: str  # "raw" | "hex" | "passphrase" | "none"


def check_user_property(name: str) -> str:
    if (
        len(name) > MAX_PROPERTY_NAME
        or ":" not in name
        or _USER_PROPERTY_RE.fullmatch(name) is None
    ):
        raise InputError(
            f"not a ZFS user property name: {name[:80]!r} (lowercase letters, digits and "
            f"':-._', with a colon, at most {MAX_PROPERTY_NAME} characters)"
        )
    return name


def check_property_value(value: str) -> str:
    if len(value) > MAX_VALUE or _VALUE_RE.fullmatch(value) is None:
        raise InputError(f"not a property value zkv writes: {value[:80]!r}")
    return value


def find_binary() -> str:
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit
    found = which("zfs")
    if found:
        return found
    for candidate in _SEARCH:
        if os.access(candidate, os.X_OK):
            return candidate
    return "zfs"


def _translate(stderr: str, dataset: str) -> ZfsError:
    """Map zfs's messages to typed errors. Messages are the libzfs ones of 2.1 to 2.3."""
    text = stderr.strip()
    if "Incorrect key provided" in text:
        return ZfsKeyRejected(dataset=dataset)
    if "Key already loaded" in text:
        return ZfsKeyAlreadyLoaded(dataset=dataset)
    if "dataset does not exist" in text or "does not exist" in text:
        return ZfsDatasetNotFound(dataset=dataset)
    if "is not encrypted" in text:
        return ZfsNotEncryptionRoot(dataset=dataset, root="it is not encrypted")
    if "Keys must be loaded for encryption root" in text:
        root = text.rsplit("(", 1)[-1].rstrip(").") if "(" in text else "another dataset"
        return ZfsNotEncryptionRoot(dataset=dataset, root=f"its encryption root is {root}")
    first = text.splitlines()[0][:200] if text else "failed without a message"
    return ZfsError(detail=first)


class Zfs:
    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        self.binary = binary or find_binary()
        self.timeout = timeout

    def _run(
        self, args: list[str], stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                [self.binary, *args],
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise ZfsUnavailable(detail=f"{self.binary} not found") from None
        except PermissionError:
            raise ZfsUnavailable(detail=f"{self.binary} is not executable") from None
        except subprocess.TimeoutExpired:
            raise ZfsError(detail=f"'zfs {args[0]}' did not finish in {self.timeout:g} s") from None

    def _checked(self, args: list[str], dataset: str, stdin: bytes | None = None) -> str:
        result = self._run(args, stdin)
        if result.returncode != 0:
            raise _translate(result.stderr.decode("utf-8", "replace"), dataset)
        return result.stdout.decode("utf-8", "replace")

    # --- queries ------------------------------------------------------------------------------

    def key_info(self, dataset: str) -> KeyInfo:
        out = self._checked(
            [
                "get",
                "-H",
                "-p",
                "-o",
                "property,value",
                "encryptionroot,keystatus,keyformat",
                dataset,
            ],
            dataset,
        )
        props = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        root = props.get("encryptionroot", "-")
        return KeyInfo(
            dataset=dataset,
            encryption_root=None if root in ("-", "") else root,
            keystatus=props.get("keystatus", "none").replace("-", "none"),
            keyformat=props.get("keyformat", "none").replace("-", "none"),
        )

    def local_properties(self, dataset: str, names: list[str]) -> dict[str, str]:
        """The user properties among ``names`` that are set on ``dataset`` itself. An inherited
        value (a parent encryption root's epoch) is not this dataset's, so it is left out."""
        for name in names:
            check_user_property(name)
        out = self._checked(
            ["get", "-H", "-p", "-s", "local", "-o", "property,value", ",".join(names), dataset],
            dataset,
        )
        rows = (line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        return {name: value for name, value in rows if name in names}

    def set_properties(self, dataset: str, values: Mapping[str, str]) -> None:
        """Set user properties, all in one ``zfs set`` (one transaction)."""
        pairs = [f"{check_user_property(n)}={check_property_value(v)}" for n, v in values.items()]
        self._checked(["set", *pairs, dataset], dataset)

    def clear_property(self, dataset: str, name: str) -> None:
        """Remove a user property set on ``dataset`` (``zfs inherit``)."""
        self._checked(["inherit", check_user_property(name), dataset], dataset)

    def keystatus(self, dataset: str) -> str:
        return self.key_info(dataset).keystatus

    def encryption_root(self, dataset: str) -> str | None:
        return self.key_info(dataset).encryption_root

    def require_encryption_root(self, dataset: str) -> KeyInfo:
        info = self.key_info(dataset)
        if info.encryption_root is None:
            raise ZfsNotEncryptionRoot(dataset=dataset, root="it is not encrypted")
        if info.encryption_root != dataset:
            raise ZfsNotEncryptionRoot(
                dataset=dataset, root=f"its encryption root is {info.encryption_root}"
            )
        return info

    def encryption_roots(self) -> list[tuple[str, str]]:
        """(name, keystatus) of every encryption root in the imported pools."""
        return list(root_status(self.key_infos()).items())

    def key_infos(self) -> dict[str, KeyInfo]:
        """Every filesystem and volume of the imported pools with its encryption root, key
        status and format: one ``zfs list`` that spares the boot client a ``zfs get`` for the
        root's encryption root and one per key before loading it."""
        out = self._checked(
            [
                "list",
                "-H",
                "-p",
                "-o",
                "name,encryptionroot,keystatus,keyformat",
                "-t",
                "filesystem,volume",
            ],
            "(all)",
        )
        infos = {}
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) != 4:
                continue
            name, root, status, keyformat = fields
            infos[name] = KeyInfo(
                name,
                None if root in ("-", "") else root,
                status.replace("-", "none"),
                keyformat.replace("-", "none"),
            )
        return infos

    # --- keys ---------------------------------------------------------------------------------

    def load_key(
        self,
        root: str,
        key: bytes,
        *,
        verify_only: bool = False,
        info: KeyInfo | None = None,
        confirm: bool = True,
    ) -> None:
        """Load (or with ``verify_only``, dry-run check) the key of encryption root ``root``.
        ``info``: what key_infos() just said about it, instead of asking zfs again.
        ``confirm``: read the key status back after a load that exited 0."""
        if info is None or info.encryption_root != root:
            info = self.require_encryption_root(root)
        if not verify_only and info.keystatus == "available":
            raise ZfsKeyAlreadyLoaded(dataset=root)
        args = ["load-key", "-L", "prompt", *(["-n"] if verify_only else []), root]
        self._checked(args, root, stdin=_stdin_form(info.keyformat, key))
        if confirm and not verify_only and self.keystatus(root) != "available":
            raise ZfsError(detail=f"zfs reported success but the key of {root} is not loaded")

    def change_key(self, root: str, new_key: bytes, keyformat: str) -> None:
        """Re-wrap ``root``'s master key with ``new_key`` (the old key must be loaded)."""
        self.require_encryption_root(root)
        args = ["change-key", "-o", f"keyformat={keyformat}", "-o", "keylocation=prompt", root]
        self._checked(args, root, stdin=_stdin_form(keyformat, new_key))


def root_status(infos: Mapping[str, KeyInfo]) -> dict[str, str]:
    """keystatus of each encryption root in a Zfs.key_infos() listing."""
    return {name: info.keystatus for name, info in infos.items() if info.encryption_root == name}


def _stdin_form(keyformat: str, key: bytes) -> bytes:
    # zfs reads a raw key with fread (a newline would make it 33 bytes) and the others with
    # getline, which strips one trailing newline.
    return key if keyformat == "raw" else key + b"\n"
