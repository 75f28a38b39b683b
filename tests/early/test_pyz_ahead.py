"""The built pyz started before the pools are imported (``--after``), and what it loads where.

The hooks start the client early so that Python's start, the network and the approval overlap
the pool import; it must not look at ZFS before the hook says the import is done.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

from tests.early.conftest import DATA_KEY, ROOT_KEY, Machine
from tests.early.test_pyz_gateway import assert_no_secret
from tests.harness.gateway import running_gateway
from zkv_early import handover
from zkv_early.boot_unlock import AHEAD_NICE, LOAD_MARGIN

ROOT = "rpool/ROOT/debian"


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """The client's stderr up to the line holding ``text`` (the pipe stays open for the rest)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line, f"the client ended before saying {text!r}: {seen}"
        seen += line
        if text not in seen:
            threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return seen


def test_started_before_the_import_waits_for_the_go_then_loads_the_root_pool_only(
    machine: Machine, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    pools = machine.zfs.state()
    machine.zfs.write({"datasets": {}})  # nothing imported yet
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        proc = machine.start("--root", ROOT, "--after", str(go))
        seen = read_until(proc, "waiting for the pools to be imported")
        time.sleep(0.5)
        assert proc.poll() is None, "the client must wait for the hook's go"
        # Until the go it yields the CPU to the import (the nice value, field 19 of stat).
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert stat.rsplit(")", 1)[1].split()[16] == str(AHEAD_NICE)
        assert machine.zfs.calls() == [], "no zfs call before the pools are imported"
        machine.zfs.write(pools)
        machine.import_data_pool()
        go.touch()
        out, err = proc.communicate(timeout=30)
        err = seen + err
    assert proc.returncode == 0, err
    assert machine.zfs.keystatus("rpool") == "available"
    # tank is imported too (dracut imports every pool) but is a data pool: handed over.
    assert machine.zfs.keystatus("tank") == "unavailable"
    assert handover.read(str(machine.handover)).candidates("tank") == [DATA_KEY]
    loads = [stdin for argv, stdin in machine.zfs.calls() if "load-key" in argv]
    assert loads == [ROOT_KEY]
    # After the go every zfs call is on the root's critical path: one listing (which also
    # names the root's encryption root), one load; OpenZFS's script checks keystatus itself.
    assert [argv[0] for argv, _ in machine.zfs.calls()] == ["list", "load-key"]
    # After the go the load is on the root's critical path: normal priority again.
    assert machine.zfs.priorities() == [("list", 0), ("load-key", 0)]
    assert_no_secret(out + err, machine.repository_key)


def test_without_after_a_data_pool_imported_in_the_initramfs_is_handed_over(
    machine: Machine, tmp_path: Path
) -> None:
    machine.import_data_pool()
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        result = machine.run("--root", ROOT)
    assert result.returncode == 0, result.stderr
    assert machine.zfs.keystatus("rpool") == "available"
    assert machine.zfs.keystatus("tank") == "unavailable"
    assert handover.read(str(machine.handover)).candidates("tank") == [DATA_KEY]


def test_without_root_every_imported_entry_is_loaded(machine: Machine, tmp_path: Path) -> None:
    machine.import_data_pool()
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.zfs.keystatus("tank") == "available"
    assert not machine.handover.exists()


def test_pools_never_imported_gives_up_in_time(machine: Machine, tmp_path: Path) -> None:
    machine.settings = {"timeouts": {"total": "4"}}
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        started = time.monotonic()
        result = machine.run("--root", ROOT, "--after", str(tmp_path / "never"))
        took = time.monotonic() - started
    assert result.returncode == 47, result.stderr
    assert "pools were not imported within 4 s" in result.stderr
    # The hooks' bound on their wait after the go, written beside the go file: the client's own
    # limit (total = 4) plus the time to load the keys; the hooks do not parse early.conf.
    assert (tmp_path / "wait-limit").read_text() == f"{4 + LOAD_MARGIN}\n"
    assert (tmp_path / "wait-limit").stat().st_mode & 0o777 == 0o600
    assert took < 15
    assert machine.zfs.keystatus("rpool") == "unavailable"
    assert not machine.handover.exists()
