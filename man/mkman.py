"""Write the man pages from their prose (man/*.in) and the programs' own parsers.

    python3 man/mkman.py [--check]

Each NAME.in is roff with placeholders that this fills in from the code, so the pages cannot
drift from --help: @COMMANDS@ (every subcommand, its usage and options, from the argparse tree
or zkv_early.args), @EXIT@ (zkv/errors.py's catalogue), @CONF@ (the settings early.conf takes,
from zkv_early/config.py), @VERSION@. --check exits 1 when a committed page is out of date
(tests/unit/test_manpages.py runs it); `make man` rewrites them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

MAN = Path(__file__).resolve().parent
sys.path.insert(0, str(MAN.parent))
os.environ["COLUMNS"] = "78"  # argparse wraps usage lines to this, whatever the terminal

from zkv import __version__, errors  # noqa: E402

DATE = "2026-12"  # the month of the release the pages describe, not of the build


def escape(text: str) -> str:
    """Plain text to roff: backslashes and hyphens, and no line starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.splitlines())


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{escape(str(action.metavar or action.dest)).upper()}\\fR"
    names = ", ".join(f"\\fB{escape(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    return f"{names} \\fI{escape(str(metavar))}\\fR"


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": parser.prog}
    if action.choices and action.metavar is not None:
        text += f" (one of: {', '.join(map(str, action.choices))})"
    return escape(text)


Leaf = tuple[argparse.ArgumentParser, str]  # a command and its one-line help


def _leaves(parser: argparse.ArgumentParser, skip: set[str], help_: str = "") -> Iterator[Leaf]:
    """Every command that runs something, depth first, in the order --help lists them."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser, parser.description or help_
        return
    helps = {a.dest: a.help or "" for a in subs[0]._choices_actions}
    for name, child in subs[0].choices.items():
        if name not in skip:
            yield from _leaves(child, skip, helps.get(name, ""))


def _described(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]


def _entry(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    return f".TP\n{_option(action)}\n{_help(action, parser)}"


def _argparse_commands(parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> str:
    """A .SS per command (its usage line, description and own options); options that most
    commands share are described once, under "Common options"."""
    leaves = list(_leaves(parser, set(skip)))
    seen: dict[tuple[str, ...], int] = {}
    for leaf, _ in leaves:
        for action in _described(leaf):
            seen[tuple(action.option_strings)] = seen.get(tuple(action.option_strings), 0) + 1
    common = {names for names, n in seen.items() if names and n > 2}
    out: list[str] = []
    shown: set[tuple[str, ...]] = set()
    for leaf, what in leaves:
        first, *rest = leaf.format_usage().removeprefix("usage: ").rstrip().splitlines()
        usage = "\n".join([first, *("    " + line.strip() for line in rest)])
        out.append(f'.SS "{escape(leaf.prog)}"')
        if what:
            out.append(escape(f"{what[:1].upper()}{what[1:]}."))
        out.append(f".PP\n.nf\n{escape(usage)}\n.fi")
        for action in _described(leaf):
            names = tuple(action.option_strings)
            if names not in common:
                out.append(_entry(action, leaf))
    if common:
        out.append('.SS "Common options"')
        for leaf, _ in leaves:
            for action in _described(leaf):
                names = tuple(action.option_strings)
                if names in common and names not in shown:
                    shown.add(names)
                    out.append(_entry(action, leaf))
    return "\n".join(out)


def zkv_commands() -> str:
    from zkv_admin.cli import build_parser

    return _argparse_commands(build_parser(), skip={"fs"})


def gateway_commands() -> str:
    from gateway.cli import parser

    return _argparse_commands(parser())


def early_commands() -> str:
    from zkv_early.args import Option
    from zkv_early.cli import build_parser

    def entry(o: Option) -> str:
        return f".TP\n\\fB{escape(o.name)}\\fR \\fI{o.metavar}\\fR\n{escape(o.describe())}"

    parser = build_parser()
    lines = ['.SS "global options"', *map(entry, parser.options)]
    for command in parser.commands.values():
        lines.append(f'.SS "{escape(parser.prog)} {command.name}"')
        lines.append(escape(f"{command.summary[:1].upper()}{command.summary[1:]}."))
        lines.append(".PP\n" + escape(command.description))
        lines += map(entry, command.options)
    return "\n".join(lines)


def exit_codes(keep: Callable[[int], bool]) -> str:
    rows = [".TP\n\\fB0\\fR\nsuccess"]
    rows += [f".TP\n\\fB{code}\\fR\n{escape(text)}" for code, text in errors.exit_codes(keep)]
    return "\n".join(rows)


def conf_settings() -> str:
    from zkv_early import config

    listing = (config.__doc__ or "").split("\n\n", 1)[1]
    return ".nf\n.RS 4\n" + escape(listing.rstrip()) + "\n.RE\n.fi"


PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "zkv.8": {
        "@COMMANDS@": zkv_commands,
        "@EXIT@": lambda: exit_codes(lambda code: code < errors.SIGNAL_CODES),
    },
    "zkv-gateway.8": {"@COMMANDS@": gateway_commands},
    "zkv-early.8": {
        "@COMMANDS@": early_commands,
        "@EXIT@": lambda: exit_codes(
            lambda code: code < errors.ADMIN_CODES or code >= errors.SIGNAL_CODES
        ),
    },
    "zkv-early.conf.5": {"@CONF@": conf_settings},
}


def render(name: str) -> str:
    text = (MAN / f"{name}.in").read_text()
    section = name.rsplit(".", 1)[1]
    title = name.rsplit(".", 1)[0].upper()
    header = f'.TH {escape(title)} {section} "{DATE}" "zkv {__version__}" "zkv"\n'
    fill: dict[str, Callable[[], str]] = {**PAGES[name], "@VERSION@": lambda: __version__}
    for placeholder, make in fill.items():
        text = text.replace(placeholder, make())
    return header + text


def main(argv: list[str]) -> int:
    stale = []
    for name in PAGES:
        page, new = MAN / name, render(name)
        if "--check" in argv:
            if not page.exists() or page.read_text() != new:
                stale.append(name)
        else:
            page.write_text(new)
    for name in stale:
        print(f"man/{name} is out of date: run make man", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
