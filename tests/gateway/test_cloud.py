"""The real gateway under gunicorn with the real twilio and azure SDKs, talking to local HTTPS
stand-ins through the production configuration (connect redirect + trustme CA)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.harness import protocol_client as client
from tests.harness.cloud_standins import AAD_HOST, PATH_SMS, VAULT_HOST, post_signed_sms
from tests.harness.gateway import RunningGateway, running_gateway

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
REPLAYED = "SM" + "5e" * 16


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("cloud")
    with running_gateway(directory, approver="twilio", secret_source="azure") as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def healthy_cloud(gw: RunningGateway) -> Iterator[None]:
    gw.standins.vault_mode = gw.standins.twilio_mode = "ok"
    yield
    gw.standins.vault_mode = gw.standins.twilio_mode = "ok"


@pytest.fixture(scope="module")
def host(gw: RunningGateway) -> client.Host:
    """Invited, enrolled, and the owner told by SMS (in Key Vault its own secret, zkv-nas01-...)."""
    host = client.Host(hostname="nas01")
    gw.admit(host)
    text = gw.notifications()[-1]
    assert "nas01" in text and "enrolled with your invite" in text and host.host_id in text
    return host


def state(gw: RunningGateway, boot: client.Boot) -> str:
    return str(client.poll(gw.url, boot.created.request_id).json()["state"])


def test_sms_approval_releases_the_key_vault_secret(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host, datasets=("tank/home", "tank/db"))
    created = boot.created
    sms = gw.standins.sms_sent[-1]
    assert sms["To"] == "+15550000001" and sms["From"] == "+15550000002"
    for fact in ("nas01", "127.0.0.1", "tank/home", "tank/db", "UTC", created.pin, "NO "):
        assert fact in sms["Body"]
    response = post_signed_sms(gw.url, created.pin)
    assert (response.status_code, response.text) == (200, EMPTY_TWIML)
    assert client.opened(boot, client.poll(gw.url, created.request_id, wait=5)) == gw.secret
    seen = " ".join(gw.standins.seen)
    assert f"{AAD_HOST} POST" in seen and f"{VAULT_HOST} GET /secrets/" in seen
    # one release per approval
    assert client.poll(gw.url, created.request_id).status_code == 401


def test_deny_reply(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host)
    assert gw.sms(f"NO {boot.created.pin}") == 200
    assert state(gw, boot) == "denied"


def test_every_reply_gets_the_same_answer(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host)
    answers = {
        post_signed_sms(gw.url, "999999x").text,  # garbage
        post_signed_sms(gw.url, boot.created.pin, sender="+15559999999").text,  # wrong sender
        post_signed_sms(gw.url, f"NO {boot.created.pin}").text,  # a real decision
    }
    assert answers == {EMPTY_TWIML}


def test_wrong_sender_is_ignored(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host)
    assert gw.sms(boot.created.pin, sender="+15559999999") == 200
    assert state(gw, boot) == "pending"
    assert any("sms_rejected" in line for line in gw.audit())
    gw.deny(boot.created.request_id)


@pytest.mark.parametrize("signature", [None, "forged", "tampered"])
def test_forged_or_missing_signature(
    gw: RunningGateway, host: client.Host, signature: str | None
) -> None:
    boot = client.unlock(gw.url, host)
    form = {"MessageSid": "SM1", "From": "+15550000001", "Body": boot.created.pin}
    headers = {} if signature is None else {"X-Twilio-Signature": "AAAA" + "=" * 24}
    if signature == "tampered":  # signed for another body
        from twilio.request_validator import RequestValidator

        from tests.harness.gateway import TWILIO_TOKEN

        signed = RequestValidator(TWILIO_TOKEN).compute_signature(
            gw.url + PATH_SMS, {**form, "Body": "000000"}
        )
        headers = {"X-Twilio-Signature": signed}
    response = requests.post(gw.url + PATH_SMS, data=form, headers=headers, timeout=10)
    assert response.status_code == 403
    assert state(gw, boot) == "pending"
    gw.deny(boot.created.request_id)


def test_replayed_message_sid(gw: RunningGateway, host: client.Host) -> None:
    first = client.unlock(gw.url, host)
    post_signed_sms(gw.url, f"NO {first.created.pin}", sid=REPLAYED)
    assert state(gw, first) == "denied"
    second = client.unlock(gw.url, host)
    post_signed_sms(gw.url, second.created.pin, sid=REPLAYED)  # same sid, new body
    assert state(gw, second) == "pending"
    assert any("sms_duplicate" in line for line in gw.audit())
    gw.deny(second.created.request_id)


def test_three_wrong_pins_deny(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host)
    wrong = "000000" if boot.created.pin != "000000" else "111111"
    for _ in range(2):
        gw.sms(wrong)
    assert state(gw, boot) == "pending"
    gw.sms(wrong)
    assert state(gw, boot) == "denied"
    gw.sms(boot.created.pin)  # too late: a denied request stays denied
    assert state(gw, boot) == "denied"


@pytest.mark.parametrize(
    ("mode", "cause"),
    [("403", "403 Forbidden"), ("404", "404 SecretNotFound"), ("timeout", "unreachable")],
)
def test_key_vault_failure(gw: RunningGateway, host: client.Host, mode: str, cause: str) -> None:
    boot = client.unlock(gw.url, host)
    gw.standins.vault_mode = mode
    gw.sms(boot.created.pin)
    response = client.poll(gw.url, boot.created.request_id, wait=5)
    assert (response.status_code, response.json()) == (503, {"error": "secret_unavailable"})
    assert state(gw, boot) == "failed"
    assert any("failed" in line and cause in line for line in gw.audit(boot.created.request_id))


def test_twilio_failure(gw: RunningGateway, host: client.Host) -> None:
    gw.standins.twilio_mode = "fail"
    boot = client.unlock(gw.url, host)
    assert (boot.response.status_code, boot.response.json()) == (
        503,
        {"error": "approver_unavailable"},
    )
    lines = gw.cli("requests", "--limit", "1").stdout
    assert " failed " in lines  # nothing left pending
    assert any("approver: twilio" in line for line in gw.audit())
