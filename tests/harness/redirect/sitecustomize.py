"""Test-only connect redirect, loaded into the gateway's gunicorn process via PYTHONPATH.

When ZKV_TEST_CONNECT_REDIRECT=127.0.0.1:PORT is set, TCP connections that urllib3 (requests,
hence the twilio and azure SDKs) opens to the hosts in ZKV_TEST_REDIRECT_HOSTS on port 443 go
to the local HTTPS stand-in instead; TLS still verifies the real host names (against the
trustme CA in REQUESTS_CA_BUNDLE). Any other non-loopback connection is refused, so a test can
never reach the internet. Production code is unchanged; this file lives only under tests/.
"""

from __future__ import annotations

import os

_target = os.environ.get("ZKV_TEST_CONNECT_REDIRECT")
if _target:
    import urllib3.util.connection as _connection

    _host, _port = _target.rsplit(":", 1)
    _names = set(os.environ.get("ZKV_TEST_REDIRECT_HOSTS", "").split(","))
    _original = _connection.create_connection

    def _redirect(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        host, port = address
        if host in _names and port == 443:
            return _original((_host, int(_port)), *args, **kwargs)
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test network guard: refused connection to {host}:{port}")
        return _original(address, *args, **kwargs)

    _connection.create_connection = _redirect
