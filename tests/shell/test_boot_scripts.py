"""The boot hooks without a VM: lint, the dracut module with stubbed dracut functions, and the
build-time file lister both generators use."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SH_FILES = [
    "zkv_early/zkv-lib.sh",
    "dracut/50zkv/zkv-early.sh",
    "dracut/50zkv/zkv-load-key.sh",
    "dracut/50zkv/zkv-cleanup.sh",
    "dracut/50zkv/zkv-wait-devices.sh",
    "initramfs-tools/hooks/zkv",
    "initramfs-tools/scripts/zkv-functions",
    "initramfs-tools/scripts/local-top/zkv",
    "initramfs-tools/scripts/local-bottom/zkv",
    "initramfs-tools/zfs-load-key.d/zkv",
    "initramfs-tools/conf-hooks.d/zkv",
]
# What /usr/lib/zkv/initramfs-files runs.
FILES_TOOL = [sys.executable, "-m", "zkv_early.initramfs_files"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    subprocess.run(["shellcheck", "-x", "-s", "sh", *SH_FILES], cwd=REPO, check=True)
    subprocess.run(["shellcheck", "-x", "dracut/50zkv/module-setup.sh"], cwd=REPO, check=True)


@pytest.mark.skipif(shutil.which("checkbashisms") is None, reason="devscripts not installed")
def test_checkbashisms() -> None:
    subprocess.run(["checkbashisms", "-f", *SH_FILES], cwd=REPO, check=True)


def zkv_lib(tmp: Path) -> Path:
    """/usr/lib/zkv/zkv-lib.sh as `make install` writes it: the paths, then the helpers."""
    target = tmp / "zkv-lib.sh"
    if not target.exists():
        with target.open("w") as out:
            subprocess.run(
                [sys.executable, "-m", "zkv.paths", "zkv_early/zkv-lib.sh"],
                cwd=REPO,
                stdout=out,
                check=True,
            )
    return target


def _dracut(
    tmp: Path, body: str, *, configured: bool = True, network_legacy: bool = True
) -> subprocess.CompletedProcess[str]:
    """Source module-setup.sh in bash with recording stubs for dracut's install functions."""
    lib, boot, etc = tmp / "lib", tmp / "boot", tmp / "etc"
    for d in (lib, boot, etc, tmp / "initdir"):
        d.mkdir(exist_ok=True)
    (lib / "zkv-early.pyz").write_bytes(b"PK")
    (tmp / "initdir" / "sbin").mkdir(exist_ok=True)
    (tmp / "initdir" / "sbin" / "ifup").touch()  # what network-legacy (35) installed before us
    if network_legacy:
        (tmp / "dracut" / "modules.d" / "35network-legacy").mkdir(parents=True, exist_ok=True)
    (lib / "initramfs-files").write_text(
        "#!/bin/sh\ncase $1 in python) printf '%s\\n' '/usr/bin/python3.11 /usr/bin/python3.11'"
        " '/x/__pycache__/os.cpython-311.pyc /x/os.pyc' ;;"
        ' ca) echo "${FAKE_CA-/etc/ssl/ca.pem}" ;; luks) printf %s "${FAKE_LUKS-}" ;; esac\n'
    )
    (lib / "initramfs-files").chmod(0o755)
    if configured:
        (etc / "early.conf").write_text("[gateway]\nurl = https://gw/\n")
        (boot / "keystore").write_text("{}")
        (boot / "host.key").write_text("k")
    script = f"""
set -u
log=$1
dfatal() {{ echo "dfatal $*" >>"$log"; }}
require_binaries() {{ case " $* " in *" ${{FAKE_MISSING:-none}} "*) return 1 ;; esac; }}
require_any_binary() {{ return 0; }}
dracutbasedir={tmp}/dracut
inst_multiple() {{ echo "inst_multiple $*" >>"$log"; }}
inst() {{ echo "inst $*" >>"$log"; }}
inst_simple() {{
    echo "inst_simple $*" >>"$log"; t="$initdir${{2:-$1}}"; mkdir -p "${{t%/*}}"; touch "$t"
}}
inst_hook() {{ echo "inst_hook $*" >>"$log"; }}
inst_script() {{ echo "inst_script $*" >>"$log"; }}
systemctl() {{ echo "systemctl $*" >>"$log"; }}
systemdsystemunitdir=/usr/lib/systemd/system
initdir={tmp}/initdir
moddir={REPO}/dracut/50zkv
derror() {{ echo "derror $*" >>"$log"; }}
export ZKV_LIB_SH={zkv_lib(tmp)} ZKV_PYZ={lib}/zkv-early.pyz ZKV_CONF={etc}/early.conf
export ZKV_INITRAMFS_FILES={lib}/initramfs-files ZKV_KEYSTORE={boot}/keystore
export ZKV_HOSTKEY={boot}/host.key ZKV_IMAGE_DEVICES=/etc/zkv/luks-devices
. {REPO}/dracut/50zkv/module-setup.sh
{body}
"""
    return subprocess.run(
        ["bash", "-c", script, "bash", str(tmp / "calls.log")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_dracut_check_needs_keystore_hostkey_and_config(tmp_path: Path) -> None:
    assert _dracut(tmp_path, "check", configured=False).returncode == 1
    assert _dracut(tmp_path, "check").returncode == 0
    depends = _dracut(tmp_path, "depends").stdout.split()
    assert depends == ["zfs", "network-legacy", "network", "systemd"]


def test_dracut_check_ends_the_build_without_network_legacy(tmp_path: Path) -> None:
    """check() runs in dracut's shell: exit, or dracut leaves zkv out and writes the image."""
    done = _dracut(tmp_path, "check; echo returned", network_legacy=False)
    assert done.returncode == 1 and "returned" not in done.stdout
    calls = (tmp_path / "calls.log").read_text()
    assert "apt install dracut-network" in calls
    # Not set up for zkv: no zkv in the image, and nothing to complain about.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _dracut(fresh, "check", configured=False, network_legacy=False).returncode == 1


@pytest.mark.parametrize("configured", [True, False])
def test_dracut_conf_names_the_modules_only_on_a_host_set_up(
    tmp_path: Path, configured: bool
) -> None:
    script = f'. {REPO}/dracut/zkv.conf; echo "mods=${{add_dracutmodules-}}"'
    done = _dracut(tmp_path, script, configured=configured)
    mods = done.stdout.split("mods=", 1)[1].split()
    assert mods == (["zkv", "network-legacy"] if configured else [])


def test_dracut_install(tmp_path: Path) -> None:
    done = _dracut(tmp_path, "install; echo rc=$?")
    assert "rc=0" in done.stdout, done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "inst /usr/bin/python3.11 /usr/bin/python3.11" in calls
    assert "inst /x/__pycache__/os.cpython-311.pyc /x/os.pyc" in calls
    assert f"inst_simple {tmp_path}/boot/keystore /etc/zkv/keystore" in calls
    assert "inst_hook pre-mount 50 " in calls and "inst_hook cleanup 50 " in calls
    assert f"inst_script {REPO}/dracut/50zkv/zkv-early.sh /usr/lib/zkv/zkv-early.sh" in calls
    assert (
        f"inst_simple {REPO}/dracut/50zkv/zkv-early.service "
        "/usr/lib/systemd/system/zkv-early.service" in calls
    )
    assert (
        f"systemctl -q --root {tmp_path}/initdir add-wants sysinit.target zkv-early.service"
        in calls
    )
    assert not (tmp_path / "initdir/etc/cmdline.d/50zkv.conf").exists()  # zkv-early.sh's own
    assert oct((tmp_path / "initdir/etc/zkv/keystore").stat().st_mode & 0o777) == "0o600"


def test_dracut_install_copies_the_ca_early_conf_names_if_any(tmp_path: Path) -> None:
    assert "rc=0" in _dracut(tmp_path, "install; echo rc=$?").stdout
    assert "inst_simple /etc/ssl/ca.pem\n" in (tmp_path / "calls.log").read_text()
    (tmp_path / "calls.log").unlink()
    done = _dracut(tmp_path, "export FAKE_CA=; install; echo rc=$?")  # pin_sha256 only
    assert "rc=0" in done.stdout, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert f"inst_simple {tmp_path}/etc/early.conf" in calls
    assert not [c for c in calls if c.strip() == "inst_simple" or "ca.pem" in c]


def test_dracut_install_fails_the_build_when_a_piece_is_missing(tmp_path: Path) -> None:
    done = _dracut(tmp_path, "inst_simple() { return 1; }; install; echo not-reached")
    assert done.returncode == 1
    assert "not-reached" not in done.stdout
    assert "dfatal zkv:" in (tmp_path / "calls.log").read_text()


@pytest.mark.parametrize("in_tpm", [True, False])
def test_dracut_adds_the_tpm_drivers_for_a_tpm_held_host_key(tmp_path: Path, in_tpm: bool) -> None:
    line = "zkv-host-key-tpm-v1 0x817a6b76 AAAA" if in_tpm else "zkv-host-key-v1 AAAA"
    stub = 'instmods() { echo "instmods $*" >>"$log"; }'
    done = _dracut(tmp_path, f'echo "{line}" >"$ZKV_HOSTKEY"; {stub}; installkernel')
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text() if (tmp_path / "calls.log").exists() else ""
    assert ("instmods tpm_tis tpm_crb" in calls) == in_tpm
    # A kernel without them: no image, rather than a boot that cannot sign.
    missing = _dracut(tmp_path, f'echo "{line}" >"$ZKV_HOSTKEY"; instmods() {{ return 1; }}; '
                      "installkernel; echo returned")  # fmt: skip
    assert (missing.returncode == 1 and "returned" not in missing.stdout) == in_tpm


def test_dracut_unit_starts_early_and_never_reaches_the_real_root() -> None:
    unit: dict[str, list[str]] = {}
    for line in (REPO / "dracut/50zkv/zkv-early.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            unit.setdefault(key, []).extend(value.split())
    assert unit["DefaultDependencies"] == ["no"]
    assert unit["ExecStart"] == ["/usr/lib/zkv/zkv-early.sh"]
    assert "After" not in unit, "it must start with the first transaction"
    assert "initrd-switch-root.target" in unit["Conflicts"]
    assert {"initrd-switch-root.target", "initrd-cleanup.service"} <= set(unit["Before"])
    assert "dracut-pre-mount.service" in unit["Before"]
    assert unit["StandardError"] == ["journal+console"]


def _fake_bin(tmp: Path) -> Path:
    """A python3 that records its arguments, waits for its --after file, exits $FAKE_RC."""
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text(
        "#!/bin/sh\n"
        'echo "$*" >>"$FAKE_LOG"\n'
        'after=""; while [ $# -gt 0 ]; do [ "$1" = --after ] && after=$2; shift; done\n'
        # As the client does once it has read its settings: the hooks' bound, beside the go.
        'if [ -n "$after" ] && [ -n "$FAKE_WAIT_LIMIT" ]; then'
        ' echo "$FAKE_WAIT_LIMIT" >"${after%/*}/wait-limit"; fi\n'
        # As the client does once the keystore is open and the LUKS devices are.
        'if [ -n "$after" ] && [ -n "$FAKE_DEVICES" ]; then'
        ' sleep "$FAKE_DEVICES"; echo 0 >"${after%/*}/devices"; fi\n'
        'if [ -n "$after" ]; then while [ ! -e "$after" ]; do sleep 0.05; done; fi\n'
        'sleep "${FAKE_SLEEP:-0.3}"\n'
        'exit "${FAKE_RC:-0}"\n'
    )
    (fake / "python3").chmod(0o755)
    (fake / "ifup").write_text('#!/bin/sh\necho "$*" >>"$FAKE_LOG.ifup"\n')
    (fake / "ifup").chmod(0o755)
    return fake


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{_fake_bin(tmp)}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp / "python3.log"),
        "ZKV_RUN": str(tmp / "run"),
        "ZKV_LIB_SH": str(zkv_lib(tmp)),
        "ZKV_SYS_NET": str(tmp / "net"),  # never the host's links
        "ZKV_UDEV_DATA": str(tmp / "udev"),
        "ZKV_DRACUT_TMP": str(tmp),
        **extra,
    }


def _dracut_lib(tmp: Path) -> Path:
    """dracut-lib.sh's getarg and getargbool, reading $FAKE_CMDLINE."""
    lib = tmp / "dracut-lib.sh"
    lib.write_text(
        'getarg() { v=""; for w in $FAKE_CMDLINE; do case $w in "$1"*) v=${w#"$1"} ;; esac;'
        ' done; echo "$v"; }\n'
        'getargbool() { case " $FAKE_CMDLINE " in *" $2=1 "*) return 0 ;; esac; return 1; }\n'
        'getcmdline() { echo "$FAKE_CMDLINE"; }\n'
    )
    return lib


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("root=zfs:rpool/ROOT/debian", "--root rpool/ROOT/debian --after {run}/go"),
        ("root=ZFS=rpool/ROOT/debian quiet", "--root rpool/ROOT/debian --after {run}/go"),
        ("root=zfs:AUTO", "unlock --after {run}/go"),
        ("root=zfs:rpool/ROOT/debian zkv=off", None),
        ("root=zfs:rpool/ROOT/debian rd.zkv=0", None),
        ("root=zfs:rpool/ROOT/debian rd.neednet=1", "--root rpool/ROOT/debian --after {run}/go"),
        ("root=zfs:rpool/ROOT/debian ip=dhcp", "--root rpool/ROOT/debian --after {run}/go"),
    ],
)
def test_dracut_unit_script(tmp_path: Path, cmdline: str, expected: str | None) -> None:
    lib = _dracut_lib(tmp_path)
    # eth1: not yet processed by udev (it may still be renamed): left alone.
    for index, (name, kind) in enumerate((("lo", "772"), ("enp0s1", "1"), ("wlan0", "1"))):
        (tmp_path / "net" / name).mkdir(parents=True)
        (tmp_path / "net" / name / "type").write_text(kind + "\n")
        (tmp_path / "net" / name / "ifindex").write_text(f"{index + 1}\n")
        (tmp_path / "udev").mkdir(exist_ok=True)
        (tmp_path / "udev" / f"n{index + 1}").touch()
    (tmp_path / "net" / "wlan0" / "wireless").mkdir()
    (tmp_path / "net" / "eth1").mkdir()
    (tmp_path / "net" / "eth1" / "type").write_text("1\n")
    (tmp_path / "net" / "eth1" / "ifindex").write_text("9\n")
    (tmp_path / "net.enp0s1.did-setup").touch()  # what ifup leaves: the loop stops
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "go").touch()
    env = _env(tmp_path, ZKV_DRACUT_LIB=str(lib), FAKE_CMDLINE=cmdline)
    done = subprocess.run(
        ["sh", str(REPO / "dracut/50zkv/zkv-early.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    log = tmp_path / "python3.log"
    if expected is None:
        assert not log.exists()
        assert "disabled" in done.stdout
    else:
        args = log.read_text()
        assert args.startswith("-I -S /usr/lib/zkv/zkv-early.pyz unlock")
        assert expected.format(run=tmp_path / "run") in args
        assert ("--root" in args) == ("--root" in expected)
    # zkv brings the network up itself (every Ethernet link, ifup in manual mode) unless dracut
    # does (rd.neednet=1, ip=); never when disabled.
    ifup_log = tmp_path / "python3.log.ifup"
    ours = expected is not None and "neednet" not in cmdline and "ip=" not in cmdline
    deadline = time.monotonic() + 5
    while ours and not ifup_log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert (ifup_log.read_text() if ifup_log.exists() else "") == ("enp0s1 -m\n" if ours else "")


_HOOK_STUBS = """
info() { echo "info $*" >>"$HOOK_LOG"; }
warn() { echo "warn $*" >>"$HOOK_LOG"; }
getarg() { echo ""; }
systemctl() {
    case "$*" in
        *is-active*) echo active ;;
        *) echo "systemctl $*" >>"$HOOK_LOG" ;;
    esac
}
"""


def _hook(tmp: Path, client: str, rc: int = 0, **extra: str) -> str:
    """zkv-early.sh as zkv-early.service runs it (``client``: "running", "killed" before the
    hook, or "none"), then the pre-mount hook sourced; returns what they said."""
    (tmp / "zkv-early.pyz").touch()
    script = f"""
{_HOOK_STUBS}
if [ {client} != none ]; then
    sh {REPO}/dracut/50zkv/zkv-early.sh &
    early=$!
    while [ ! -e "$ZKV_RUN/started" ]; do sleep 0.05; done
    if [ {client} = killed ]; then kill "$early"; wait "$early"; fi
fi
DRACUT_SYSTEMD=1
. {REPO}/dracut/50zkv/zkv-load-key.sh
if [ {client} = running ] && [ ! -e "$ZKV_RUN/status" ]; then echo client-still-running; fi
[ -e "$ZKV_RUN/go" ] && echo go-given
# The killed service's client lives on (systemd would have killed it too): let it end.
[ -d "$ZKV_RUN" ] && : >"$ZKV_RUN/go"
echo hook-done
"""
    env = _env(
        tmp,
        HOOK_LOG=str(tmp / "hook.log"),
        ZKV_PYZ=str(tmp / "zkv-early.pyz"),
        ZKV_CONF=str(tmp / "none.conf"),
        ZKV_DRACUT_LIB=str(_dracut_lib(tmp)),
        # dracut brings the network up: zkv-early.sh's own look for links is not started.
        FAKE_CMDLINE="root=zfs:rpool/ROOT/debian rd.neednet=1",
        FAKE_RC=str(rc),
        **extra,
    )
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert "hook-done" in done.stdout, done.stderr
    log = tmp / "hook.log"
    return done.stdout + (log.read_text() if log.exists() else "")


def test_dracut_hook_says_go_and_waits_for_the_client(tmp_path: Path) -> None:
    out = _hook(tmp_path, "running")
    assert "go-given" in out
    assert "client-still-running" not in out
    assert (tmp_path / "run" / "status").read_text() == "0\n"
    assert "info" not in out and "systemctl" not in out


def test_dracut_hook_reports_a_failed_client(tmp_path: Path) -> None:
    out = _hook(tmp_path, "running", rc=44)
    assert "not unlocked (exit 44)" in out


def test_dracut_hook_does_not_wait_without_a_client(tmp_path: Path) -> None:
    out = _hook(tmp_path, "none")
    assert "go-given" not in out
    assert "hook-done" in out


def test_dracut_hook_does_not_wait_for_a_client_gone_without_a_status(tmp_path: Path) -> None:
    started = time.monotonic()
    out = _hook(tmp_path, "killed")
    assert "go-given" not in out
    assert "not unlocked (exit ?)" in out
    assert time.monotonic() - started < 10


def test_dracut_hook_waits_as_long_as_the_client_said(tmp_path: Path) -> None:
    """The bound comes from the client's wait-limit file, not from parsing early.conf."""
    started = time.monotonic()
    out = _hook(tmp_path, "running", FAKE_WAIT_LIMIT="1", FAKE_SLEEP="4")
    assert "did not finish in time, stopping it" in out
    assert "systemctl --no-block stop zkv-early.service" in out
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("cmdline", "off"),
    [
        ("root=zfs:rpool/ROOT/debian quiet", False),
        ("zkv=off", True),
        ("rd.zkv=0", True),
        ("zkv=No", True),
        ("rd.zkv=false quiet", True),
        ("zkv=off zkv=on", False),  # the last word wins, as dracut's getarg and the kernel
        ("zkv=on rd.zkv=off", True),
        ("zkv.debug zkv.gateway=https://off", False),
        ("nozkv=off", False),
    ],
)
def test_zkv_off_is_decided_in_one_place(tmp_path: Path, cmdline: str, off: bool) -> None:
    done = subprocess.run(
        ["sh", "-c", '. "$ZKV_LIB_SH"; zkv_disabled "$1"', "sh", cmdline],
        env=_env(tmp_path),
        check=False,
    )
    assert (done.returncode == 0) is off


@pytest.mark.parametrize(
    ("root", "dataset"),
    [
        ("zfs:rpool/ROOT/debian", "rpool/ROOT/debian"),
        ("ZFS=rpool/ROOT/debian", "rpool/ROOT/debian"),
        ("zfs:ZFS=rpool/ROOT/debian", "rpool/ROOT/debian"),
        ("zfs:AUTO", ""),
        ("ZFS=AUTO", ""),
        ("/dev/sda1", ""),
        ("", ""),
    ],
)
def test_root_dataset_forms(tmp_path: Path, root: str, dataset: str) -> None:
    done = subprocess.run(
        ["sh", "-c", '. "$ZKV_LIB_SH"; zkv_root_dataset "$1"; echo "[$zkv_root]"', "sh", root],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"[{dataset}]"


def test_wipe_keeps_only_the_handover(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("handover", "status", "go", ".hidden", "wait-limit"):
        (run / name).write_text("x")
    extra = tmp_path / "net-eth0.conf"
    extra.write_text("x")
    subprocess.run(
        ["sh", "-c", '. "$ZKV_LIB_SH"; zkv_wipe_run "$1"', "sh", str(extra)],
        env=_env(tmp_path),
        check=True,
    )
    assert sorted(p.name for p in run.iterdir()) == ["handover"] and not extra.exists()
    (run / "handover").unlink()
    (run / "status").write_text("0\n")
    subprocess.run(["sh", "-c", '. "$ZKV_LIB_SH"; zkv_wipe_run'], env=_env(tmp_path), check=True)
    assert not run.exists()


def _initramfs_tools(tmp: Path, body: str, rc: int = 0, **extra: str) -> str:
    """zkv-functions sourced with stubs (installed, networking) and the fake python3."""
    script = f"""
. {REPO}/initramfs-tools/scripts/zkv-functions
ZKV_RUN=$ZKV_RUN_DIR
zkv_installed() {{ return 0; }}
zkv_link_up() {{ :; }}  # would set the host's links up
configure_networking() {{ :; }}
{body}
"""
    env = _env(tmp, ZKV_RUN_DIR=str(tmp / "run"), FAKE_RC=str(rc), **extra)
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("rc", [0, 44])
def test_initramfs_tools_early_client_and_drop_in(tmp_path: Path, rc: int) -> None:
    out = _initramfs_tools(
        tmp_path,
        'zkv_start rpool/ROOT/debian; sleep 0.2; [ -e "$ZKV_RUN/go" ] && echo early-go\n'
        'zkv_unlock rpool/ROOT/debian; echo "rc=$?"',
        rc,
    )
    assert "early-go" not in out, "the client must wait for the drop-in's go"
    assert f"rc={rc}" in out
    args = (tmp_path / "python3.log").read_text()
    assert (
        f"unlock --root rpool/ROOT/debian --after {tmp_path}/run/go --prompt console "
        "--tty /dev/console" in args
    )
    assert (tmp_path / "run" / "status").read_text().strip() == str(rc)
    assert (tmp_path / "run" / "network.pid").exists()


def test_initramfs_tools_stop_right_after_the_start(tmp_path: Path) -> None:
    """local-top on OpenZFS 2.1 stops the client when the import fails, maybe before the
    background job has written the client's pid: the client is still killed."""
    out = _initramfs_tools(
        tmp_path,
        "zkv_start rpool/ROOT/debian; zkv_stop; n=0\n"
        'until zkv_status || [ "$n" -gt 50 ]; do n=$((n + 1)); sleep 0.1; done\n'
        'echo "status=$zkv_rc"; : >"$ZKV_RUN/go"  # a client left waiting would end now',
    )
    assert "status=143" in out, out  # SIGTERM, not a client still waiting for its go


def test_initramfs_tools_drop_in_without_an_early_client(tmp_path: Path) -> None:
    """No client started early (local-top did not start one): it runs there and then."""
    out = _initramfs_tools(tmp_path, 'zkv_unlock rpool/ROOT/debian; echo "rc=$?"', 33)
    assert "rc=33" in out
    args = (tmp_path / "python3.log").read_text()
    assert "--after" not in args
    assert "unlock --root rpool/ROOT/debian --prompt console --tty /dev/console" in args


def _pyz(tmp: Path) -> Path:
    target = tmp / "zkv-early.pyz"
    subprocess.run(
        [sys.executable, "-m", "zkv_early.build_pyz", "--output", str(target)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return target


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3")
def test_python_files_cover_what_the_client_imports(tmp_path: Path) -> None:
    done = subprocess.run(
        [*FILES_TOOL, "python", str(_pyz(tmp_path))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if "python3-cryptography is not importable" in done.stderr:
        pytest.skip("the system python3 has no cryptography")
    assert done.returncode == 0, done.stderr
    pairs = [line.split() for line in done.stdout.splitlines()]
    files = [dst for _, dst in pairs]
    names = {Path(f).name for f in files}
    assert any(n.startswith("python3.") for n in names)
    assert any(n.startswith("_ssl.") for n in names) or "ssl.py" in names
    assert any("cryptography" in f for f in files)
    assert "os.pyc" in names and "encodings" in " ".join(files)
    assert not any(f.endswith(".py") and "__pycache__" not in f for f in files), "bytecode only"
    assert not any("zkv_early" in f or "/zkv/" in f for f in files), (
        "zkv's own modules stay in the zipapp"
    )
    assert not any(f.startswith(str(tmp_path)) for f in files)


def test_ca_file_from_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = tmp_path / "early.conf"
    conf.write_text(f"[gateway]\nurl = https://gw/\nca_file = {ca}  # the test CA\n")
    done = subprocess.run([*FILES_TOOL, "ca", str(conf)], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == str(ca)
    conf.write_text("[gateway]\nurl = https://gw/\nca_file = /nonexistent.pem\n")
    done = subprocess.run([*FILES_TOOL, "ca", str(conf)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "missing" in done.stderr
    pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    conf.write_text(f"[gateway]\nurl = https://gw/\npin_sha256 = {pin}\n")  # no CA file to copy
    done = subprocess.run([*FILES_TOOL, "ca", str(conf)], cwd=REPO, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "")
    conf.write_text("[gateway]\nurl = https://gw/\n")  # neither: the build fails, saying why
    done = subprocess.run([*FILES_TOOL, "ca", str(conf)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "must name the gateway's CA" in done.stderr


def test_initramfs_tools_waits_as_long_as_the_client_said(tmp_path: Path) -> None:
    out = _initramfs_tools(
        tmp_path,
        "zkv_start rpool/ROOT/debian; t0=$(date +%s); zkv_unlock rpool/ROOT/debian; rc=$?\n"
        'echo "rc=$rc took=$(($(date +%s) - t0))"',
        FAKE_WAIT_LIMIT="1",
        FAKE_SLEEP="4",
    )
    found = re.search(r"rc=(\d+) took=(\d+)", out)
    assert found, out
    rc, took = found.groups()
    assert rc == "1"
    assert int(took) <= 3, "bounded by the client's 1 s, not the default 330 s"


def test_initramfs_tools_zkv_off_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("root=ZFS=rpool/ROOT/debian rd.zkv=0\n")
    out = _initramfs_tools(
        tmp_path,
        "zkv_network() { echo network-started; }\n"
        'zkv_start rpool/ROOT/debian; echo "start=$?"\n'
        'zkv_unlock rpool/ROOT/debian; echo "unlock=$?"',
        ZKV_CMDLINE=str(tmp_path / "cmdline"),
    )
    assert "start=1" in out and "unlock=1" in out
    assert "network-started" not in out
    assert not (tmp_path / "python3.log").exists()


# --- LUKS devices at boot (docs/luks.md) --------------------------------------------------

LUKS_ENTRY = "luks:UUID=0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def test_dracut_with_luks_entries_installs_cryptsetup_and_the_wait(tmp_path: Path) -> None:
    stub = 'instmods() { echo "instmods $*" >>"$log"; }'
    done = _dracut(tmp_path, f"export FAKE_LUKS={LUKS_ENTRY}; {stub}; installkernel; install")
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "instmods dm_crypt =crypto" in calls
    assert "inst_multiple cryptsetup blkid" in calls
    assert (tmp_path / "initdir/etc/zkv/luks-devices").read_text() == LUKS_ENTRY + "\n"
    assert (
        f"inst_script {REPO}/dracut/50zkv/zkv-wait-devices.sh /usr/lib/zkv/zkv-wait-devices.sh"
        in calls
    )
    assert "/usr/lib/systemd/system/systemd-cryptsetup@.service.d/50-zkv.conf" in calls
    assert "add-wants sysinit.target zkv-wait-devices.service" in calls


def test_dracut_without_luks_entries_adds_none_of_it(tmp_path: Path) -> None:
    stub = 'instmods() { echo "instmods $*" >>"$log"; }'
    done = _dracut(tmp_path, f"{stub}; installkernel; install")
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "dm_crypt" not in calls and "cryptsetup" not in calls and "wait-devices" not in calls
    assert not (tmp_path / "initdir/etc/zkv/luks-devices").exists()


def test_dracut_with_luks_entries_ends_the_build_without_cryptsetup(tmp_path: Path) -> None:
    done = _dracut(
        tmp_path, f"export FAKE_LUKS={LUKS_ENTRY} FAKE_MISSING=cryptsetup; check; echo returned"
    )
    assert done.returncode == 1 and "returned" not in done.stdout
    calls = (tmp_path / "calls.log").read_text()
    assert "dfatal zkv: the keystore has LUKS entries but cryptsetup is missing" in calls
    no_dm = _dracut(
        tmp_path,
        f"export FAKE_LUKS={LUKS_ENTRY}; instmods() {{ return 1; }}; installkernel; echo r",
    )
    assert no_dm.returncode == 1 and "r" not in no_dm.stdout.split()


def _unit(path: Path) -> dict[str, list[str]]:
    unit: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            unit.setdefault(key, []).extend(value.split())
    return unit


@pytest.mark.parametrize(
    "path", ["dracut/50zkv/zkv-wait-devices.service", "systemd/zkv-open-devices.service"]
)
def test_devices_open_before_the_import_and_the_stock_cryptsetup_units(path: str) -> None:
    unit = _unit(REPO / path)
    assert unit["DefaultDependencies"] == ["no"]
    imports = {"zfs-import-cache.service", "zfs-import-scan.service", "zfs-import.target"}
    assert {"cryptsetup.target", *imports} <= set(unit["Before"])
    dropin = _unit(REPO / "systemd/systemd-cryptsetup@.service.d/50-zkv.conf")
    assert Path(path).stem + ".service" in dropin["After"]


def test_real_root_opens_what_was_handed_over_and_keeps_it_for_the_load() -> None:
    unit = _unit(REPO / "systemd/zkv-open-devices.service")
    assert unit["ExecStart"][-3:] == ["handover-open", "--handover", "/run/zkv/handover"]
    assert "ExecStopPost" not in unit, "zkv-load-keys.service wipes the handover, after the import"
    assert unit["WantedBy"] == ["zfs-import.target"]
    assert "systemd-remount-fs.service" in unit["After"]


def _wait_devices(tmp: Path, body: str, marker: bool = True) -> str:
    image = tmp / "image-devices"
    if marker:
        image.write_text(LUKS_ENTRY + "\n")
    (tmp / "run").mkdir(exist_ok=True)
    script = f'. "$ZKV_LIB_SH"\n{body}\n'
    env = _env(tmp, ZKV_IMAGE_DEVICES=str(image))
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wait_devices_until_opened_or_given_up_bounded(tmp_path: Path) -> None:
    # No LUKS entries in the image: no wait at all.
    assert "rc=0" in _wait_devices(tmp_path, 'zkv_wait_devices; echo "rc=$?"', marker=False)
    # Opened a moment later: done, no status needed.
    out = _wait_devices(
        tmp_path,
        '(sleep 0.3; echo 0 >"$ZKV_RUN/devices") &\n'
        'zkv_wait_devices; echo "rc=$? $(cat "$ZKV_RUN/devices")"',
    )
    assert "rc=0 0" in out
    (tmp_path / "run" / "devices").unlink()
    # The client gave up (denied, ...): its status ends the wait, the stock prompts follow.
    out = _wait_devices(
        tmp_path, 'echo 44 >"$ZKV_RUN/status"; zkv_wait_devices; echo "rc=$? status=$zkv_rc"'
    )
    assert "rc=0 status=44" in out
    (tmp_path / "run" / "status").unlink()
    # Bounded by the client's own limit; a client gone without a word ends it too.
    started = time.monotonic()
    out = _wait_devices(tmp_path, 'echo 1 >"$ZKV_RUN/wait-limit"; zkv_wait_devices; echo "rc=$?"')
    assert "rc=1" in out and time.monotonic() - started < 5
    out = _wait_devices(tmp_path, 'sleep 0 & gone=$!; wait; zkv_wait_devices "$gone"; echo "rc=$?"')
    assert "rc=2" in out


def test_dracut_wait_devices_unit_script(tmp_path: Path) -> None:
    (tmp_path / "image-devices").write_text(LUKS_ENTRY + "\n")
    (tmp_path / "run").mkdir()
    env = _env(
        tmp_path,
        ZKV_IMAGE_DEVICES=str(tmp_path / "image-devices"),
        ZKV_DRACUT_LIB=str(_dracut_lib(tmp_path)),
        FAKE_CMDLINE="root=zfs:rpool/ROOT/debian",
    )
    script = REPO / "dracut/50zkv/zkv-wait-devices.sh"
    (tmp_path / "run" / "started").write_text(f"{os.getpid()}\n")
    (tmp_path / "run" / "status").write_text("44\n")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "LUKS devices not opened (exit 44)" in done.stdout
    (tmp_path / "run" / "status").unlink()
    (tmp_path / "run" / "devices").write_text("0\n")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "")
    off = {**env, "FAKE_CMDLINE": "root=zfs:rpool/ROOT/debian rd.zkv=0"}
    (tmp_path / "run" / "started").unlink()
    started = time.monotonic()
    done = subprocess.run(["sh", str(script)], env=off, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "") and time.monotonic() - started < 3


def _initramfs_tools_luks(tmp: Path, body: str, **extra: str) -> str:
    """zkv-functions on an image with LUKS entries, its warnings on stdout."""
    (tmp / "image-devices").write_text(LUKS_ENTRY + "\n")
    stub = 'log_warning_msg() { echo "warn $*"; }\n'
    return _initramfs_tools(tmp, stub + body, ZKV_IMAGE_DEVICES=str(tmp / "image-devices"), **extra)


def test_initramfs_tools_holds_the_import_until_the_devices_are_open(tmp_path: Path) -> None:
    out = _initramfs_tools_luks(
        tmp_path,
        'zkv_start rpool/ROOT/debian && zkv_devices; [ -e "$ZKV_RUN/devices" ] && echo opened\n'
        '[ -e "$ZKV_RUN/go" ] || echo no-go-yet\n'
        'zkv_unlock rpool/ROOT/debian; echo "rc=$?"',
        FAKE_DEVICES="0.5",
    )
    assert "opened" in out and "no-go-yet" in out and "rc=0" in out and "warn" not in out


def test_initramfs_tools_says_nothing_of_devices_on_an_image_without_luks(tmp_path: Path) -> None:
    # Every boot without LUKS entries once warned "LUKS devices not opened (exit ?)".
    out = _initramfs_tools(
        tmp_path,
        'log_warning_msg() { echo "warn $*"; }\n'
        'zkv_start rpool/ROOT/debian && zkv_devices; echo "rc=$?"\n'
        'zkv_unlock rpool/ROOT/debian; echo "unlock=$?"',
        ZKV_IMAGE_DEVICES=str(tmp_path / "no-such-file"),
    )
    assert "rc=0" in out and "unlock=0" in out and "warn" not in out, out


def test_initramfs_tools_stops_a_client_that_never_opens_the_devices(tmp_path: Path) -> None:
    out = _initramfs_tools_luks(
        tmp_path,
        "zkv_start rpool/ROOT/debian && zkv_devices; n=0\n"
        'until zkv_status || [ "$n" -gt 50 ]; do n=$((n + 1)); sleep 0.1; done\n'
        'echo "status=$zkv_rc"; : >"$ZKV_RUN/go"',
        FAKE_WAIT_LIMIT="1",
    )
    assert "warn zkv: the boot client did not open the LUKS devices in time" in out
    assert "status=143" in out


def test_initramfs_tools_a_root_that_needs_no_key_still_gets_the_data_keys_handed_over(
    tmp_path: Path,
) -> None:
    """A root pool on LUKS without native encryption: OpenZFS's load-key hook never runs, so
    local-bottom (and 2.1's local-top) give the go; the client finishes (writing the handover)
    instead of being killed."""
    out = _initramfs_tools_luks(
        tmp_path,
        "zkv_start rpool/ROOT/debian && zkv_devices; zkv_root_needs_no_key\n"
        '[ -e "$ZKV_RUN/go" ] && echo go; zkv_status && echo "status=$zkv_rc"',
        FAKE_DEVICES="0.2",
    )
    assert "go" in out.split() and "status=0" in out, out


def test_initramfs_tools_a_client_that_opened_nothing_gets_no_go(tmp_path: Path) -> None:
    """Without the devices file (the keystore is not open: approval pending, stock prompt used)
    there is nothing to hand over yet: no go; local-bottom stops the client as before."""
    out = _initramfs_tools(
        tmp_path,
        "zkv_start rpool/ROOT/debian; sleep 0.2; zkv_root_needs_no_key\n"
        '[ -e "$ZKV_RUN/go" ] || echo no-go; zkv_stop',
    )
    assert "no-go" in out, out
