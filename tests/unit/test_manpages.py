"""The man pages are what man/mkman.py makes from the parsers today, and clean roff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = ("zkv.8", "zkv-gateway.8", "zkv-early.8", "zkv-early.conf.5")


def test_pages_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "man" / "mkman.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page: str) -> None:
    done = subprocess.run(
        ["groff", "-man", "-ww", "-z", "-rCHECKSTYLE=3", str(REPO / "man" / page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_every_command_has_its_section() -> None:
    from gateway.cli import parser as gateway_parser
    from zkv_admin.cli import build_parser

    for page, prog, tree in (
        ("zkv.8", "zkv", build_parser()),
        ("zkv-gateway.8", "zkv\\-gateway", gateway_parser()),
    ):
        text = (REPO / "man" / page).read_text()
        sub = next(a for a in tree._actions if a.__class__.__name__ == "_SubParsersAction")
        for name in sub.choices:  # type: ignore[attr-defined]
            if name != "fs":
                assert f'.SS "{prog} {name.replace("-", chr(92) + "-")}"' in text, name


def test_every_setting_is_in_the_conf_page() -> None:
    from zkv_early import config

    text = (REPO / "man" / "zkv-early.conf.5").read_text().replace("\\-", "-")
    for section, options in config._OPTIONS.items():
        assert f"[{section}]" in text
        for option in options:
            assert f"{option} =" in text, option
