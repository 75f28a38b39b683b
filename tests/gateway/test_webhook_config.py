"""Webhook URL reconstruction behind a proxy, configuration layering and start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from gateway import config
from gateway.errors import ConfigError
from tests.harness.cloud_standins import twilio_settings
from tests.harness.gateway import OWNER, REPO, TWILIO_ACCOUNT, TWILIO_TOKEN

FORM = {"MessageSid": "SM" + "0" * 32, "AccountSid": TWILIO_ACCOUNT, "From": OWNER, "Body": "hi"}


def signed(url: str) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, FORM)}


def test_public_url(env_factory: Any) -> None:
    env = env_factory(**twilio_settings(), PUBLIC_URL="https://gw.example.org")
    public = "https://gw.example.org/v1/twilio/sms"
    assert env.http.post("/v1/twilio/sms", data=FORM, headers=signed(public)).status_code == 200
    internal = "http://localhost/v1/twilio/sms"
    assert env.http.post("/v1/twilio/sms", data=FORM, headers=signed(internal)).status_code == 403


@pytest.mark.parametrize(("proxies", "status"), [("127.0.0.1", 200), ("192.0.2.10", 403)])
def test_a_trusted_proxy_restores_the_public_url(
    env_factory: Any, proxies: str, status: int
) -> None:
    """The test client's address is 127.0.0.1: a proxy of ours, or a client like any other."""
    env = env_factory(**twilio_settings(), TRUSTED_PROXY_ADDRESSES=proxies)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.org"}
    headers = {**forwarded, **signed("https://gw.example.org/v1/twilio/sms")}
    assert env.http.post("/v1/twilio/sms", data=FORM, headers=headers).status_code == status


def test_webhook_is_closed_without_twilio(env: Any) -> None:
    assert env.http.post("/v1/twilio/sms", data=FORM).status_code == 403


def test_layering(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("k" * 64)
    conf = tmp_path / "c.py"
    conf.write_text(
        f"SECRET_SOURCE = 'file'\nSECRET_FILE = {str(secret)!r}\nAPPROVER = 'console'\n"
        "PIN_LENGTH = 8\nREQUEST_TTL = 100\nDEBUG = True\n"
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "twilio-token").write_text("from-credential\n")
    env = {
        "CONFIG_FILE": str(conf),
        "ZKV_PIN_LENGTH": "7",
        "CREDENTIALS_DIRECTORY": str(creds),
        "ZKV_TWILIO_TOKEN": "from-env",
        "ZKV_UNRELATED": "ignored",
    }
    s = config.load(environ=env)
    assert (s.PIN_LENGTH, s.REQUEST_TTL, s.TWILIO_TOKEN) == (7, 100, "from-credential")
    assert "from-credential" not in repr(s)


def test_packaged_settings_file_loads(tmp_path: Path) -> None:
    """deploy/gateway.py (the package's /etc/zkv-gateway/gateway.py) names only real settings;
    with a vault, a secret name and Twilio filled in as the admin would, it validates."""
    conf = tmp_path / "gateway.py"
    conf.write_text(
        (REPO / "deploy/gateway.py").read_text()
        + 'KEY_VAULT_URI = "https://v.vault.azure.net"\nKEY_VAULT_SECRET = "host1"\n'
        + f'TWILIO_ACCOUNT_ID = "{TWILIO_ACCOUNT}"\nSMS_FROM = "+15550000002"\n'
        + f'SMS_TO = "{OWNER}"\nPUBLIC_URL = "https://gw.example.org"\n'
        + 'TRUSTED_PROXY_ADDRESSES = "127.0.0.1"\n'
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "twilio-token").write_text(TWILIO_TOKEN)
    s = config.load(environ={"CONFIG_FILE": str(conf), "CREDENTIALS_DIRECTORY": str(creds)})
    assert (s.SECRET_SOURCE, s.APPROVER) == ("azure", "twilio")
    assert s.credential_kind == "managed-identity"


def test_empty_credential_counts_as_unset(tmp_path: Path) -> None:
    """The package makes both credential files empty (LoadCredential= needs them to exist)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "twilio-token").write_text("")
    (creds / "aad-client-secret").write_text("\n")
    secret = tmp_path / "secret"
    secret.write_text("k" * 64)
    env = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "ZKV_TWILIO_TOKEN": "from-env",
        "ZKV_SECRET_SOURCE": "file",
        "ZKV_SECRET_FILE": str(secret),
        "ZKV_APPROVER": "console",
    }
    s = config.load(environ=env)
    assert (s.TWILIO_TOKEN, s.AAD_CLIENT_SECRET) == ("from-env", "")
    assert s.credential_kind == "managed-identity"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "KEY_VAULT_URI is required"),
        ({"ZKV_SECRET_SOURCE": "file", "ZKV_SECRET_FILE": "/nonexistent"}, "not a readable file"),
        (
            {
                "ZKV_SECRET_SOURCE": "file",
                "ZKV_SECRET_FILE": "/etc/hostname",
                "ZKV_APPROVER": "auto",
            },
            "ALLOW_AUTO_APPROVER",
        ),
        (
            {
                "ZKV_SECRET_SOURCE": "file",
                "ZKV_SECRET_FILE": "/etc/hostname",
                "ZKV_PIN_LENGTH": "six",
            },
            "PIN_LENGTH must be a number",
        ),
        (
            {"ZKV_SECRET_SOURCE": "file", "ZKV_SECRET_FILE": "/etc/hostname", "ZKV_SMS_TO": "12"},
            "TWILIO_ACCOUNT_ID is required",
        ),
        (
            {
                "ZKV_SECRET_SOURCE": "file",
                "ZKV_SECRET_FILE": "/etc/hostname",
                "ZKV_APPROVER": "console",
                "ZKV_REFUSE_BOOT_FLAGS": "rd.break, init=/bin/sh",
            },
            "REFUSE_BOOT_FLAGS: unknown boot flag 'init=/bin/sh'",
        ),
        (
            {
                "ZKV_SECRET_SOURCE": "file",
                "ZKV_SECRET_FILE": "/etc/hostname",
                "ZKV_APPROVER": "console",
                "ZKV_APPROVE_AT": "gw\x1b[2J",
            },
            "APPROVE_AT must be printable",
        ),
    ],
)
def test_invalid_configuration(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=environ)


def test_cli_reports_configuration_errors_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "ZKV_APPROVER": "sms"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.startswith("zkv-gateway: configuration error:")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_wrong_pin_is_a_strike(env: Any, tmp_path: Path) -> None:
    created = env.unlock(env.enrolled())[0].get_json()
    from gateway.cli import main

    conf = tmp_path / "cli.py"
    conf.write_text("".join(f"{k} = {v!r}\n" for k, v in env.gateway.settings.__dict__.items()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONFIG_FILE", str(conf))
        assert main(["approve", created["request_id"], "00000000"]) == 5
        assert main(["deny", created["request_id"]]) == 0
        assert main(["approve", created["request_id"], created["pin"]]) == 5
    assert env.poll(created["request_id"]).get_json() == {"state": "denied"}
