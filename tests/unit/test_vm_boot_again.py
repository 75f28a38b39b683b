"""tests/vm/driver.py's second boot of the same disk, with a shell script in QEMU's place: the
overlay is made once, and what the first boot wrote to it the second one reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.vm import driver, qemu


def test_boot_again_starts_on_the_same_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Path] = []

    def overlay(base: Path, target: Path, base_format: str = "raw") -> Path:
        made.append(target)
        target.write_text("")
        return target

    def command(*, drives: list[str], **_kw: Any) -> list[str]:
        disk = drives[0].split(",")[0].removeprefix("file=")
        # One boot: say how many boots this disk saw before, record this one, power off.
        return ["sh", "-c", f'echo "boots before: $(wc -l < {disk})"; echo boot >> {disk}']

    monkeypatch.setattr(qemu, "overlay", overlay)
    monkeypatch.setattr(qemu, "command", command)
    image = SimpleNamespace(
        disk=tmp_path / "base.raw",
        disk_format="raw",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        flavour="dracut",
    )
    log = tmp_path / "console.log"
    with driver.Guest(image, console_log=log) as guest:  # type: ignore[arg-type]
        guest.child.expect("boots before: 0")
        first = guest.child
        guest.boot_again(timeout=10)
        assert guest.child is not first and not first.isalive()
        guest.child.expect("boots before: 1")
        disk = guest.disk
        assert made == [disk] and disk.read_text() == "boot\nboot\n"
    assert not disk.exists()  # close() drops the overlay with the guest
    text = log.read_text()  # one console log for both boots, the second one announced
    assert (
        text.index("boots before: 0")
        < text.index("--- boot again on")
        < text.index("boots before: 1")
    )
