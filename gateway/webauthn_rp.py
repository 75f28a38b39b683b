"""The WebAuthn relying party: py_webauthn behind four calls, with user verification required.

The relying party is the approval page's origin (APPROVAL_URL): its host is the RP ID, so a
passkey made for this gateway is useless on any other site, and an assertion the browser made
for another origin fails here. Challenges are 32 random bytes, bound by the caller to one link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import webauthn
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, options_to_json
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidJSONStructure,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

TIMEOUT_MS = 120_000
_REQUIRED = UserVerificationRequirement.REQUIRED


class CeremonyFailed(Exception):
    """The browser's answer does not verify (the caller shows one uniform refusal)."""


@dataclass(frozen=True)
class NewPasskey:
    credential_id: str  # base64url
    public_key: str  # base64url COSE key
    sign_count: int


class RelyingParty:
    def __init__(self, approval_url: str) -> None:
        parts = urlsplit(approval_url)
        self.rp_id = parts.hostname or ""
        self.origin = f"{parts.scheme}://{parts.netloc}"

    def registration_options(self, user_id: bytes, name: str, exclude: list[str]) -> str:
        """JSON for navigator.credentials.create; the challenge is inside (see challenge_of)."""
        options = webauthn.generate_registration_options(
            rp_id=self.rp_id,
            rp_name="zkv gateway",
            user_id=user_id,
            user_name=name,
            timeout=TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.DISCOURAGED, user_verification=_REQUIRED
            ),
            exclude_credentials=[_descriptor(c) for c in exclude],
        )
        return options_to_json(options)

    def verify_registration(self, answer: Any, challenge: str) -> NewPasskey:
        try:
            verified = webauthn.verify_registration_response(
                credential=answer,
                expected_challenge=base64url_to_bytes(challenge),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                require_user_verification=True,
            )
        except (InvalidRegistrationResponse, InvalidJSONStructure, ValueError, KeyError) as exc:
            raise CeremonyFailed(type(exc).__name__) from None
        return NewPasskey(
            bytes_to_base64url(verified.credential_id),
            bytes_to_base64url(verified.credential_public_key),
            verified.sign_count,
        )

    def authentication_options(self, credential_ids: list[str]) -> str:
        options = webauthn.generate_authentication_options(
            rp_id=self.rp_id,
            timeout=TIMEOUT_MS,
            allow_credentials=[_descriptor(c) for c in credential_ids],
            user_verification=_REQUIRED,
        )
        return options_to_json(options)

    def verify_authentication(
        self, answer: Any, challenge: str, public_key: str, sign_count: int
    ) -> int:
        """The authenticator's new sign count, once the assertion verifies."""
        try:
            verified = webauthn.verify_authentication_response(
                credential=answer,
                expected_challenge=base64url_to_bytes(challenge),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=base64url_to_bytes(public_key),
                credential_current_sign_count=sign_count,
                require_user_verification=True,
            )
        except (InvalidAuthenticationResponse, InvalidJSONStructure, ValueError, KeyError) as exc:
            raise CeremonyFailed(type(exc).__name__) from None
        return int(verified.new_sign_count)


def challenge_of(options_json: str) -> str:
    return str(json.loads(options_json)["challenge"])


def credential_id_of(answer: Any) -> str:
    """The credential an assertion names (checked against the owner's own passkeys)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("rawId"), str):
        raise CeremonyFailed("no rawId")
    return str(answer["rawId"])


def _descriptor(credential_id: str) -> PublicKeyCredentialDescriptor:
    return PublicKeyCredentialDescriptor(id=base64url_to_bytes(credential_id))
