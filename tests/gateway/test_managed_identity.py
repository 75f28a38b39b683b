"""The gateway reads its secret through ManagedIdentityCredential: the real azure-identity SDK
against a local stand-in of the managed-identity endpoint as App Service hands it to a
process (IDENTITY_ENDPOINT, IDENTITY_HEADER), through the production configuration path
(AAD_CREDENTIAL = "managed-identity", no tenant and no client secret anywhere)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import protocol_client as client
from tests.harness.cloud_standins import IDENTITY_PATH, USER_ASSIGNED_ID, VAULT_HOST
from tests.harness.gateway import RunningGateway, running_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("managed-identity")
    with running_gateway(directory, secret_source="azure-managed-identity") as gateway:
        yield gateway


def _approved_boot(gw: RunningGateway, hostname: str) -> client.Boot:
    host = client.Host(hostname=hostname)
    gw.admit(host)
    boot = client.unlock(gw.url, host)
    gw.approve(boot.created.request_id, boot.created.pin)
    return boot


def test_the_secret_comes_through_the_managed_identity(gw: RunningGateway) -> None:
    assert gw.standins is not None
    config = gw.config_file.read_text()
    assert "AAD_CLIENT_SECRET" not in config and "AAD_TENANT_ID" not in config
    boot = _approved_boot(gw, "mi01")
    released = client.opened(boot, client.poll(gw.url, boot.created.request_id, wait=5))
    assert released == gw.secret
    # The token came from the identity endpoint, and Key Vault saw it; Azure AD never did.
    seen = gw.standins.seen
    assert f"127.0.0.1 GET {IDENTITY_PATH}" in seen
    assert any(call.startswith(f"{VAULT_HOST} GET /secrets/") for call in seen)
    assert not any("login.microsoftonline.com" in call for call in seen)
    # No AAD_CLIENT_ID: the system-assigned identity, which names no client id.
    assert gw.standins.identity_queries
    assert all("client_id" not in query for query in gw.standins.identity_queries)


def test_a_wrong_identity_header_is_a_secret_source_failure(gw: RunningGateway) -> None:
    """The platform's header is what proves the process may use the identity: without it
    there is no token, the poll answers 503 secret_unavailable and the request fails."""
    assert gw.standins is not None
    right, gw.standins.identity_header = gw.standins.identity_header, "not-the-platforms"
    try:
        gw.standins.tokens.clear()  # so the SDK cannot reuse a token it already holds
        boot = _approved_boot(gw, "mi02")
        response = client.poll(gw.url, boot.created.request_id, wait=5)
        assert (response.status_code, response.json()) == (503, {"error": "secret_unavailable"})
    finally:
        gw.standins.identity_header = right


@pytest.mark.parametrize(
    ("client_id", "released"),
    [(USER_ASSIGNED_ID, True), ("00000000-0000-4000-8000-0000000000ff", False)],
)
def test_aad_client_id_picks_a_user_assigned_identity(
    tmp_path: Path, client_id: str, released: bool
) -> None:
    """AAD_CLIENT_ID without a client secret, AAD_CREDENTIAL left empty: still the managed
    identity (the default), now the user-assigned one of that client id; one the platform
    does not know gets no token."""
    settings = {"AAD_CREDENTIAL": "", "AAD_CLIENT_ID": client_id}
    with running_gateway(
        tmp_path, secret_source="azure-managed-identity", settings=settings
    ) as gateway:
        assert gateway.standins is not None
        boot = _approved_boot(gateway, "mi03")
        response = client.poll(gateway.url, boot.created.request_id, wait=5)
        if released:
            assert client.opened(boot, response) == gateway.secret
        else:
            assert (response.status_code, response.json()) == (
                503,
                {"error": "secret_unavailable"},
            )
        queries = gateway.standins.identity_queries
        assert queries and all(query.get("client_id") == client_id for query in queries)
        assert not any("login.microsoftonline.com" in call for call in gateway.standins.seen)
