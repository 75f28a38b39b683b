"""Local HTTPS stand-ins for the Twilio API, the Azure AD token endpoint and Key Vault.

One TLS server on 127.0.0.1 (trustme certificate for the real host names) answers by Host
header, so the real twilio / azure-identity / azure-keyvault-secrets SDKs in the gunicorn
process talk to it through the connect redirect in tests/harness/redirect/sitecustomize.py.
Tests steer failures through ``vault_mode`` ("ok", "403", "404", "timeout") and
``twilio_mode`` ("ok", "fail"), and read what was sent in ``sms_sent``. The vault also lists a
secret's versions and disables them (update_secret_properties), after which get_secret is
refused as Key Vault refuses it (``vault_disabled``); set_secret adds a version
(``vault_versions`` counts them), which get_secret returns from then on. The managed-identity
endpoint knows the system-assigned identity and one user-assigned one (``USER_ASSIGNED_ID``),
and keeps each token request's query in ``identity_queries``.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import trustme
from twilio.request_validator import RequestValidator

from tests.harness.gateway import OWNER, REPO, TWILIO_ACCOUNT, TWILIO_NUMBER, TWILIO_TOKEN

TWILIO_HOST = "api.twilio.com"
VAULT_HOST = "myvault.vault.azure.net"
AAD_HOST = "login.microsoftonline.com"
TENANT = "72f988bf-0000-4000-8000-000000000001"
CLIENT_ID = "11111111-2222-4333-8444-555555555555"
CLIENT_SECRET = "test-aad-client-secret"
SECRET_NAME = "zkv-repository-key"
PATH_SMS = "/v1/twilio/sms"
VAULT_VERSION = "0123456789abcdef"
# The managed-identity endpoint as App Service hands it to a process: a local URL
# in IDENTITY_ENDPOINT, and a per-process secret in IDENTITY_HEADER that must come back.
IDENTITY_PATH = "/msi/token"
USER_ASSIGNED_ID = "99999999-8888-4777-8666-555555555555"  # the one user-assigned identity
VAULT_RESOURCE = "https://vault.azure.net"


@dataclass
class Standins:
    port: int
    ca_file: Path
    vault_mode: str = "ok"
    twilio_mode: str = "ok"
    vault_secrets: dict[str, str] = field(default_factory=dict)
    vault_disabled: set[str] = field(default_factory=set)  # update_secret_properties(enabled=False)
    vault_versions: dict[str, int] = field(default_factory=dict)  # set_secret calls per name
    sms_sent: list[dict[str, str]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # "HOST METHOD PATH" of every call
    tokens: set[str] = field(default_factory=set)
    identity_header: str = field(default_factory=lambda: secrets.token_hex(16))
    identity_queries: list[dict[str, str]] = field(default_factory=list)  # each token request

    def managed_identity_env(self) -> dict[str, str]:
        """What the platform puts in the gateway's environment for its managed identity."""
        return {
            "IDENTITY_ENDPOINT": f"https://127.0.0.1:{self.port}{IDENTITY_PATH}",
            "IDENTITY_HEADER": self.identity_header,
        }

    def process_env(self) -> dict[str, str]:
        return {
            "PYTHONPATH": f"{REPO / 'tests/harness/redirect'}:{REPO}",
            "ZKV_TEST_CONNECT_REDIRECT": f"127.0.0.1:{self.port}",
            "ZKV_TEST_REDIRECT_HOSTS": ",".join((TWILIO_HOST, VAULT_HOST, AAD_HOST)),
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
        }


def twilio_settings() -> dict[str, Any]:
    """The SMS flow as the seed had it: a PIN reply approves (the lower-security policy, named
    explicitly; tests of the default page policy override it)."""
    return {
        "APPROVER": "twilio",
        "APPROVAL_POLICY": "sms-pin",
        "TWILIO_ACCOUNT_ID": TWILIO_ACCOUNT,
        "TWILIO_TOKEN": TWILIO_TOKEN,
        "SMS_TO": OWNER,
        "SMS_FROM": TWILIO_NUMBER,
        "TWILIO_TIMEOUT": 3,
    }


def azure_settings(managed_identity: bool = False) -> dict[str, Any]:
    """Key Vault through a service principal (ClientSecretCredential), or through the managed
    identity (ManagedIdentityCredential: no tenant, no secret, only the identity endpoint)."""
    vault = {
        "SECRET_SOURCE": "azure",
        "KEY_VAULT_URI": f"https://{VAULT_HOST}/",
        "KEY_VAULT_SECRET": SECRET_NAME,
        "KEY_VAULT_TIMEOUT": 1,
        "KEY_VAULT_RETRIES": 0,
    }
    if managed_identity:
        return {**vault, "AAD_CREDENTIAL": "managed-identity"}
    return {
        **vault,
        "AAD_TENANT_ID": TENANT,
        "AAD_CLIENT_ID": CLIENT_ID,
        "AAD_CLIENT_SECRET": CLIENT_SECRET,
    }


def signed_sms(
    url: str, body: str, sender: str = OWNER, sid: str | None = None, token: str = TWILIO_TOKEN
) -> tuple[dict[str, str], str]:
    """An inbound-SMS webhook's form and X-Twilio-Signature, exactly as Twilio signs them."""
    form = {
        "MessageSid": sid or "SM" + secrets.token_hex(16),
        "AccountSid": TWILIO_ACCOUNT,
        "From": sender,
        "To": TWILIO_NUMBER,
        "Body": body,
        "NumMedia": "0",
    }
    return form, RequestValidator(token).compute_signature(url + PATH_SMS, form)


def post_sms_form(url: str, form: dict[str, str], signature: str) -> requests.Response:
    headers = {"X-Twilio-Signature": signature}
    return requests.post(url + PATH_SMS, data=form, headers=headers, timeout=10)


def post_signed_sms(
    url: str, body: str, sender: str = OWNER, sid: str | None = None, token: str = TWILIO_TOKEN
) -> requests.Response:
    """POST an inbound-SMS webhook exactly as Twilio signs it."""
    return post_sms_form(url, *signed_sms(url, body, sender, sid, token))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length", "0"))
        return dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        host = self.headers.get("Host", "").split(":")[0]
        state = self.server.state
        state.seen.append(f"{host} {method} {self.path.split('?')[0]}")
        if host == "127.0.0.1" and self.path.split("?")[0] == IDENTITY_PATH:
            self._managed_identity(state, method)
        elif host == TWILIO_HOST:
            self._twilio(state)
        elif host == AAD_HOST:
            self._aad(state, method)
        elif host == VAULT_HOST:
            self._vault(state, method)
        else:
            self._reply(404, {"error": "unknown host"})

    def _twilio(self, state: Standins) -> None:
        import base64

        form = self._form()
        expected = base64.b64encode(f"{TWILIO_ACCOUNT}:{TWILIO_TOKEN}".encode()).decode()
        authorized = self.headers.get("Authorization") == f"Basic {expected}"
        if state.twilio_mode != "ok" or not authorized:
            self._reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
            return
        state.sms_sent.append(form)
        sid = "SM" + secrets.token_hex(16)
        self._reply(
            201,
            {
                "sid": sid,
                "status": "queued",
                "to": form.get("To"),
                "from": form.get("From"),
                "body": form.get("Body"),
                "direction": "outbound-api",
                "account_sid": TWILIO_ACCOUNT,
            },
        )

    def _aad(self, state: Standins, method: str) -> None:
        base = f"https://{AAD_HOST}/{TENANT}"
        if self.path.startswith(f"/{TENANT}/v2.0/.well-known/openid-configuration"):
            self._reply(
                200,
                {
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "issuer": f"{base}/v2.0",
                },
            )
        elif method == "POST" and self.path.startswith(f"/{TENANT}/oauth2/v2.0/token"):
            form = self._form()
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                self._reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215"})
                return
            token = secrets.token_hex(16)
            state.tokens.add(token)
            self._reply(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})
        else:
            self._reply(404, {"error": "not found"})

    def _managed_identity(self, state: Standins, method: str) -> None:
        """App Service's token endpoint (api-version 2019-08-01), as the SDK calls it."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        state.identity_queries.append(query)
        if self.headers.get("X-IDENTITY-HEADER") != state.identity_header or method != "GET":
            self._reply(401, {"error": "invalid_request", "error_description": "bad header"})
            return
        if query.get("api-version") != "2019-08-01" or query.get("resource") != VAULT_RESOURCE:
            self._reply(400, {"error": "invalid_resource", "error_description": repr(query)})
            return
        if query.get("client_id", USER_ASSIGNED_ID) != USER_ASSIGNED_ID:  # none: system-assigned
            self._reply(400, {"error": "invalid_request", "error_description": "no such identity"})
            return
        token = secrets.token_hex(16)
        state.tokens.add(token)
        expires = str(int(time.time()) + 3600)
        self._reply(
            200,
            {
                "access_token": token,
                "expires_on": expires,
                "resource": VAULT_RESOURCE,
                "token_type": "Bearer",
            },
        )

    def _vault(self, state: Standins, method: str) -> None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in state.tokens:
            challenge = (
                f'Bearer authorization="https://{AAD_HOST}/{TENANT}", '
                'resource="https://vault.azure.net"'
            )
            self._reply(401, {"error": {"code": "Unauthorized"}}, {"WWW-Authenticate": challenge})
            return
        parts = self.path.split("?")[0].split("/")  # "", "secrets", NAME[, VERSION | "versions"]
        name = parts[2]
        if state.vault_mode == "timeout":
            time.sleep(3)
        if state.vault_mode == "ok" and method == "PUT" and parts[3:] == []:
            self._vault_set(state, name)
        elif state.vault_mode == "ok" and name in state.vault_secrets and method == "PATCH":
            self._vault_update(state, name)
        elif state.vault_mode == "ok" and name in state.vault_secrets and parts[3:] == ["versions"]:
            self._reply(200, {"value": [_properties(name, name not in state.vault_disabled)]})
        elif state.vault_mode == "ok" and name in state.vault_disabled:
            # What Key Vault answers for get on a disabled secret.
            self._reply(
                403,
                {
                    "error": {
                        "code": "Forbidden",
                        "message": "Operation get is not allowed on a disabled secret.",
                        "innererror": {"code": "SecretDisabled"},
                    }
                },
            )
        elif state.vault_mode == "403":
            self._reply(403, {"error": {"code": "Forbidden", "message": "no get permission"}})
        elif state.vault_mode == "404" or name not in state.vault_secrets:
            self._reply(404, {"error": {"code": "SecretNotFound", "message": "not found"}})
        else:
            now = int(time.time())
            self._reply(
                200,
                {
                    "value": state.vault_secrets[name],
                    "id": f"https://{VAULT_HOST}/secrets/{name}/{VAULT_VERSION}",
                    "attributes": {"enabled": True, "created": now, "updated": now},
                },
            )

    def _vault_set(self, state: Standins, name: str) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        value = json.loads(self.rfile.read(length))["value"]
        state.vault_secrets[name] = value
        state.vault_disabled.discard(name)  # a new version is enabled
        state.vault_versions[name] = state.vault_versions.get(name, 0) + 1
        now = int(time.time())
        self._reply(
            200,
            {
                "value": value,
                "id": f"https://{VAULT_HOST}/secrets/{name}/{secrets.token_hex(16)}",
                "attributes": {"enabled": True, "created": now, "updated": now},
            },
        )

    def _vault_update(self, state: Standins, name: str) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        attributes = json.loads(self.rfile.read(length) or b"{}").get("attributes", {})
        if attributes.get("enabled") is False:
            state.vault_disabled.add(name)
        elif attributes.get("enabled") is True:
            state.vault_disabled.discard(name)
        self._reply(200, _properties(name, name not in state.vault_disabled))


def _properties(name: str, enabled: bool) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": f"https://{VAULT_HOST}/secrets/{name}/{VAULT_VERSION}",
        "attributes": {"enabled": enabled, "created": now, "updated": now},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: Standins


@contextmanager
def running_standins(directory: Path) -> Iterator[Standins]:
    ca = trustme.CA()
    ca_file = Path(directory) / "standin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(TWILIO_HOST, VAULT_HOST, AAD_HOST, "127.0.0.1").configure_cert(context)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.state = Standins(port=server.server_address[1], ca_file=ca_file)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
