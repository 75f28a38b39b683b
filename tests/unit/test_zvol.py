"""Finding a zvol's device without udev's link (zkv/zvol.py), and the bounded wait for it."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from zkv import zvol


def test_the_ioctl_number_is_zvol_ids() -> None:
    # zvol_id.c: ioctl(fd, BLKZNAME, name) with BLKZNAME = _IOR(0x12, 125, char[256])
    assert zvol.BLKZNAME == 0x8100127D


def test_the_link_when_udev_made_it(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.write_text("")
    assert zvol.node_of(str(link)) == str(link)


def _kernel(tmp_path: Path, names: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """/sys/block and /dev with zd nodes whose BLKZNAME answers are ``names``."""
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    sys_block.mkdir()
    dev.mkdir()
    for node in ("zd0", "zd16", "zd16p1", "vda"):
        (sys_block / node).mkdir()
    for node, dataset in names.items():
        (dev / node).write_text(dataset)

    def ioctl(fd: int, request: int, arg: bytes) -> bytes:
        assert request == zvol.BLKZNAME and len(arg) == 256
        name = Path(f"/proc/self/fd/{fd}").read_text().encode()
        return name + bytes(256 - len(name))

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    return tmp_path


def test_the_kernel_node_when_udev_lost_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _kernel(tmp_path, {"zd0": "tank/other", "zd16": "tank/vol"}, monkeypatch)
    find = {"sys_block": str(root / "sys"), "dev": str(root / "dev")}
    assert zvol.node_of("/dev/zvol/tank/vol", **find) == str(root / "dev" / "zd16")
    assert zvol.node_of("/dev/zvol/tank/gone", **find) is None
    assert zvol.node_of("/dev/mapper/x", **find) is None  # not a zvol path


def test_a_node_that_is_no_zvol_answers_none(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("")
    assert zvol.dataset_of(str(plain)) is None  # ENOTTY
    assert zvol.dataset_of(str(tmp_path / "absent")) is None


def test_the_wait_is_bounded_and_ends_when_the_devices_come() -> None:
    now = [0.0]
    seen: dict[str, int] = {}

    def find(link: str) -> str | None:
        seen[link] = seen.get(link, 0) + 1
        return "/dev/zd0" if link == "a" and seen[link] >= 3 else None

    def sleep(seconds: float) -> None:
        now[0] += seconds

    left = zvol.await_nodes(["a", "b"], 5.0, find, clock=lambda: now[0], sleep=sleep)
    assert left == ["b"] and now[0] == pytest.approx(5.0, abs=0.3)
    assert zvol.await_nodes([], 5.0, find) == []
