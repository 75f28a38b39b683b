"""Wait (never configure) until the network can reach the gateway: link, address, default
route, then the gateway's name. The shell hooks bring interfaces up (dracut network-legacy,
initramfs-tools configure_networking); this only watches /sys and /proc, and tells the console
what it is still waiting for.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence

from zkv.errors import NetworkTimeout
from zkv_early.race import Cancelled, Clock, Deadline

POLL = 0.25
REMIND = 10.0
DNS_ATTEMPT = 5.0


class Probe:
    """Reads the kernel's view of the network; the roots are parameters so tests can fake them."""

    def __init__(self, sys_net: str = "/sys/class/net", proc_net: str = "/proc/net") -> None:
        self.sys_net, self.proc_net = sys_net, proc_net

    def links_up(self, only: Sequence[str] = ()) -> list[str]:
        try:
            names = sorted(os.listdir(self.sys_net))
        except OSError:
            return []
        up = []
        for name in names:
            if name == "lo" or (only and name not in only):
                continue
            state = _read(os.path.join(self.sys_net, name, "operstate"))
            carrier = _read(os.path.join(self.sys_net, name, "carrier"))
            if state == "up" or (state == "unknown" and carrier == "1"):
                up.append(name)
        return up

    def has_address(self, links: Sequence[str]) -> bool:
        """An IPv4 address (the kernel adds a link route for it) or a global IPv6 address."""
        for line in _lines(os.path.join(self.proc_net, "route"))[1:]:
            fields = line.split()
            if len(fields) > 7 and fields[0] in links and fields[7] != "00000000":
                return True
        for line in _lines(os.path.join(self.proc_net, "if_inet6")):
            fields = line.split()
            if len(fields) == 6 and fields[5] in links and fields[3] == "00":
                return True
        return False

    def has_default_route(self) -> bool:
        for line in _lines(os.path.join(self.proc_net, "route"))[1:]:
            fields = line.split()
            if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
                return int(fields[3], 16) & 1 == 1  # RTF_UP
        for line in _lines(os.path.join(self.proc_net, "ipv6_route")):
            fields = line.split()
            if len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00":
                if fields[9] != "lo" and int(fields[8], 16) & 1:
                    return True
        return False


def is_address(host: str) -> bool:
    """A literal IPv4 or IPv6 address (socket's parser: ipaddress would be one more import)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def resolve(host: str, port: int, timeout: float) -> bool:
    """getaddrinfo has no timeout of its own, so it runs in a daemon thread we stop waiting on."""
    found = threading.Event()

    def lookup() -> None:
        try:
            if socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                found.set()
        except OSError:
            pass

    thread = threading.Thread(target=lookup, name="zkv-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    return found.is_set()


def wait_for_network(
    host: str,
    port: int,
    deadline: Deadline,
    cancel: threading.Event,
    say: Callable[[str], None],
    interfaces: Sequence[str] = (),
    probe: Probe | None = None,
    resolver: Callable[[str, int, float], bool] = resolve,
) -> None:
    """Return once ``host`` should be reachable; NetworkTimeout at the deadline."""
    probe = probe or Probe()
    clock: Clock = deadline.clock
    reported, last_report = "", -REMIND
    while True:
        if cancel.is_set():
            raise Cancelled
        missing = _missing(host, port, probe, interfaces, resolver, deadline)
        if missing is None:
            if reported:
                say("network is up")
            return
        if deadline.expired():
            raise NetworkTimeout(missing)
        now = clock.monotonic()
        if missing != reported or now - last_report >= REMIND:
            say(f"waiting for the network: {missing} ({deadline.remaining():.0f} s left)")
            reported, last_report = missing, now
        clock.wait(cancel, min(POLL, deadline.remaining()))


def _missing(
    host: str,
    port: int,
    probe: Probe,
    interfaces: Sequence[str],
    resolver: Callable[[str, int, float], bool],
    deadline: Deadline,
) -> str | None:
    """What is not there yet, in the order it normally comes up; None when all is there."""
    if host in ("localhost", "::1") or host.startswith("127."):
        return None
    links = probe.links_up(interfaces)
    if not links:
        hint = f" on {', '.join(interfaces)}" if interfaces else ""
        return f"no network link{hint}"
    if not probe.has_address(links):
        return f"no IP address on {', '.join(links)}"
    if not probe.has_default_route():
        return "no default route"
    if not is_address(host) and not resolver(
        host, port, max(0.1, min(DNS_ATTEMPT, deadline.remaining()))
    ):
        return f"cannot resolve {host}"
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(64).strip()
    except OSError:
        return ""


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(1 << 20).splitlines()
    except OSError:
        return []
