"""Where the released secret comes from: Azure Key Vault in production, a local file for demos.

A source returns the secret as bytes, stripped of surrounding whitespace; errors become
``SecretUnavailable`` whose message names the cause (status, error code) and never the value.
``disable`` is the remote wipe's half in the vault: the secret stays, but no longer reads.
``set`` writes a new value (``zkv rotate --repository-key``, gateway/rotations.py): in Key Vault a
new version, which ``get`` (no version named: the newest) reads from then on; the older
versions stay, as Key Vault keeps them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from zkv.errors import FileWriteError
from zkv.fsutil import atomic_write, fsync_dir
from zkv.protocol import MAX_SECRET

from .config import DISABLED_SUFFIX, Settings, is_secret_name
from .errors import SecretUnavailable


class SecretSource(Protocol):
    def get(self, name: str | None) -> bytes:
        """The secret called ``name``, or the configured default when None."""
        ...

    def disable(self, name: str | None) -> str:
        """Make the secret unreadable (every version); says what was done."""
        ...

    def set(self, name: str | None, secret: bytes) -> None:
        """Make ``secret`` the value that ``get`` returns from now on."""
        ...


class FileSecretSource:
    """SECRET_FILE holds the default secret; a named secret is a file beside it."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _path(self, name: str | None) -> Path:
        if name is not None and not is_secret_name(name):
            raise SecretUnavailable("invalid secret name")
        return self.path if name is None else self.path.parent / name

    def get(self, name: str | None) -> bytes:
        path = self._path(name)
        try:
            return _checked(path.read_bytes())
        except OSError as exc:
            raise SecretUnavailable(f"cannot read {path}: {exc.strerror}") from None

    def disable(self, name: str | None) -> str:
        path = self._path(name)
        disabled = path.with_name(path.name + DISABLED_SUFFIX)
        try:
            os.replace(path, disabled)  # kept, not deleted: the owner may still need the key
            fsync_dir(path.parent)
        except FileNotFoundError:
            if disabled.exists():
                return f"{disabled} (already disabled)"
            raise SecretUnavailable(f"no secret file {path}") from None
        except OSError as exc:
            raise SecretUnavailable(f"cannot rename {path}: {exc.strerror}") from None
        return f"renamed to {disabled}"

    def set(self, name: str | None, secret: bytes) -> None:
        path = self._path(name)
        try:
            atomic_write(path, _checked(secret) + b"\n", mode=0o600)
        except FileWriteError as exc:
            raise SecretUnavailable(f"cannot write {path}: {exc.kwargs['detail']}") from None


class AzureSecretSource:
    """azure-keyvault-secrets with a ManagedIdentityCredential or a ClientSecretCredential."""

    def __init__(self, settings: Settings) -> None:
        # Imported here: the SDKs are heavy and only this backend needs them.
        from azure.identity import ClientSecretCredential, ManagedIdentityCredential
        from azure.keyvault.secrets import SecretClient

        self.default_name = settings.KEY_VAULT_SECRET
        transport: dict[str, Any] = {
            "connection_timeout": settings.KEY_VAULT_TIMEOUT,
            "read_timeout": settings.KEY_VAULT_TIMEOUT,
            "retry_total": settings.KEY_VAULT_RETRIES,
        }
        credential: Any
        if settings.credential_kind == "client-secret":
            credential = ClientSecretCredential(
                settings.AAD_TENANT_ID,
                settings.AAD_CLIENT_ID,
                settings.AAD_CLIENT_SECRET,
                authority=settings.AAD_AUTHORITY_HOST_URI,
                **transport,
            )
        else:
            credential = ManagedIdentityCredential(
                client_id=settings.AAD_CLIENT_ID or None, **transport
            )
        self.client = SecretClient(settings.KEY_VAULT_URI, credential, **transport)

    def get(self, name: str | None) -> bytes:
        with _vault_errors():
            value = self.client.get_secret(name or self.default_name).value
        if value is None:
            raise SecretUnavailable("key vault returned no value")
        return _checked(value.encode())

    def disable(self, name: str | None) -> str:
        name = name or self.default_name
        with _vault_errors():
            versions = [v.version for v in self.client.list_properties_of_secret_versions(name)]
            for version in versions:  # an older version may hold the same key
                self.client.update_secret_properties(name, version, enabled=False)
        if not versions:
            raise SecretUnavailable(f"key vault has no secret {name}")
        return f"key vault secret {name}: {len(versions)} version(s) disabled"

    def set(self, name: str | None, secret: bytes) -> None:
        with _vault_errors():
            self.client.set_secret(name or self.default_name, _checked(secret).decode("ascii"))


@contextmanager
def _vault_errors() -> Iterator[None]:
    """Key Vault's errors as SecretUnavailable: the status and error code, never a message."""
    from azure.core.exceptions import AzureError, HttpResponseError

    try:
        yield
    except HttpResponseError as exc:
        code = exc.error.code if exc.error is not None else ""
        raise SecretUnavailable(f"key vault answered {exc.status_code} {code}".strip()) from None
    except AzureError as exc:
        raise SecretUnavailable(f"key vault unreachable: {type(exc).__name__}") from None


def _checked(secret: bytes) -> bytes:
    secret = secret.strip()
    if not secret or len(secret) > MAX_SECRET:
        raise SecretUnavailable(f"secret is empty or longer than {MAX_SECRET} bytes")
    return secret


def from_settings(settings: Settings) -> SecretSource:
    if settings.SECRET_SOURCE == "file":  # noqa: S105
        return FileSecretSource(settings.SECRET_FILE)
    return AzureSecretSource(settings)
