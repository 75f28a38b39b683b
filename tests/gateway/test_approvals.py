"""The pure approval state machine, with a fake clock (plain numbers)."""

from __future__ import annotations

import pytest

from gateway import approvals
from gateway.approvals import NotAllowed, Reply

T0 = 1000.0


def fresh() -> approvals.Approval:
    return approvals.new("r" * 32, approvals.KIND_UNLOCK, "123456", T0, ttl=600)


def test_approve_then_release_once() -> None:
    a = approvals.answer(fresh(), Reply(True, "123456"), T0 + 1)
    assert (a.state, a.reason) == ("approved", "owner")
    released = approvals.release(a, T0 + 2)
    assert released.released
    with pytest.raises(NotAllowed):
        approvals.release(released, T0 + 3)


def test_deny_reply() -> None:
    assert approvals.answer(fresh(), Reply(False, "123456"), T0).state == "denied"


def test_wrong_pin_is_not_an_answer() -> None:
    with pytest.raises(NotAllowed):
        approvals.answer(fresh(), Reply(True, "654321"), T0)


def test_three_strikes() -> None:
    a = fresh()
    for n in (1, 2):
        a = approvals.strike(a, T0, max_wrong=3)
        assert (a.state, a.wrong_pins) == ("pending", n)
    a = approvals.strike(a, T0, max_wrong=3)
    assert (a.state, a.reason) == ("denied", "wrong-pins")
    with pytest.raises(NotAllowed):
        approvals.answer(a, Reply(True, "123456"), T0)


def test_expiry_is_default_deny() -> None:
    a = fresh()
    assert approvals.observe(a, T0 + 599).state == "pending"
    assert approvals.observe(a, T0 + 600).state == "expired"
    with pytest.raises(NotAllowed):
        approvals.answer(a, Reply(True, "123456"), T0 + 600)


def test_an_approval_cannot_be_banked_past_expiry() -> None:
    a = approvals.answer(fresh(), Reply(True, "123456"), T0 + 1)
    assert approvals.observe(a, T0 + 600).state == "expired"
    with pytest.raises(NotAllowed):
        approvals.release(a, T0 + 600)


def test_fail_and_terminal_states() -> None:
    assert approvals.fail(fresh(), T0, "approver: down").state == "failed"
    denied = approvals.deny(fresh(), T0, "owner")
    with pytest.raises(NotAllowed):
        approvals.fail(denied, T0, "x")
    with pytest.raises(NotAllowed):
        approvals.deny(denied, T0, "owner")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("123456", Reply(True, "123456")),
        (" Yes  123456 ", Reply(True, "123456")),
        ("NO 123456", Reply(False, "123456")),
        ("no123456", Reply(False, "123456")),
        ("deny 123456", Reply(False, "123456")),
        ("hello", None),
        ("123", None),
        ("maybe 123456", None),
    ],
)
def test_parse_reply(body: str, expected: Reply | None) -> None:
    assert approvals.parse_reply(body) == expected
