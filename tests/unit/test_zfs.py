"""zkv.zfs against the recording fake: keys only on stdin, typed errors, timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fakezfs import BINARY, FakeZfs
from zkv import errors
from zkv.zfs import Zfs, _translate

RAW, HEX, PASS = bytes(range(32)), b"0f" * 32, b"a passphrase"
DATASETS: dict[str, dict[str, Any]] = {
    "tank/raw": {"keyformat": "raw", "key": RAW},
    "tank/hex": {"keyformat": "hex", "key": HEX},
    "tank/pass": {"keyformat": "passphrase", "key": PASS},
    "tank/pass/child": {"encryptionroot": "tank/pass"},
    "tank/loaded": {"keyformat": "raw", "key": RAW, "keystatus": "available"},
    "tank/plain": {"encryptionroot": "-"},
}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeZfs:
    made = FakeZfs.create(tmp_path, DATASETS)
    monkeypatch.setenv("ZKV_FAKE_ZFS_STATE", str(tmp_path))
    return made


def zfs(timeout: float = 30.0) -> Zfs:
    return Zfs(binary=str(BINARY), timeout=timeout)


def key_calls(fake: FakeZfs) -> list[tuple[list[str], bytes]]:
    return [(argv, data) for argv, data in fake.calls() if argv[0] in ("load-key", "change-key")]


@pytest.mark.parametrize(
    ("dataset", "key", "stdin"),
    [("tank/raw", RAW, RAW), ("tank/hex", HEX, HEX + b"\n"), ("tank/pass", PASS, PASS + b"\n")],
    ids=["raw", "hex", "passphrase"],
)
def test_load_key_on_stdin_never_in_argv(
    fake: FakeZfs, dataset: str, key: bytes, stdin: bytes
) -> None:
    zfs().load_key(dataset, key)
    assert key_calls(fake) == [(["load-key", "-L", "prompt", dataset], stdin)]
    assert fake.keystatus(dataset) == "available"
    for argv, _ in fake.calls():
        assert not any(key in a.encode("utf-8", "surrogateescape") for a in argv)
        assert RAW.hex() not in " ".join(argv)


def test_raw_key_has_no_newline(fake: FakeZfs) -> None:
    zfs().load_key("tank/raw", RAW, verify_only=True)
    ((_, data),) = key_calls(fake)
    assert data == RAW and len(data) == 32


def test_verify_with_n_loads_nothing_and_works_while_loaded(fake: FakeZfs) -> None:
    zfs().load_key("tank/pass", PASS, verify_only=True)
    zfs().load_key("tank/loaded", RAW, verify_only=True)
    assert [argv for argv, _ in key_calls(fake)] == [
        ["load-key", "-L", "prompt", "-n", "tank/pass"],
        ["load-key", "-L", "prompt", "-n", "tank/loaded"],
    ]
    assert fake.keystatus("tank/pass") == "unavailable"
    with pytest.raises(errors.ZfsKeyRejected):
        zfs().load_key("tank/loaded", bytes(32), verify_only=True)


def test_wrong_key(fake: FakeZfs) -> None:
    with pytest.raises(errors.ZfsKeyRejected) as info:
        zfs().load_key("tank/pass", b"not the passphrase")
    assert info.value.exit_code == 21 and "not the passphrase" not in info.value.message
    assert fake.keystatus("tank/pass") == "unavailable"


def test_already_loaded_is_checked_before_sending_the_key(fake: FakeZfs) -> None:
    with pytest.raises(errors.ZfsKeyAlreadyLoaded):
        zfs().load_key("tank/loaded", RAW)
    assert key_calls(fake) == []


def test_no_such_dataset(fake: FakeZfs) -> None:
    with pytest.raises(errors.ZfsDatasetNotFound):
        zfs().load_key("tank/nope", RAW)


@pytest.mark.parametrize(
    ("dataset", "root"), [("tank/pass/child", "tank/pass"), ("tank/plain", "not encrypted")]
)
def test_not_an_encryption_root(fake: FakeZfs, dataset: str, root: str) -> None:
    with pytest.raises(errors.ZfsNotEncryptionRoot, match=root):
        zfs().load_key(dataset, PASS)
    assert key_calls(fake) == []


def test_timeout(fake: FakeZfs) -> None:
    fake.set(delay=3)
    with pytest.raises(errors.ZfsError, match="did not finish"):
        zfs(timeout=0.5).load_key("tank/raw", RAW)


def test_missing_or_unusable_binary(tmp_path: Path) -> None:
    with pytest.raises(errors.ZfsUnavailable):
        Zfs(binary=str(tmp_path / "nope")).key_info("tank")
    (tmp_path / "zfs").write_text("#!/bin/sh\n")
    with pytest.raises(errors.ZfsUnavailable):
        Zfs(binary=str(tmp_path / "zfs")).key_info("tank")


def test_binary_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZKV_ZFS", "/opt/zfs/bin/zfs")
    assert Zfs().binary == "/opt/zfs/bin/zfs"


def test_change_key_sends_new_key_on_stdin(fake: FakeZfs) -> None:
    new = bytes(range(50, 82))
    zfs().change_key("tank/loaded", new, "raw")
    assert key_calls(fake) == [
        (["change-key", "-o", "keyformat=raw", "-o", "keylocation=prompt", "tank/loaded"], new)
    ]
    assert fake.key("tank/loaded") == new


def test_queries(fake: FakeZfs) -> None:
    info = zfs().key_info("tank/plain")
    assert (info.encryption_root, info.keystatus) == (None, "none")
    assert zfs().require_encryption_root("tank/hex").keyformat == "hex"
    assert dict(zfs().encryption_roots()) == {
        "tank/hex": "unavailable",
        "tank/loaded": "available",
        "tank/pass": "unavailable",
        "tank/raw": "unavailable",
    }


def test_key_infos_is_one_listing_of_every_dataset(fake: FakeZfs) -> None:
    infos = zfs().key_infos()
    assert [argv[0] for argv, _ in fake.calls()] == ["list"]
    assert infos["tank/pass/child"].encryption_root == "tank/pass"
    assert infos["tank/plain"][1:] == (None, "none", "none")
    assert infos["tank/loaded"][1:] == ("tank/loaded", "available", "raw")


def test_load_without_confirm_trusts_the_exit_status(fake: FakeZfs) -> None:
    info = zfs().key_infos()["tank/hex"]
    zfs().load_key("tank/hex", HEX, info=info, confirm=False)
    assert [argv[0] for argv, _ in fake.calls()] == ["list", "load-key"]
    assert fake.keystatus("tank/hex") == "available"


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("Key load error: Incorrect key provided for 'a/b'.", errors.ZfsKeyRejected),
        ("Key load error: Key already loaded for 'a/b'.", errors.ZfsKeyAlreadyLoaded),
        ("cannot open 'a/b': dataset does not exist", errors.ZfsDatasetNotFound),
        ("Key load error: 'a/b' is not encrypted.", errors.ZfsNotEncryptionRoot),
        (
            "Key load error: Keys must be loaded for encryption root of 'a/b' (a).",
            errors.ZfsNotEncryptionRoot,
        ),
        ("Key load error: Permission denied.", errors.ZfsError),
        ("", errors.ZfsError),
    ],
)
def test_messages_become_typed_errors(stderr: str, error: type[errors.ZfsError]) -> None:
    assert type(_translate(stderr, "a/b")) is error


def test_zfs_error_codes_are_distinct() -> None:
    classes = [
        errors.ZfsError,
        errors.ZfsKeyRejected,
        errors.ZfsKeyAlreadyLoaded,
        errors.ZfsDatasetNotFound,
        errors.ZfsNotEncryptionRoot,
        errors.ZfsUnavailable,
    ]
    assert len({c.exit_code for c in classes}) == len(classes)


def test_user_properties_local_only_set_together_and_cleared(fake: FakeZfs) -> None:
    state = fake.state()
    state["datasets"]["tank/raw"]["props"] = {"zkv:epoch": "3"}
    fake.write(state)
    z = zfs()
    assert z.local_properties("tank/raw", ["zkv:epoch", "zkv:epoch:pending"]) == {"zkv:epoch": "3"}
    assert z.local_properties("tank/hex", ["zkv:epoch"]) == {}
    z.set_properties("tank/raw", {"zkv:epoch": "4", "zkv:epoch:time": "2026-12-01T14:00:00Z"})
    sets = [argv for argv, _ in fake.calls() if argv[0] == "set"]
    assert sets == [["set", "zkv:epoch=4", "zkv:epoch:time=2026-12-01T14:00:00Z", "tank/raw"]]
    z.clear_property("tank/raw", "zkv:epoch:time")
    assert fake.state()["datasets"]["tank/raw"]["props"] == {"zkv:epoch": "4"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("-o", "1"), ("Zkv:epoch", "1"), ("epoch", "1"), ("zkv:a=b", "1"), ("zkv:" + "e" * 253, "1"),
     ("zkv:epoch", ""), ("zkv:epoch", "1\n2"), ("zkv:epoch", "a\tb"), ("zkv:epoch", " 1"),
     ("zkv:epoch", "x" * 1025), ("zkv:epoch", "é")],
)  # fmt: skip
def test_property_names_and_values_are_checked_before_zfs_runs(
    fake: FakeZfs, name: str, value: str
) -> None:
    with pytest.raises(errors.InputError):
        zfs().set_properties("tank/raw", {name: value})
    assert fake.calls() == []
