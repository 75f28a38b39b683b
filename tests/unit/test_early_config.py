"""Boot client settings: the INI file and the kernel command line on top."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from zkv import protocol
from zkv.errors import ConfigError
from zkv_early import cmdline, config

FULL = """
[gateway]
url = https://zkv.example.net:8443   # inline comments are fine
ca_file = /etc/zkv/gateway-ca.pem
request_timeout = 20
[host]
keystore = /etc/zkv/keystore
host_key = /etc/zkv/host.key
name = nas
[timeouts]
network = 30
total = 120
zfs = 90
[network]
interfaces = eth0, enp1s0
[prompt]
attempts = 5
"""


def test_full_file() -> None:
    c = config.parse(FULL)
    assert c.gateway_url == "https://zkv.example.net:8443"
    assert c.gateway_host == "zkv.example.net"
    assert (c.ca_file, c.request_timeout, c.hostname) == ("/etc/zkv/gateway-ca.pem", 20.0, "nas")
    assert (c.network_timeout, c.total_timeout, c.attempts) == (30.0, 120.0, 5)
    assert c.zfs_timeout == 90.0
    assert c.interfaces == ("eth0", "enp1s0")


PIN = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # base64 SHA-256 of b""
PIN2 = "LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE="  # of b"x"


def test_defaults() -> None:
    c = config.parse("[gateway]\nurl = https://gw\n")
    assert c.keystore == "/etc/zkv/keystore" and c.host_key == "/etc/zkv/host.key"
    assert (c.ca_file, c.pins) == ("", ())  # no trust unless early.conf names it
    assert (c.total_timeout, c.network_timeout, c.attempts) == (300.0, 60.0, 3)
    assert c.zfs_timeout == 30.0


@pytest.mark.parametrize(
    "text",
    [
        "[gateway]\nurl = https://gw\n[gatway]\n",
        "[gateway]\nurl = https://gw\ntimeout = 3\n",
        "[timeouts]\ntotal = soon\n",
        "[timeouts]\ntotal = 0\n",
        "[timeouts]\nzfs = 0\n",
        "[prompt]\nattempts = 99\n",
        "not ini at all",
    ],
)
def test_mistakes_are_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        config.validate(config.parse(text))


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://gw.example", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost", True),
        ("http://gw.example", False),  # http only on loopback
        ("ftp://gw.example", False),
        ("", False),
    ],
)
def test_gateway_url(url: str, ok: bool) -> None:
    c = config.Config(gateway_url=url, ca_file="/etc/zkv/gateway-ca.pem")
    if ok:
        assert config.validate(c) is c
    else:
        with pytest.raises(ConfigError):
            config.validate(c)


def test_cmdline_parsing() -> None:
    o = cmdline.parse(
        'BOOT_IMAGE=/vmlinuz root=ZFS=rpool/ROOT/debian zkv.gateway="https://b" '
        "rd.zkv.timeout=45 zkv.debug quiet"
    )
    assert o[:3] == ("https://b", 45.0, True)
    # zkv=off is the hooks' (zkv_disabled in zkv-lib.sh, tests/shell): nothing for the client.
    assert cmdline.parse("zkv=off zkv.debug")[:3] == cmdline.Overrides(debug=True)[:3]
    assert not cmdline.parse("zkv.debug=0").debug
    # Split like the kernel (lib/cmdline.c): double quotes group, an unbalanced one runs to the
    # end of the line; single quotes and backslashes are ordinary characters.
    assert not cmdline.parse('unbalanced="quote zkv.debug').debug
    assert cmdline.parse("it's zkv.debug").debug
    assert cmdline.split('a="b c" \\x  "d e"\tf\n') == ["a=b c", "\\x", "d e", "f"]
    assert cmdline.split("") == cmdline.split(" \n") == []
    with pytest.raises(ConfigError):
        cmdline.parse("zkv.timeout=forever")
    with pytest.raises(ConfigError):
        cmdline.parse("zkv.timeout=-1")


@pytest.mark.parametrize(
    ("line", "flags"),
    [
        ("BOOT_IMAGE=/vmlinuz root=ZFS=rpool/ROOT/debian ro quiet", ()),
        ("root=ZFS=rpool/ROOT/debian rd.break", ("rd.break",)),
        ("rd.break=pre-mount init=/bin/sh", ("init", "rd.break")),
        ("init=/sbin/init init=/lib/systemd/systemd rdinit=/init", ()),  # the usual ones
        ("rdinit=/bin/sh break=premount", ("break", "rdinit")),
        ("single", ("single",)),
        ("S", ("single",)),
        ("1", ("single",)),
        ("emergency rescue", ("emergency", "rescue")),
        ("systemd.unit=emergency.target", ("emergency",)),
        ("rd.systemd.unit=rescue.target", ("rescue",)),
        ("systemd.unit=multi-user.target", ()),
        (
            "systemd.debug_shell rd.shell rd.debug debug",
            ("debug", "debug-shell", "rd.debug", "rd.shell"),
        ),
        ("rd.shell=0 zkv.debug=off systemd.debug_shell=no", ()),
        ("rd.zkv.debug zkv.debug", ("zkv.debug",)),
        ('"init=/bin/sh quoted"', ("init",)),
        ("init2=/bin/sh xsingle single=1", ()),  # other names, and single= is no runlevel
    ],
)
def test_boot_flags_are_recognised_by_name_only(line: str, flags: tuple[str, ...]) -> None:
    boot = cmdline.parse(line).boot
    assert boot.flags == flags
    assert set(flags) <= set(protocol.BOOT_FLAGS)
    assert boot.cmdline_sha256 == hashlib.sha256(line.encode()).hexdigest()


def test_the_digest_covers_the_bytes_read(tmp_path: Path) -> None:
    raw = b"root=ZFS=rpool/ROOT/d\xff rd.break\n"
    path = tmp_path / "cmdline"
    path.write_bytes(raw)
    boot = cmdline.read(str(path)).boot
    assert boot.flags == ("rd.break",)
    assert boot.cmdline_sha256 == hashlib.sha256(raw).hexdigest()
    other = tmp_path / "other"
    other.write_bytes(raw.replace(b"rd.break", b"quiet   "))
    assert cmdline.read(str(other)).boot.cmdline_sha256 != boot.cmdline_sha256


@pytest.mark.parametrize(
    ("lines", "ca_file", "pins"),
    [
        ("ca_file = /etc/zkv/gateway-ca.pem", "/etc/zkv/gateway-ca.pem", ()),
        ("ca_file = system", "/etc/ssl/certs/ca-certificates.crt", ()),  # an explicit opt-in
        (f"pin_sha256 = {PIN}", "", (PIN,)),
        (f"pin_sha256 = {PIN}, {PIN2}\nca_file = /ca.pem", "/ca.pem", (PIN, PIN2)),
    ],
)
def test_the_gateways_ca_or_key(lines: str, ca_file: str, pins: tuple[str, ...]) -> None:
    c = config.validate(config.parse(f"[gateway]\nurl = https://gw\n{lines}\n"))
    assert (c.ca_file, c.pins) == (ca_file, pins)


def test_https_without_a_ca_or_a_pin_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        config.validate(config.parse("[gateway]\nurl = https://gw\n"))
    assert refused.value.message == (
        "configuration error: early.conf must name the gateway's CA ([gateway] ca_file = PATH, "
        "or ca_file = system for the system bundle) or pin its key ([gateway] pin_sha256)"
    )
    assert config.validate(config.parse("[gateway]\nurl = http://127.0.0.1:8\n"))  # loopback


@pytest.mark.parametrize("pin", ["AAAA", "not base64!", PIN[:-2], PIN + "AAAA"])
def test_a_pin_that_is_not_a_sha256_is_refused(pin: str) -> None:
    with pytest.raises(ConfigError, match="pin_sha256"):
        config.parse(f"[gateway]\nurl = https://gw\npin_sha256 = {pin}\n")


def test_cmdline_wins_over_file(tmp_path: Path) -> None:
    conf = tmp_path / "early.conf"
    conf.write_text("[gateway]\nurl = https://a\nca_file = system\n[timeouts]\ntotal = 100\n")
    line = tmp_path / "cmdline"
    line.write_text("zkv.gateway=https://b zkv.timeout=7 zkv.debug\n")
    c = config.load(str(conf), str(line))
    assert (c.gateway_url, c.total_timeout, c.debug) == ("https://b", 7.0, True)
    assert c.boot is not None and c.boot.flags == ("zkv.debug",)  # what the request reports


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    line = tmp_path / "cmdline"
    line.write_text("quiet\n")
    with pytest.raises(ConfigError):
        config.load(str(tmp_path / "absent.conf"), str(line))


def test_hostname_fallbacks(tmp_path: Path) -> None:
    etc = tmp_path / "hostname"
    etc.write_text("nas\n")
    assert config.hostname(config.Config(gateway_url="x", hostname="set"), str(etc)) == "set"
    assert config.hostname(config.Config(gateway_url="x"), str(etc)) == "nas"
    assert config.hostname(config.Config(gateway_url="x"), str(tmp_path / "none")) != ""
