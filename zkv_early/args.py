"""A small command-line parser for the boot client: options, one command, its options, --help.

Why not argparse: at boot every import is paid for under the real clock, and argparse (with the
shutil, bz2 and lzma its help formatter imports while options are being added) cost 6 ms of
the client's 90 on the host. What it supports is what zkv-early.pyz uses: ``--name VALUE`` and
``--name=VALUE`` options with a default, a fixed set of choices or repetition; one command
word; ``-h``/``--help`` at either level. Errors raise UsageError (exit status 2).
"""

from __future__ import annotations

from zkv.errors import UsageError


class Option:
    def __init__(
        self,
        name: str,
        metavar: str,
        help: str,
        default: str | None = None,
        choices: tuple[str, ...] = (),
        repeat: bool = False,
    ) -> None:
        self.name, self.metavar, self.help = name, metavar, help
        self.default, self.choices, self.repeat = default, choices, repeat
        self.dest = name.lstrip("-").replace("-", "_")

    def describe(self) -> str:
        text = self.help
        if self.choices:
            text += f" ({'|'.join(self.choices)})"
        if self.default is not None:
            text += f" (default: {self.default})"
        return text


class Command:
    def __init__(self, name: str, summary: str, description: str, options: list[Option]) -> None:
        self.name, self.summary, self.description, self.options = (
            name,
            summary,
            description,
            options,
        )


class Help(Exception):
    """--help was asked for; ``text`` is what to print (exit status 0)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Parser:
    def __init__(
        self,
        prog: str,
        description: str,
        epilog: str,
        options: list[Option],
        commands: list[Command],
    ) -> None:
        self.prog, self.description, self.epilog = prog, description, epilog
        self.options, self.commands = options, {c.name: c for c in commands}

    def parse(self, argv: list[str]) -> tuple[str, dict[str, object]]:
        """(command, values by dest). Options before the command word are the global ones."""
        values: dict[str, object] = {}
        rest = self._options(argv, self.options, values, self.help())
        if not rest:
            raise UsageError(f"a command is required ({', '.join(self.commands)}); see --help")
        command = self.commands.get(rest[0])
        if command is None:
            raise UsageError(f"unknown command {rest[0]!r}; see --help")
        extra = self._options(rest[1:], command.options, values, self.command_help(command))
        if extra:
            raise UsageError(f"unexpected argument {extra[0]!r}; see {command.name} --help")
        return command.name, values

    def _options(
        self, argv: list[str], options: list[Option], values: dict[str, object], help: str
    ) -> list[str]:
        """Consume options from the front of ``argv``; return what is left from the first word."""
        by_name = {o.name: o for o in options}
        for each in options:
            values[each.dest] = [] if each.repeat else each.default
        i = 0
        while i < len(argv) and argv[i].startswith("-"):
            word = argv[i]
            if word in ("-h", "--help"):
                raise Help(help)
            name, eq, value = word.partition("=")
            option = by_name.get(name)
            if option is None:
                raise UsageError(f"unknown option {name}; see --help")
            if not eq:
                i += 1
                if i == len(argv):
                    raise UsageError(f"{name} needs a value ({option.metavar})")
                value = argv[i]
            if option.choices and value not in option.choices:
                raise UsageError(f"{name} must be one of {', '.join(option.choices)}")
            if option.repeat:
                values[option.dest].append(value)  # type: ignore[attr-defined]
            else:
                values[option.dest] = value
            i += 1
        return argv[i:]

    def help(self) -> str:
        words = " ".join(f"[{o.name} {o.metavar}]" for o in self.options)
        lines = [f"usage: {self.prog} {words} COMMAND [options]", "", self.description]
        lines += ["options:", *_rows(self.options), "", "commands:"]
        lines += [f"  {c.name:<22}{c.summary}" for c in self.commands.values()]
        lines += [f"  ({self.prog} COMMAND --help for its options)", "", self.epilog]
        return "\n".join(lines)

    def command_help(self, command: Command) -> str:
        import textwrap  # only for --help: not on the boot path

        description = textwrap.fill(command.description, 96)
        lines = [f"usage: {self.prog} {command.name} [options]", "", description, ""]
        return "\n".join([*lines, "options:", *_rows(command.options)]) + "\n"


def _rows(options: list[Option]) -> list[str]:
    import textwrap  # only for --help: not on the boot path

    rows = []
    for option in options:
        head = f"  {option.name} {option.metavar}"
        text = textwrap.wrap(option.describe(), 96 - 24)
        if len(head) >= 24:
            rows.append(head)
            head = ""
        rows.append(f"{head:<24}{text[0]}")
        rows += [" " * 24 + line for line in text[1:]]
    return rows
