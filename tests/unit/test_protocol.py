"""Wire protocol v1: round trips, signatures, strict shapes, sealed releases."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zkv import crypto, protocol
from zkv.protocol import (
    EnrollRequest,
    PollResult,
    ProtocolViolation,
    UnlockCreated,
    UnlockRequest,
)

HOST_PRIVATE, HOST_PUBLIC = crypto.ed25519_generate()
EPH_PRIVATE, EPH_PUBLIC = crypto.x25519_generate()
CHALLENGE = "c0" * 40  # opaque to the client; its shape is all the protocol checks


def unlock_json(**overrides: Any) -> dict[str, Any]:
    datasets = ["rpool/ROOT/debian"]
    request = UnlockRequest.create(HOST_PRIVATE, "db01", datasets, EPH_PUBLIC, CHALLENGE)
    return {**request.to_json(), **overrides}


def test_unlock_request_round_trip_and_signature() -> None:
    parsed = UnlockRequest.from_json(unlock_json())
    parsed.verify(HOST_PUBLIC)
    assert parsed.host_id == protocol.host_id_of(HOST_PUBLIC)
    assert parsed.datasets == ("rpool/ROOT/debian",)


@pytest.mark.parametrize(
    "field,value",
    [
        ("hostname", "db02"),
        ("datasets", ["tank/secure"]),
        ("challenge", "0" * 80),
        ("ephemeral_key", crypto.x25519_generate()[1]),
    ],
)
def test_any_changed_field_breaks_the_signature(field: str, value: Any) -> None:
    original = UnlockRequest.from_json(unlock_json())
    changed = original._replace(**{field: value})
    with pytest.raises(crypto.BadSignature):
        changed.verify(HOST_PUBLIC)


def test_signature_by_another_key_is_refused() -> None:
    other_private, _ = crypto.ed25519_generate()
    forged = UnlockRequest.create(other_private, "db01", [], EPH_PUBLIC, CHALLENGE)
    with pytest.raises(crypto.BadSignature):
        # claims the enrolled host's id, but was signed by another key
        forged._replace(host_id=protocol.host_id_of(HOST_PUBLIC)).verify(HOST_PUBLIC)
    with pytest.raises(crypto.BadSignature):
        forged.verify(HOST_PUBLIC)


def test_enroll_signature_cannot_be_replayed_as_unlock() -> None:
    enroll = EnrollRequest.create("db01", HOST_PRIVATE, protocol.new_invite_token(), CHALLENGE)
    enroll.verify()
    # the same signature bytes under the unlock context never verify
    with pytest.raises(crypto.BadSignature):
        crypto.ed25519_verify(
            HOST_PUBLIC,
            enroll.signature,
            protocol.CONTEXT_UNLOCK + protocol.canonical(enroll.body()),
        )


BAD_UNLOCK_BODIES: list[dict[str, Any]] = [
    {"extra": 1},
    {"v": 2},
    {"hostname": "bad host name"},
    {"hostname": "-leadingdash"},
    {"hostname": "db01\n"},  # "$" matches before a trailing newline; fullmatch does not
    {"datasets": ["tank/a\n"]},
    {"datasets": ["tank/a", "rpool/ROOT\n"]},
    {"datasets": ["/absolute"]},
    {"datasets": ["ok", 3]},
    {"datasets": ["a"] * (protocol.MAX_DATASETS + 1)},
    {"ephemeral_key": "AAAA"},
    {"ephemeral_key": "not base64!"},
    {"challenge": "XYZ"},
    {"challenge": "C0" * 40},
    {"challenge": "c0" * 40 + "\n"},
    {"challenge": 12},
    {"signature": "AAAA"},
    {"host_id": "ABCDEF" * 6},
]


@pytest.mark.parametrize("overrides", BAD_UNLOCK_BODIES)
def test_malformed_unlock_requests_are_violations(overrides: dict[str, Any]) -> None:
    with pytest.raises(ProtocolViolation):
        UnlockRequest.from_json(unlock_json(**overrides))


def test_missing_field_is_a_violation() -> None:
    body = unlock_json()
    del body["challenge"]
    with pytest.raises(ProtocolViolation):
        UnlockRequest.from_json(body)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=10,
    )
)
@settings(max_examples=200)
def test_arbitrary_json_never_raises_anything_but_violation(raw: Any) -> None:
    for parser in (
        UnlockRequest.from_json,
        EnrollRequest.from_json,
        UnlockCreated.from_json,
        PollResult.from_json,
    ):
        try:
            parser(raw)
        except ProtocolViolation:
            pass


def test_release_opens_only_for_its_request_and_key() -> None:
    request_id = "ab" * 16
    sealed = protocol.seal_release(request_id, EPH_PUBLIC, b"f" * 64)
    result = PollResult.from_json(PollResult(protocol.STATE_APPROVED, sealed).to_json())
    assert result.release is not None
    assert protocol.open_release(request_id, EPH_PRIVATE, result.release) == b"f" * 64
    with pytest.raises(crypto.DecryptionFailed):
        protocol.open_release("cd" * 16, EPH_PRIVATE, result.release)
    with pytest.raises(crypto.DecryptionFailed):
        protocol.open_release(request_id, crypto.x25519_generate()[0], result.release)
    tampered = copy.copy(result.release)
    flipped = bytes([tampered.ciphertext[0] ^ 1]) + tampered.ciphertext[1:]
    with pytest.raises(crypto.DecryptionFailed):
        protocol.open_release(
            request_id,
            EPH_PRIVATE,
            crypto.Sealed(tampered.ephemeral_public, tampered.nonce, flipped),
        )


@pytest.mark.parametrize("state", [s for s in protocol.STATES if s != protocol.STATE_APPROVED])
def test_non_approved_states_carry_nothing(state: str) -> None:
    assert PollResult.from_json({"state": state}) == PollResult(state)
    with pytest.raises(ProtocolViolation):
        PollResult.from_json({"state": state, "release": {}})


def test_unlock_created_shape() -> None:
    created = UnlockCreated("ab" * 16, "012345", 1_700_000_000)
    assert UnlockCreated.from_json(created.to_json()) == created
    with pytest.raises(ProtocolViolation):
        UnlockCreated.from_json({**created.to_json(), "pin": "12a456"})


def digits(zero: int) -> str:
    """012345 in the script whose zero is ``zero`` (str.isdigit() says yes to each)."""
    return "".join(chr(zero + int(d)) for d in "012345")


@pytest.mark.parametrize(
    "pin", [digits(0x0660), digits(0x0966), digits(0xFF10), "¹²³⁴⁵⁶", "012345\n", "123"]
)
def test_a_pin_is_ascii_digits_only(pin: str) -> None:
    created = UnlockCreated("ab" * 16, "012345", 1_700_000_000).to_json()
    with pytest.raises(ProtocolViolation):
        UnlockCreated.from_json({**created, "pin": pin})


def test_challenge_answer_shape() -> None:
    answer = protocol.Challenge(CHALLENGE, 1_800_000_000)
    assert protocol.Challenge.from_json(answer.to_json()) == answer
    for bad in ({"challenge": CHALLENGE}, {**answer.to_json(), "now": "1"}, {"now": 1}):
        with pytest.raises(ProtocolViolation):
            protocol.Challenge.from_json(bad)
    with pytest.raises(ProtocolViolation):
        UnlockRequest.create(HOST_PRIVATE, "db01", [], EPH_PUBLIC, "short")


# --- version 2: the boot context ------------------------------------------------------------

BOOT = protocol.BootContext(("init", "rd.break"), "ab" * 32)


def unlock_v2_json(**overrides: Any) -> dict[str, Any]:
    request = UnlockRequest.create(HOST_PRIVATE, "db01", ["rpool"], EPH_PUBLIC, CHALLENGE, BOOT)
    return {**request.to_json(), **overrides}


def test_boot_context_round_trip_and_signed() -> None:
    body = unlock_v2_json()
    assert body["v"] == protocol.VERSION_BOOT
    assert body["boot_flags"] == ["init", "rd.break"] and body["cmdline_sha256"] == "ab" * 32
    parsed = UnlockRequest.from_json(body)
    parsed.verify(HOST_PUBLIC)
    assert parsed.boot == BOOT and parsed.boot.warnings == ("init", "rd.break")
    # A flag dropped on the way (a thief hiding rd.break, a proxy) breaks the signature.
    for hidden in (BOOT._replace(flags=("init",)), BOOT._replace(cmdline_sha256="cd" * 32)):
        with pytest.raises(crypto.BadSignature):
            parsed._replace(boot=hidden).verify(HOST_PUBLIC)
    # Nor can it pass as a version 1 request without the fields.
    v1 = {k: v for k, v in body.items() if k not in ("boot_flags", "cmdline_sha256")}
    with pytest.raises(crypto.BadSignature):
        UnlockRequest.from_json({**v1, "v": protocol.VERSION}).verify(HOST_PUBLIC)


def test_a_version_1_request_still_parses_and_reports_no_boot() -> None:
    parsed = UnlockRequest.from_json(unlock_json())
    assert parsed.boot is None
    parsed.verify(HOST_PUBLIC)


@pytest.mark.parametrize(
    "overrides",
    [
        {"boot_flags": ["rd.break", "init"]},  # not sorted
        {"boot_flags": ["init", "init"]},
        {"boot_flags": ["init=/bin/sh"]},  # names only, never values
        {"boot_flags": ["made-up"]},
        {"boot_flags": "rd.break"},
        {"boot_flags": [1]},
        {"cmdline_sha256": "AB" * 32},
        {"cmdline_sha256": "ab" * 31},
        {"cmdline_sha256": "ab" * 32 + "\n"},
        {"cmdline_sha256": None},
        {"v": 3},
        {"v": True},
    ],
)
def test_malformed_boot_contexts_are_violations(overrides: dict[str, Any]) -> None:
    with pytest.raises(ProtocolViolation):
        UnlockRequest.from_json(unlock_v2_json(**overrides))


def test_version_2_needs_both_boot_fields_and_version_1_neither() -> None:
    body = unlock_v2_json()
    del body["cmdline_sha256"]
    with pytest.raises(ProtocolViolation):
        UnlockRequest.from_json(body)
    with pytest.raises(ProtocolViolation):
        UnlockRequest.from_json(unlock_json(boot_flags=[]))


def test_unlock_created_says_what_the_code_is_and_where_to_approve() -> None:
    created = UnlockCreated("ab" * 16, "012345", 1_700_000_000, protocol.CODE_REQUEST, "gw.example")
    assert UnlockCreated.from_json(created.to_json()) == created
    old = UnlockCreated("ab" * 16, "012345", 1_700_000_000)
    assert set(old.to_json()) == {"request_id", "pin", "expires_at"}  # what v1 clients take
    for bad in ({"code_kind": "secret"}, {"approve_at": "x" * (protocol.MAX_WHERE + 1)}):
        with pytest.raises(ProtocolViolation):
            UnlockCreated.from_json({**created.to_json(), **bad})
    with pytest.raises(ProtocolViolation):
        UnlockCreated.from_json({**old.to_json(), "approve_at": "gw"})  # without code_kind
