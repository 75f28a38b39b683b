"""Who is calling. Behind a reverse proxy the peer is the proxy: the client's address and the URL
it called come in X-Forwarded-* headers, which anyone can send. They are believed only from a
peer in TRUSTED_PROXY_ADDRESSES, and removed from every request before the app sees it, so
nothing downstream reads them by mistake (gunicorn's own handling is off: server.py).

Each proxy appends the address it saw to X-Forwarded-For, so it is read from the right: the
first address that is not one of our proxies is the client; whatever is left of it the client
may have written itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str) -> tuple[Network, ...]:
    """ "10.0.0.2, 192.168.0.0/24, fd00::/8" -> networks; ValueError says which entry is bad."""
    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry)
        except ValueError:
            raise ValueError(f"{entry[:60]} is not an IP address or network (a.b.c.d/n)") from None
        if network.prefixlen == 0:
            raise ValueError("it must name the proxies, not every address")
        networks.append(network)
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address as X-Forwarded-For spells it: bare, [v6]:port, or v4:port (Azure)."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _last(value: str) -> str:
    return value.rpartition(",")[2].strip()  # what the proxy nearest to us set


class TrustedProxies:
    """WSGI middleware: REMOTE_ADDR, the scheme and the host as the configured proxies say."""

    def __init__(self, app: Any, networks: Iterable[Network]) -> None:
        self.app, self.networks = app, tuple(networks)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client(self, proxy: Address, forwarded_for: str) -> Address:
        """The client behind ``proxy`` (one of ours), by the X-Forwarded-For it sent."""
        address = proxy
        for entry in reversed(forwarded_for.split(",")):
            hop = _address(entry.strip())
            if hop is None:
                break  # not an address: the last hop that gave one is all we know
            address = hop
            if not self.trusts(hop):
                break
        return address

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        names = [k for k in environ if k.startswith("HTTP_X_FORWARDED_") or k == "HTTP_FORWARDED"]
        forwarded = {name: str(environ.pop(name)) for name in names}
        peer = _address(str(environ.get("REMOTE_ADDR", "")))
        if peer is not None and self.trusts(peer):
            client = self.client(peer, forwarded.get("HTTP_X_FORWARDED_FOR", ""))
            environ["REMOTE_ADDR"] = str(client)
            proto = _last(forwarded.get("HTTP_X_FORWARDED_PROTO", ""))
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
            host = _last(forwarded.get("HTTP_X_FORWARDED_HOST", ""))
            if host:
                environ["HTTP_HOST"] = host
        return self.app(environ, start_response)
