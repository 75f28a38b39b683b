"""The built pyz with a root pool on LUKS (no native ZFS encryption on the root), against the
real gateway and the recording fake cryptsetup: started before the import, it opens the LUKS
device once the owner approved, says so (``devices``, for the hooks holding the import), then
at the go hands the data pools' entries over; in the real root ``handover-open`` opens the
loop files before the import and ``handover-load`` loads the rest after it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.early.conftest import DATA_KEY, Machine
from tests.early.test_pyz_ahead import read_until
from tests.early.test_pyz_gateway import assert_no_secret
from tests.fakes.fakecrypt import FakeCrypt
from tests.harness.gateway import running_gateway
from zkv import keystore, paths
from zkv.keyload.luks import mapping_name
from zkv_early import handover
from zkv_early.boot_unlock import AHEAD_NICE

ROOT_UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
ROOT_LUKS = f"luks:UUID={ROOT_UUID}"
LUKS_KEY = b"root luks passphrase"
VDEV_KEY = bytes(range(100, 132))


def luks_machine(machine: Machine, tmp_path: Path) -> tuple[FakeCrypt, str]:
    """rpool unencrypted on a LUKS partition; tank (native) and a loop-file vdev are data."""
    image = tmp_path / "vdev0.img"
    image.write_bytes(b"")
    loop = f"loopfile:{image}"
    store = keystore.read(machine.keystore).open_with_passphrase(b"correct horse battery")
    store.remove("rpool")
    store.put(keystore.Entry(ROOT_LUKS, "passphrase", "luks"), LUKS_KEY)
    store.put(keystore.Entry(loop, "keyfile", "loopfile"), VDEV_KEY)
    keystore.write(machine.keystore, store)
    crypt = FakeCrypt.create(
        tmp_path / "crypt",
        {
            "/dev/vda3": {"uuid": ROOT_UUID, "keys": [LUKS_KEY]},
            str(image): {"uuid": "", "keys": [VDEV_KEY]},
        },
    )
    state = machine.zfs.state()
    for name in ("rpool", "rpool/ROOT", "rpool/ROOT/debian"):
        state["datasets"][name] = {"encryptionroot": "-"}
    machine.zfs.write(state)
    return crypt, loop


def env(machine: Machine, crypt: FakeCrypt) -> dict[str, str]:
    # No udev links here: blkid (the fake) finds the device by UUID.
    return {**machine.env(), **crypt.env()}


def test_luks_root_opened_before_the_import_then_data_pools_in_the_real_root(
    machine: Machine, tmp_path: Path
) -> None:
    crypt, loop = luks_machine(machine, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    go = run / "go"
    pools = machine.zfs.state()
    machine.zfs.write({"datasets": {}})  # nothing imported yet: the pool sits on the LUKS device
    with running_gateway(
        tmp_path / "gw", approver="auto", secret=machine.repository_key.hex().encode()
    ) as gw:
        machine.enroll(gw)
        proc = subprocess.Popen(
            machine.argv("--root", "rpool/ROOT/debian", "--after", str(go)),
            env=env(machine, crypt),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = read_until(proc, "waiting for the pools to be imported")
        # Before the go: the LUKS device is open and the hooks are told so; no zfs call yet.
        assert f"LUKS devices opened: {ROOT_LUKS}" in seen
        assert (run / paths.DEVICES_NAME).read_text() == "0\n"
        assert crypt.state()["mappings"] == {mapping_name(ROOT_LUKS): "/dev/vda3"}
        assert machine.zfs.calls() == []
        # Devices open: back to yielding the CPU to the import until the go.
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert stat.rsplit(")", 1)[1].split()[16] == str(AHEAD_NICE)
        time.sleep(0.3)
        assert proc.poll() is None, "the client still waits for the go"
        machine.zfs.write(pools)
        machine.import_data_pool()
        go.touch()
        out, err = proc.communicate(timeout=60)
        err = seen + err
    assert proc.returncode == 0, err
    handed = handover.read(str(machine.handover))
    assert sorted(e.target for e in handed.entries()) == sorted([loop, "tank"])
    assert "losetup" not in " ".join(" ".join(c["argv"]) for c in crypt.calls())
    # Real root, before the import: the loop file; after it: tank's key, then the wipe.
    real_root = env(machine, crypt)
    opened = subprocess.run(
        [*machine.argv("handover-load")[:-3], "handover-open", "--handover", str(machine.handover)],
        env=real_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert opened.returncode == 0, opened.stderr
    assert f"devices opened: {loop}" in opened.stderr
    assert machine.handover.exists()
    assert mapping_name(loop) in crypt.state()["mappings"]
    loaded = subprocess.run(
        machine.argv("handover-load"), env=real_root, capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0, loaded.stderr
    assert machine.zfs.keystatus("tank") == "available"
    assert not machine.handover.exists()
    crypt.argv_never_holds(LUKS_KEY, VDEV_KEY, DATA_KEY)
    assert_no_secret(out + err + opened.stderr + loaded.stderr, LUKS_KEY, VDEV_KEY, DATA_KEY)
