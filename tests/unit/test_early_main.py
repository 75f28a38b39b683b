"""The boot client's one top-level handler: messages and exit codes, never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from zkv_early import boot_unlock, cli
from zkv_early.console import Console

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, cmdline: str, conf: str | None, *args: str) -> int:
    (tmp_path / "cmdline").write_text(cmdline)
    config = tmp_path / "early.conf"
    if conf is not None:
        config.write_text(conf)
    argv = ["--config", str(config), "--cmdline", str(tmp_path / "cmdline"), *args]
    return cli.main(argv)


def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "quiet", None, "unlock", "--prompt", "none") == 3
    assert "early.conf is missing" in capsys.readouterr().err


def test_missing_keystore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = (
        f"[gateway]\nurl = https://gw\nca_file = system\n[host]\nkeystore = {tmp_path / 'none'}\n"
    )
    assert run(tmp_path, "", conf, "unlock", "--prompt", "none") == 11


def test_a_bug_is_exit_1_without_traceback_unless_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("zkv_early.boot_unlock.unlock", broken)  # imported by main() when needed
    conf = "[gateway]\nurl = https://gw\nca_file = system\n"
    assert run(tmp_path, "", conf, "unlock", "--prompt", "none") == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err
    assert run(tmp_path, "zkv.debug", conf, "unlock", "--prompt", "none") == 1
    assert "Traceback" in capsys.readouterr().err


def test_handover_load_with_nothing_handed_over(tmp_path: Path) -> None:
    assert cli.main(["handover-load", "--handover", str(tmp_path / "none")]) == 0


def test_handover_load_does_not_import_the_gateway_client(tmp_path: Path) -> None:
    # zkv-load-keys.service: every import costs seconds of CPU in a TCG guest.
    code = (
        "import sys; from zkv_early.cli import main; "
        f"rc = main(['handover-load', '--handover', {str(tmp_path / 'none')!r}]); "
        "print(rc, sorted(m for m in ('zkv_early.boot_unlock', 'http.client', 'ssl') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.split() == ["0", "[]"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["unlock", "--prompt", "sometimes"], "--prompt must be one of auto, console"),
        (["unlock", "--root"], "--root needs a value (DATASET)"),
        (["unlock", "--nope"], "unknown option --nope"),
        (["unlock", "extra"], "unexpected argument 'extra'"),
        (["lock"], "unknown command 'lock'"),
        (["--config", "x"], "a command is required"),
        (["handover-load", "--root", "x"], "unknown option --root"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_options_in_both_spellings_and_repeated() -> None:
    command, values = cli.build_parser().parse(
        ["--config=/c", "unlock", "--root", "a/b", "--root=c", "--prompt=none", "--after", "/go"]
    )
    args = cli.Arguments(command, values)
    assert (args.command, args.config, args.root, args.prompt, args.after) == (
        "unlock",
        "/c",
        ["a/b", "c"],
        "none",
        "/go",
    )
    assert (args.cmdline, args.tty, args.handover) == (
        "/proc/cmdline",
        "/dev/console",
        "/run/zkv/handover",
    )


def test_help_at_both_levels(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-h"]) == 0
    assert "handover-load" in capsys.readouterr().out
    assert cli.main(["--config", "x", "unlock", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--after FILE" in out and max(len(line) for line in out.splitlines()) <= 100


def test_status_lines_do_not_swallow_a_pending_prompt() -> None:
    out = io.StringIO()
    console = Console(out)
    console.show_prompt("Recovery passphrase: ")
    console.say("waiting for approval of PIN 123456 (4:35 left)")
    assert out.getvalue() == (
        "Recovery passphrase: \nzkv: waiting for approval of PIN 123456 (4:35 left)\n"
        "Recovery passphrase: "
    )


CONTROLS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))  # C0, DEL, C1


def test_the_console_prints_no_control_character() -> None:
    """Gateway text reaches the console (an error code); an escape sequence in it must not
    clear the screen, retitle the terminal or rewrite the line above."""
    out = io.StringIO()
    Console(out).say("refused (\x1b]0;owned\x07\x1b[2J\x1b[H\rzkv: approved\n\x9b31mred)")
    assert out.getvalue() == "zkv: refused (]0;owned[2J[Hzkv: approved31mred)\n"
    out = io.StringIO()
    Console(out).say(CONTROLS)
    assert out.getvalue() == "zkv: \n"


def test_options_defaults_match_the_documented_contract() -> None:
    options = boot_unlock.Options()
    assert (options.prompt, options.tty, options.handover) == (
        "auto",
        "/dev/console",
        "/run/zkv/handover",
    )
