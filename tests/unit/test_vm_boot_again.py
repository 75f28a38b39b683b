"""tests/vm/driver.py's second boot of the same disk, with a shell script in QEMU's place: the
overlay is made once, and what the first boot wrote to it the second one reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.vm import driver, own_boot, qemu


def _image(tmp_path: Path) -> SimpleNamespace:
    """What Guest reads of a testbed.Image."""
    return SimpleNamespace(
        disk=tmp_path / "base.raw",
        disk_format="raw",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        flavour="dracut",
    )


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
    image = _image(tmp_path)
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


def test_boot_again_from_its_own_boot_runs_what_the_guest_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booted: list[tuple[Path, Path]] = []
    read: list[tuple[Path, Path]] = []

    def overlay(base: Path, target: Path, base_format: str = "raw") -> Path:
        target.write_text("")
        return target

    def command(*, kernel: Path, initrd: Path, **_kw: Any) -> list[str]:
        booted.append((kernel, initrd))
        return ["true"]

    def boot_files(disk: Path, dest: Path) -> own_boot.BootFiles:
        read.append((disk, dest))
        dest.mkdir(parents=True)  # as read_boot_files does
        return own_boot.BootFiles(dest / "vmlinuz-6.1", dest / "initrd.img-6.1", "6.1")

    monkeypatch.setattr(qemu, "overlay", overlay)
    monkeypatch.setattr(qemu, "command", command)
    monkeypatch.setattr(driver, "own_boot_files", boot_files)
    image = _image(tmp_path)
    with driver.Guest(image, console_log=tmp_path / "console.log") as guest:  # type: ignore[arg-type]
        guest.boot_again(timeout=10, own_boot=True)
        guest.boot_again(timeout=10, own_boot=True)  # read again: the guest may have rebuilt
        guest.boot_again(timeout=10)  # and kept for a plain boot_again
        disk = guest.disk
    first, second = (dest for _, dest in read)
    assert [d for d, _ in read] == [disk, disk] and first != second
    assert booted == [
        (image.kernel, image.initrd),
        (first / "vmlinuz-6.1", first / "initrd.img-6.1"),
        (second / "vmlinuz-6.1", second / "initrd.img-6.1"),
        (second / "vmlinuz-6.1", second / "initrd.img-6.1"),
    ]
    assert "with its own /boot 6.1" in (tmp_path / "console.log").read_text()


def test_power_off_quits_qemu_at_once_and_the_next_boot_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """power_off() does not wait for the guest: it quits QEMU (SIGTERM, which QEMU handles by
    closing its disks) while the guest would still run, and boot_again() starts the next one."""

    def overlay(base: Path, target: Path, base_format: str = "raw") -> Path:
        target.write_text("")
        return target

    def command(*, drives: list[str], **_kw: Any) -> list[str]:
        disk = drives[0].split(",")[0].removeprefix("file=")
        script = f"trap 'echo quit >> {disk}; exit 0' TERM; echo up; while :; do sleep 0.1; done"
        return ["sh", "-c", script]

    monkeypatch.setattr(qemu, "overlay", overlay)
    monkeypatch.setattr(qemu, "command", command)
    image = SimpleNamespace(
        disk=tmp_path / "base.raw", disk_format="raw", kernel=tmp_path / "k",
        initrd=tmp_path / "i", flavour="dracut",
    )  # fmt: skip
    with driver.Guest(image, console_log=tmp_path / "console.log") as guest:  # type: ignore[arg-type]
        guest.child.expect("up")
        first = guest.child
        guest.power_off(timeout=10)
        assert not first.isalive() and guest.disk.read_text() == "quit\n"
        guest.boot_again(timeout=0)
        guest.child.expect("up")
    assert "--- power off ---" in (tmp_path / "console.log").read_text()


def test_close_ends_a_qemu_that_ignores_every_polite_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() kills QEMU and waits until it is gone (pexpect's terminate() only pauses a
    moment, and close() then raises "Could not terminate the child")."""

    def overlay(base: Path, target: Path, base_format: str = "raw") -> Path:
        target.write_text("")
        return target

    def command(**_kw: Any) -> list[str]:
        return ["sh", "-c", "trap '' HUP INT TERM; echo up; while :; do sleep 0.1; done"]

    monkeypatch.setattr(qemu, "overlay", overlay)
    monkeypatch.setattr(qemu, "command", command)
    guest = driver.Guest(_image(tmp_path), console_log=tmp_path / "console.log")  # type: ignore[arg-type]
    guest.start()
    guest.child.expect("up")
    child = guest.child
    guest.close()
    assert not child.isalive()
