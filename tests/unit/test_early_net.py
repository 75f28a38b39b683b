"""Waiting for the network: what the kernel shows in /sys and /proc, with a fake clock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from zkv.errors import NetworkTimeout
from zkv_early.net import Probe, is_address, wait_for_network
from zkv_early.race import Deadline

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
SUBNET = "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
DEFAULT = "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.ticks: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.now += seconds
        self.ticks.append(seconds)
        return event.is_set()


def fake_root(tmp_path: Path, operstate: str = "up", routes: str = "") -> Probe:
    sys_net, proc_net = tmp_path / "sys", tmp_path / "proc"
    (sys_net / "eth0").mkdir(parents=True)
    (sys_net / "lo").mkdir()
    (sys_net / "eth0" / "operstate").write_text(operstate + "\n")
    (sys_net / "eth0" / "carrier").write_text("1\n")
    (sys_net / "lo" / "operstate").write_text("unknown\n")
    proc_net.mkdir()
    (proc_net / "route").write_text(ROUTE_HEADER + routes)
    return Probe(str(sys_net), str(proc_net))


def test_probe_reads_link_address_route(tmp_path: Path) -> None:
    probe = fake_root(tmp_path, routes=SUBNET + DEFAULT)
    assert probe.links_up() == ["eth0"]
    assert probe.links_up(["enp1s0"]) == []
    assert probe.has_address(["eth0"])
    assert probe.has_default_route()


def test_probe_ipv6(tmp_path: Path) -> None:
    probe = fake_root(tmp_path)
    proc = Path(probe.proc_net)
    (proc / "if_inet6").write_text(
        "20010db8000000000000000000000001 02 40 00 80     eth0\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    )
    (proc / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n"
    )
    assert probe.has_address(["eth0"]) and probe.has_default_route()


def run(probe: Probe, host: str, seconds: float, resolves: bool = True) -> tuple[list[str], float]:
    clock = FakeClock()
    said: list[str] = []
    wait_for_network(
        host,
        443,
        Deadline(clock, seconds),
        threading.Event(),
        said.append,
        probe=probe,
        resolver=lambda h, p, t: resolves,
    )
    return said, clock.now


def test_returns_at_once_when_everything_is_there(tmp_path: Path) -> None:
    said, took = run(fake_root(tmp_path, routes=SUBNET + DEFAULT), "gw.example", 10)
    assert said == [] and took == 0


@pytest.mark.parametrize(
    ("operstate", "routes", "resolves", "missing"),
    [
        ("down", "", True, "no network link"),
        ("up", "", True, "no IP address on eth0"),
        ("up", SUBNET, True, "no default route"),
        ("up", SUBNET + DEFAULT, False, "cannot resolve gw.example"),
    ],
)
def test_says_what_it_waits_for_and_gives_up_at_the_deadline(
    tmp_path: Path, operstate: str, routes: str, resolves: bool, missing: str
) -> None:
    probe = fake_root(tmp_path, operstate, routes)
    with pytest.raises(NetworkTimeout, match=missing):
        run(probe, "gw.example", 30, resolves)


def test_reminds_every_ten_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    said: list[str] = []
    with pytest.raises(NetworkTimeout):
        wait_for_network(
            "gw",
            443,
            Deadline(clock, 25),
            threading.Event(),
            said.append,
            probe=fake_root(tmp_path, "down"),
        )
    assert len(said) == 3 and all("no network link" in s for s in said)
    assert clock.now == pytest.approx(25)


def test_link_comes_up_later(tmp_path: Path) -> None:
    probe = fake_root(tmp_path, "down", SUBNET + DEFAULT)
    clock = FakeClock()
    said: list[str] = []

    def wait(event: threading.Event, seconds: float) -> bool:
        clock.now += seconds
        if clock.now > 3:
            (Path(probe.sys_net) / "eth0" / "operstate").write_text("up\n")
        return False

    clock.wait = wait  # type: ignore[method-assign]
    wait_for_network(
        "192.0.2.1", 443, Deadline(clock, 30), threading.Event(), said.append, probe=probe
    )
    assert said[-1] == "network is up" and 3 < clock.now < 4


def test_loopback_gateway_needs_no_network(tmp_path: Path) -> None:
    said, _ = run(fake_root(tmp_path, "down"), "127.0.0.1", 1)
    assert said == []


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("10.0.2.100", True),
        ("fd00::1", True),
        ("::1", True),
        ("gw.example.net", False),
        ("10.0.2", False),
        ("999.1.1.1", False),
        ("", False),
    ],
)
def test_is_address(host: str, literal: bool) -> None:
    assert is_address(host) is literal
