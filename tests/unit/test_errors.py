"""Exit codes are an interface: unique, and docs/exit-codes.md is generated from errors.py.

Regenerate the tables after adding an error class: ``python3 -m tests.unit.test_errors``.
Prose outside the generated blocks is kept.
"""

from __future__ import annotations

import re
from pathlib import Path

from zkv import errors

DOC = Path(__file__).parents[2] / "docs" / "exit-codes.md"
SECTIONS = {  # block name -> exit code range
    "shared": range(1, 40),
    "boot": range(40, 50),
    "admin": range(50, 70),
    "signals": range(128, 256),
}


def error_classes() -> list[type[errors.ZkvError]]:
    return errors.catalogue()


def template(cls: type[errors.ZkvError]) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0].replace("|", "\\|")


def table(codes: range) -> str:
    rows = ["| code | error | message |", "|---:|---|---|"]
    for cls in error_classes():
        if cls.exit_code in codes:
            rows.append(f"| {cls.exit_code} | `{cls.__name__}` | {template(cls)} |")
    return "\n".join(rows)


def render(text: str) -> str:
    for name, codes in SECTIONS.items():
        block = re.compile(
            rf"(<!-- BEGIN generated {name} -->\n).*?(<!-- END generated {name} -->)", re.S
        )
        text = block.sub(lambda m, c=codes: f"{m.group(1)}{table(c)}\n{m.group(2)}", text)
    return text


def test_each_class_that_sets_a_code_has_its_own() -> None:
    seen: dict[int, str] = {}
    for cls in error_classes():
        if "exit_code" in vars(cls):
            assert cls.exit_code not in seen, f"{cls.__name__} reuses {seen.get(cls.exit_code)}"
            seen[cls.exit_code] = cls.__name__


def test_every_code_is_in_a_documented_range() -> None:
    for cls in error_classes():
        assert any(cls.exit_code in codes for codes in SECTIONS.values()), cls.__name__


def test_doc_is_current() -> None:
    text = DOC.read_text()
    for name in SECTIONS:
        assert f"<!-- BEGIN generated {name} -->" in text
    assert render(text) == text, "run: python3 -m tests.unit.test_errors"


def test_messages_format_without_arguments() -> None:
    for cls in error_classes():
        assert isinstance(cls().message, str)  # a missing field never raises


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))


def test_the_boot_clients_help_lists_every_code_it_can_end_with() -> None:
    """Generated from the classes: every non-admin code is there, with its class's words."""
    from zkv_early import cli

    help_text = cli.EPILOG
    for cls in errors.catalogue():
        line = f"  {cls.exit_code:<4} "
        if cls.exit_code < errors.ADMIN_CODES or cls.exit_code >= errors.SIGNAL_CODES:
            assert any(
                row.startswith(line) and errors.summary(cls) in row
                for row in help_text.splitlines()
            ), cls.__name__
        else:
            assert line not in help_text, f"{cls.__name__} is the admin CLI's"
