# zkv gateway settings (CONFIG_FILE of zkv-gateway.service): Python, one NAME = value a line.
# Every setting and its default: docs/gateway.md (/usr/share/doc/zkv-gateway/gateway.md).
# No secrets here: the Twilio token and an AAD client secret go in
# /etc/zkv-gateway/credentials/twilio-token and aad-client-secret (root, 0600).
# Check with: zkv-gateway check-config

# Where the released key comes from: Azure Key Vault, through a managed identity or a
# service principal (AAD_TENANT_ID, AAD_CLIENT_ID and the aad-client-secret credential).
SECRET_SOURCE = "azure"  # noqa: S105 (a backend name: azure | file)
# KEY_VAULT_URI = "https://<vault-name>.vault.azure.net"
# KEY_VAULT_SECRET = "<secret-name>"
# AAD_TENANT_ID = ""
# AAD_CLIENT_ID = ""

# Who approves: the owner, by SMS through Twilio (webhook: PUBLIC_URL + /v1/twilio/sms).
APPROVER = "twilio"
# TWILIO_ACCOUNT_ID = "AC..."
# SMS_FROM = "+1..."   # the Twilio number
# SMS_TO = "+1..."     # the owner's phone
# PUBLIC_URL = "https://gw.example.org"   # with TRUSTED_PROXY_ADDRESSES: the TLS proxy
# TRUSTED_PROXY_ADDRESSES = "127.0.0.1"

# The database: sqlite in /var/lib/zkv-gateway unless set (PostgreSQL: docs/gateway.md).
# SQLALCHEMY_DATABASE_URI = "postgresql+psycopg://zkv@/zkv?host=/run/postgresql"
