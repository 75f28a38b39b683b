"""A zvol's block device, with or without udev's ``/dev/zvol/POOL/VOL`` link.

udev makes the link (60-zvol.rules runs zvol_id on each zd device); under load it can kill
zvol_id, and the link never appears (openzfs/zfs#3659, #756; seen here in a TCG guest, where
zfs-volume-wait.service then waited its 10 minutes). The kernel's own node ``/dev/zdN`` is
always there, and its dataset name is the BLKZNAME ioctl's answer, which is all zvol_id asks.
Standard library only: the boot client's handover-load uses it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable

PREFIX = "/dev/zvol/"
# <sys/fs/zfs.h>: BLKZNAME = _IOR(0x12, 125, char[ZFS_MAX_DATASET_NAME_LEN = 256])
BLKZNAME = (2 << 30) | (256 << 16) | (0x12 << 8) | 125
_NAME_LEN = 256


def dataset_of(node: str) -> str | None:
    """The dataset a zd device node belongs to; None if it is no zvol (or cannot be read)."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        answer = fcntl.ioctl(fd, BLKZNAME, bytes(_NAME_LEN))
    except OSError:
        return None
    finally:
        os.close(fd)
    return answer.split(b"\0", 1)[0].decode("utf-8", "replace") or None


def node_of(link: str, sys_block: str = "/sys/block", dev: str = "/dev") -> str | None:
    """``link`` if it exists, else the ``/dev/zdN`` whose dataset it names; None if neither.
    Whole zvols only: a ``-partN`` link is left to udev."""
    if os.path.exists(link):
        return link
    if not link.startswith(PREFIX):
        return None
    wanted = link[len(PREFIX) :]
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return None
    for name in names:
        if name.startswith("zd") and name[2:].isdigit():
            node = os.path.join(dev, name)
            if dataset_of(node) == wanted:
                return node
    return None


def await_nodes(
    links: Iterable[str],
    timeout: float,
    find: Callable[[str], str | None] = node_of,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Wait up to ``timeout`` s until every link's device is there (a zvol's minor comes a
    moment after its pool's import); the links still without one."""
    missing = list(links)
    deadline = clock() + timeout
    while missing:
        missing = [link for link in missing if find(link) is None]
        if not missing or clock() >= deadline:
            break
        sleep(0.25)
    return missing
