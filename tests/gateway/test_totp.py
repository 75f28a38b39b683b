"""TOTP for owners without a passkey: the code check (pure, fake clock) and the sms+totp
policy against the real gateway with Twilio's real SDK and signature."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from gateway import approvals, totp
from tests.harness import protocol_client as client
from tests.harness.gateway import running_gateway
from zkv import protocol

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits, as pyotp.random_base32 makes
NOW = 1_796_000_000.0  # a fixed instant, on a step boundary's inside


def code_at(at: float) -> str:
    return pyotp.TOTP(SECRET).at(at)


def test_current_and_neighbouring_steps_are_accepted() -> None:
    step = int(NOW // 30)
    for drift in (-30, 0, 30):
        assert totp.matching_step(SECRET, code_at(NOW + drift), NOW, None) == step + drift // 30
    for drift in (-90, -60, 60, 90):
        assert totp.matching_step(SECRET, code_at(NOW + drift), NOW, None) is None


def test_a_code_counts_once() -> None:
    step = totp.matching_step(SECRET, code_at(NOW), NOW, None)
    assert step is not None
    assert totp.matching_step(SECRET, code_at(NOW), NOW, step) is None
    assert totp.matching_step(SECRET, code_at(NOW - 30), NOW, step) is None  # older: spent too
    assert totp.matching_step(SECRET, code_at(NOW + 30), NOW, step) == step + 1


@pytest.mark.parametrize("code", ["12345", "1234567", "١٢٣٤٥٦", "12345a", ""])
def test_malformed_codes_are_refused(code: str) -> None:
    assert totp.matching_step(SECRET, code, NOW, None) is None


def test_a_reply_may_carry_a_totp_code() -> None:
    assert approvals.parse_reply("482913 123456") == approvals.Reply(True, "482913", "123456")
    assert approvals.parse_reply("yes 482913") == approvals.Reply(True, "482913", None)
    assert approvals.parse_reply("482913 12345") is None


def test_sms_totp_policy_needs_a_valid_unused_code(tmp_path: Path) -> None:
    with running_gateway(
        tmp_path, approver="twilio", settings={"APPROVAL_POLICY": "sms+totp", "MAX_WRONG_PINS": 5}
    ) as gw:
        out = gw.cli("owners", "add", "dave", "--totp").stdout
        uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
        secret = parse_qs(urlsplit(uri).query)["secret"][0]
        assert "█" in out or "▀" in out or "▄" in out  # the QR code, drawn in the terminal
        host = client.Host(hostname="totp01")
        gw.admit(host)

        def state(boot: client.Boot) -> str:
            return str(client.poll(gw.url, boot.created.request_id).json()["state"])

        boot = client.unlock(gw.url, host)
        pin = boot.created.pin
        assert gw.sms(pin) == 200  # the PIN alone: the host showed it, it proves nothing
        assert state(boot) == protocol.STATE_PENDING
        wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"
        assert gw.sms(f"{pin} {wrong}") == 200
        assert state(boot) == protocol.STATE_PENDING
        code = pyotp.TOTP(secret).now()
        assert gw.sms(f"{pin} {code}") == 200
        assert state(boot) == protocol.STATE_APPROVED
        assert any("dave with sms+totp" in line for line in gw.audit(boot.created.request_id))
        # The same code again, for another request: spent.
        second = client.unlock(gw.url, host)
        assert gw.sms(f"{second.created.pin} {code}") == 200
        assert state(second) == protocol.STATE_PENDING
        assert sum("no valid TOTP code" in line for line in gw.audit()) == 3
