"""Every kind of bad input: one line ``zkv: error: ...``, the documented exit code, no traceback."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cli.conftest import RAW_A, Zkv
from zkv_admin import cli

Setup = Callable[[Zkv], None]


def nothing(zkv: Zkv) -> None:
    pass


def initialised(zkv: Zkv) -> None:
    zkv.make_store()


def with_entry(zkv: Zkv) -> None:
    zkv.make_store(("tank/a", "raw", RAW_A))


def garbage(zkv: Zkv) -> None:
    zkv.keystore.parent.mkdir(parents=True)
    zkv.keystore.write_bytes(b"\x00not a keystore\xff")


def truncated(zkv: Zkv) -> None:
    zkv.make_store()
    zkv.keystore.write_bytes(zkv.keystore.read_bytes()[:-40])


def future_version(zkv: Zkv) -> None:
    zkv.make_store()
    zkv.keystore.write_bytes(zkv.keystore.read_bytes().replace(b'"version":1', b'"version":3'))


def directory(zkv: Zkv) -> None:
    zkv.keystore.mkdir(parents=True)


def no_zfs(zkv: Zkv) -> None:
    zkv.make_store()
    zkv.extra_env["ZKV_ZFS"] = str(zkv.tmp / "no-such-zfs")


P = "--recovery-passphrase-file"
CASES: list[tuple[str, Setup, list[str], bytes, int, str]] = [
    ("missing keystore", nothing, ["list"], b"", 11, "no keystore at"),
    ("missing keystore add", nothing, ["add", "tank/a"], RAW_A, 11, "zkv init"),
    ("garbage keystore", garbage, ["list"], b"", 13, "damaged"),
    ("truncated keystore", truncated, ["list"], b"", 13, "damaged"),
    ("future version", future_version, ["list"], b"", 14, "version 3"),
    ("keystore is a directory", directory, ["list"], b"", 13, "damaged"),
    ("remove -f needs no key", initialised, ["remove", "-f", "x", P, "-"], b"", 0, ""),
    ("wrong passphrase", with_entry, ["remove", "tank/a", P, "-"], b"wrong pass\n", 15, "wrong"),
    (
        "wrong repository key",
        with_entry,
        ["verify", "--repository-key-file", "-"],
        b"00" * 32,
        15,
        "could not be opened",
    ),
    (
        "malformed repository key",
        with_entry,
        ["verify", "--repository-key-file", "-"],
        b"xyz",
        4,
        "64 hexadecimal",
    ),
    ("empty passphrase file", with_entry, ["verify", P, "-"], b"", 4, "empty"),
    ("missing passphrase file", with_entry, ["verify", P, "/nonexistent"], b"", 4, "cannot read"),
    ("no terminal for passphrase", with_entry, ["verify"], b"", 2, "no terminal"),
    ("no terminal at init", nothing, ["init"], b"", 2, "no terminal"),
    ("short passphrase at init", nothing, ["init", P, "-"], b"short\n", 4, "at least 8"),
    ("bad dataset name", initialised, ["add", "tank//x", P, "/dev/null"], RAW_A, 4, "dataset"),
    ("no such dataset", initialised, ["add", "tank/zz"], RAW_A, 23, "no such ZFS dataset"),
    ("not encrypted", initialised, ["add", "tank/plain"], RAW_A, 24, "not an encryption root"),
    ("child dataset", initialised, ["add", "tank/a/child"], RAW_A, 24, "(its encryption root"),
    ("empty stdin key", initialised, ["add", "tank/a"], b"", 4, "is empty"),
    ("short raw key", initialised, ["add", "tank/a"], b"short", 17, "exactly 32 bytes"),
    ("bad hex key", initialised, ["add", "tank/c"], b"zz" * 32, 17, "64 hexadecimal"),
    (
        "keyformat mismatch",
        initialised,
        ["add", "--keyformat", "hex", "tank/a"],
        RAW_A,
        2,
        "has keyformat raw",
    ),
    (
        "bad keyformat",
        initialised,
        ["add", "--keyformat", "rot13", "tank/a"],
        RAW_A,
        2,
        "invalid choice",
    ),
    ("two secrets on stdin", initialised, ["add", "tank/a", P, "-"], RAW_A, 2, "only one"),
    ("zfs missing", no_zfs, ["add", "tank/a"], RAW_A, 25, "cannot run zfs"),
    ("entry missing", initialised, ["remove", "tank/a"], b"", 16, "no entry for tank/a"),
    (
        "unlock absent",
        with_entry,
        ["unlock", "tank/b", P, "-"],
        b"correct horse battery\n",
        54,
        "could not be loaded",
    ),
    ("unknown command", nothing, ["frobnicate"], b"", 2, "invalid choice"),
    ("no command", nothing, [], b"", 2, "required"),
    ("-k key", initialised, ["fs", "add", "-k", "SECRETKEY", "tank/a", "FSKEY"], b"", 2, "pipe"),
    ("--repository-key", initialised, ["list", "--repository-key", "SECRETKEY"], b"", 2, "pipe"),
    (
        "--repository_key",
        initialised,
        ["fs", "remove", "--repository_key=SECRETKEY", "tank/a"],
        b"",
        2,
        "never accepted",
    ),
    ("init -k", nothing, ["fs", "init", "-k", "SECRETKEY"], b"", 2, "never accepted"),
    ("key as argument", initialised, ["add", "tank/a", "SECRETKEY"], b"", 2, "as an argument"),
    ("extra arguments", initialised, ["list", "SECRETKEY"], b"", 2, "extra arguments"),
    ("list --plaintext", initialised, ["fs", "list", "-p"], b"", 2, "never prints keys"),
]


@pytest.mark.parametrize(
    ("setup", "args", "stdin", "code", "text"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_gives_one_line(
    zkv: Zkv, setup: Setup, args: list[str], stdin: bytes, code: int, text: str
) -> None:
    setup(zkv)
    result = zkv(*args, stdin=stdin)
    assert result.code == code, result.stderr
    assert "Traceback" not in result.stderr
    if code:
        assert text in result.error_line
        assert "SECRETKEY" not in result.stderr  # a key given in argv is never echoed


# --- the top-level handler, in process -----------------------------------------------------


def test_internal_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(argv: object) -> int:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(cli, "run", boom)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err == "zkv: error: internal error (run again with --debug for details)\n"
    assert cli.main(["--debug", "list"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt_is_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(argv: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert cli.main(["list"]) == 130
    assert capsys.readouterr().err == "zkv: error: interrupted\n"
