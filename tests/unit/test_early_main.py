"""The boot client's one top-level handler: messages and exit codes, never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from zkv_early import boot, early
from zkv_early.console import Console

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, cmdline: str, conf: str | None, *args: str) -> int:
    (tmp_path / "cmdline").write_text(cmdline)
    config = tmp_path / "early.conf"
    if conf is not None:
        config.write_text(conf)
    argv = ["--config", str(config), "--cmdline", str(tmp_path / "cmdline"), *args]
    return early.main(argv)


def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "quiet", None, "unlock", "--prompt", "none") == 3
    assert "early.conf is missing" in capsys.readouterr().err


def test_disabled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "zkv=off", None, "unlock", "--prompt", "none") == 42
    assert "zkv=off" in capsys.readouterr().err


def test_missing_keystore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = f"[gateway]\nurl = https://gw\n[host]\nkeystore = {tmp_path / 'none'}\n"
    assert run(tmp_path, "", conf, "unlock", "--prompt", "none") == 11


def test_a_bug_is_exit_1_without_traceback_unless_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("zkv_early.boot.unlock", broken)  # imported by main() when needed
    conf = "[gateway]\nurl = https://gw\n"
    assert run(tmp_path, "", conf, "unlock", "--prompt", "none") == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err
    assert run(tmp_path, "zkv.debug", conf, "unlock", "--prompt", "none") == 1
    assert "Traceback" in capsys.readouterr().err


def test_handover_load_with_nothing_handed_over(tmp_path: Path) -> None:
    assert early.main(["handover-load", "--handover", str(tmp_path / "none")]) == 0


def test_handover_load_does_not_import_the_gateway_client(tmp_path: Path) -> None:
    # zkv-load-keys.service: every import costs seconds of CPU in a TCG guest.
    code = (
        "import sys; from zkv_early.early import main; "
        f"rc = main(['handover-load', '--handover', {str(tmp_path / 'none')!r}]); "
        "print(rc, sorted(m for m in ('zkv_early.boot', 'http.client', 'ssl') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.split() == ["0", "[]"]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        early.main(["unlock", "--prompt", "sometimes"])
    assert exc.value.code == 2


def test_status_lines_do_not_swallow_a_pending_prompt() -> None:
    out = io.StringIO()
    console = Console(out)
    console.show_prompt("Recovery passphrase: ")
    console.say("waiting for approval of PIN 123456 (4:35 left)")
    assert out.getvalue() == (
        "Recovery passphrase: \nzkv: waiting for approval of PIN 123456 (4:35 left)\n"
        "Recovery passphrase: "
    )


def test_options_defaults_match_the_documented_contract() -> None:
    options = boot.Options()
    assert (options.prompt, options.tty, options.handover) == (
        "auto",
        "/dev/console",
        "/run/zkv/handover",
    )
