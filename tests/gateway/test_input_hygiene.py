"""What a booting host or a captured webhook can carry into the gateway, against the real gateway
under gunicorn with the real twilio SDK (SMS stand-in): names that hide the source IP, a webhook
re-split into new MessageSids, PINs in other scripts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness import protocol_client as client
from tests.harness.cloud_standins import post_signed_sms, post_sms_form, signed_sms
from tests.harness.gateway import RunningGateway, running_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path_factory.mktemp("hygiene"), approver="twilio") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def host(gw: RunningGateway) -> client.Host:
    host = client.Host(hostname="db01")
    gw.admit(host)
    return host


def state(gw: RunningGateway, boot: client.Boot) -> str:
    return str(client.poll(gw.url, boot.created.request_id).json()["state"])


@pytest.mark.parametrize(
    ("hostname", "datasets"),
    [("db01\n", ("tank/a",)), ("db01", ("tank/a\n",)), ("db01", ("tank/a", "tank/\nb"))],
)
def test_a_newline_in_a_name_is_refused(
    gw: RunningGateway, host: client.Host, hostname: str, datasets: tuple[str, ...]
) -> None:
    sent = len(gw.notifications())
    liar = client.Host(hostname=hostname, private_key=host.private_key)
    response = client.unlock(gw.url, liar, datasets=datasets).response
    assert (response.status_code, response.json()) == (400, {"error": "bad_request"})
    assert len(gw.notifications()) == sent  # nothing reached the owner


def test_a_newline_in_an_enrolling_hostname_is_refused(gw: RunningGateway) -> None:
    token = gw.invite("db01x")
    response = client.enroll(gw.url, client.Host(hostname="db01x\n"), token)
    assert (response.status_code, response.json()) == (400, {"error": "bad_request"})


def test_the_sms_shows_the_source_ip_first_and_stays_short(
    gw: RunningGateway, host: client.Host
) -> None:
    # Legal ZFS names (spaces are allowed), as long as the protocol lets them be.
    datasets = tuple(f"tank/{'x' * 200}{' ' * 40}{i:02d}" for i in range(14))
    boot = client.unlock(gw.url, host, datasets=datasets)
    assert boot.response.status_code == 201
    text = gw.notifications()[-1]
    assert text.startswith("zkv: from 127.0.0.1, host db01 ")
    assert "and 13 more" in text and boot.created.pin in text
    assert len(text) <= 320 and "\n" not in text and " " * 3 not in text
    gw.deny(boot.created.request_id)


def test_a_second_open_request_of_a_host_is_flagged_in_the_owners_message(
    gw: RunningGateway,
) -> None:
    """A thief with a copy of the host's key times a request to look like its boot: the owner
    is told that another request of the host is open, in the message itself."""
    host = client.Host(hostname="twice02")
    gw.admit(host)
    first = client.unlock(gw.url, host)
    assert first.response.status_code == 201
    assert "WARNING" not in gw.notifications()[-1]
    time.sleep(1.1)  # past the host's one request a second
    second = client.unlock(gw.url, host)
    assert second.response.status_code == 201
    text = gw.notifications()[-1]
    assert second.created.pin in text and "WARNING: 1 other open request for this host." in text
    assert len(text) <= 320, text
    for boot in (first, second):
        gw.deny(boot.created.request_id)


def test_a_captured_webhook_cannot_be_resplit_into_new_message_sids(
    gw: RunningGateway, host: client.Host
) -> None:
    """Twilio signs the URL and name+value of each field with no separators, so moving the
    boundary between a MessageSid and the field after it keeps the signature: each such copy
    of one captured wrong reply would be a new strike against every open request."""
    boot = client.unlock(gw.url, host)
    wrong = "000000" if boot.created.pin != "000000" else "111111"
    form, signature = signed_sms(gw.url, wrong)
    assert post_sms_form(gw.url, form, signature).status_code == 200  # the owner's typo
    sid, to = form.pop("MessageSid"), form.pop("To")
    media = form.pop("NumMedia")
    resplit = [
        {**form, "MessageSid": f"{sid}NumMedia{media}", "To": to},
        {**form, "MessageSid": f"{sid}NumMedia{media}To{to}"},
    ]
    assert [post_sms_form(gw.url, f, signature).status_code for f in resplit] == [403, 403]
    assert state(gw, boot) == "pending"
    gw.deny(boot.created.request_id)


@pytest.mark.parametrize(
    "change",
    [
        {"MessageSid": "SMnot-a-sid"},
        {"MessageSid": "XX" + "0" * 32},
        {"Unexpected": "field"},
        {"AccountSid": "AC" + "1" * 32},  # another account's message
    ],
)
def test_a_webhook_that_is_not_twilios_shape_is_refused(
    gw: RunningGateway, host: client.Host, change: dict[str, str]
) -> None:
    """Even correctly signed (only the token's holder could), it is refused."""
    from twilio.request_validator import RequestValidator

    from tests.harness.cloud_standins import PATH_SMS
    from tests.harness.gateway import TWILIO_TOKEN

    boot = client.unlock(gw.url, host)
    form = {**signed_sms(gw.url, boot.created.pin)[0], **change}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(gw.url + PATH_SMS, form)
    assert post_sms_form(gw.url, form, signature).status_code == 403
    assert state(gw, boot) == "pending"
    gw.deny(boot.created.request_id)


def test_a_pin_in_other_digits_does_not_approve(gw: RunningGateway, host: client.Host) -> None:
    boot = client.unlock(gw.url, host)
    arabic = boot.created.pin.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    assert post_signed_sms(gw.url, arabic).status_code == 200
    assert state(gw, boot) == "pending"
    gw.deny(boot.created.request_id)
