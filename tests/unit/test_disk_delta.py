"""disk_delta.changes: what a payload changed in a chroot copied from its base with cp -a."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.vm import disk_delta


def _tree(root: Path) -> None:
    for rel, content in (
        ("etc/hostname", "zkv-e2e\n"),
        ("usr/bin/tool", "#!/bin/sh\n"),
        ("usr/share/doc/old/README", "gone soon\n"),
        ("usr/share/doc/old/deep/x", "x\n"),
        ("boot/initrd.img-1", "initrd\n"),
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    os.symlink("tool", root / "usr/bin/alias")


def test_changed_added_and_removed_paths(tmp_path: Path) -> None:
    base, payload = tmp_path / "base", tmp_path / "payload"
    base.mkdir()
    _tree(base)
    subprocess.run(["cp", "-a", str(base), str(payload)], check=True)
    assert disk_delta.changes(payload, base) == ([], [])

    (payload / "etc/hostname").write_text("other\n")  # content and mtime
    (payload / "usr/bin/tool").chmod(0o755)  # mode only
    (payload / "usr/lib/zkv").mkdir(parents=True)  # a new directory with a file
    (payload / "usr/lib/zkv/zkv-lib.sh").write_text("# lib\n")
    os.remove(payload / "usr/bin/alias")
    os.symlink("elsewhere", payload / "usr/bin/alias")  # a symlink's target
    subprocess.run(["rm", "-r", str(payload / "usr/share/doc/old")], check=True)
    (payload / "boot/initrd.img-1").write_text("new initrd\n")  # /boot is not the root's

    changed, removed = disk_delta.changes(payload, base)
    assert changed == [
        "etc/hostname",
        "usr/bin/alias",
        "usr/bin/tool",
        "usr/lib",
        "usr/lib/zkv",
        "usr/lib/zkv/zkv-lib.sh",
    ]
    assert removed == ["usr/share/doc/old"], "only the topmost removed path"
