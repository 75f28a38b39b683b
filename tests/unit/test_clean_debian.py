"""The pure parts of tests/vm/clean_debian.py: its cache key, its commands, its tree copy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm import cache, chroot_run, clean_debian


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in clean_debian.DEPS_INPUTS:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clean_debian.REPO / name, repo / name)
    return repo


@pytest.mark.parametrize("name", clean_debian.DEPS_INPUTS)
def test_what_make_deps_reads_is_in_the_key(tmp_path: Path, name: str) -> None:
    repo = _repo(tmp_path)
    before = cache.key_of(clean_debian.inputs(repo))
    assert cache.key_of(clean_debian.inputs(repo)) == before  # stable for the same inputs
    with (repo / name).open("a") as handle:
        handle.write("\n# changed\n")
    assert cache.key_of(clean_debian.inputs(repo)) != before


def test_the_host_trust_anchors_are_in_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path)
    cas = tmp_path / "cas"
    cas.mkdir()
    monkeypatch.setattr(clean_debian, "LOCAL_CAS", cas)
    monkeypatch.setattr(clean_debian, "PIP_CONF", tmp_path / "no-pip.conf")
    without = cache.key_of(clean_debian.inputs(repo))
    (cas / "egress.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    assert cache.key_of(clean_debian.inputs(repo)) != without
    argv = clean_debian.mmdebstrap_argv(tmp_path / "root")
    assert f"--customize-hook=copy-in {cas / 'egress.crt'} {cas}" in argv


def test_the_bootstrap_is_minbase_with_only_what_make_deps_needs() -> None:
    argv = clean_debian.mmdebstrap_argv(Path("/var/tmp/x/root"))
    assert argv[:2] == ["mmdebstrap", "--mode=root"]
    assert "--variant=minbase" in argv
    assert "--include=make,git,python3,ca-certificates" in argv
    assert argv[-5:] == [
        "bookworm",
        "/var/tmp/x/root",
        "deb http://deb.debian.org/debian bookworm main contrib",
        "deb http://deb.debian.org/debian bookworm-updates main contrib",
        "deb http://deb.debian.org/debian-security bookworm-security main contrib",
    ]
    # update-ca-certificates runs after the host's anchors are in place
    hooks = [arg for arg in argv if arg.startswith("--customize-hook=")]
    assert hooks[-1] == '--customize-hook=chroot "$1" update-ca-certificates --fresh'


def test_make_deps_runs_first_in_the_trees_copy() -> None:
    assert clean_debian.commands([]) == [["env", "-C", "/src/zkv", "make", "deps"]]
    assert clean_debian.commands(["unit", "NICE=nice -n 10"]) == [
        ["env", "-C", "/src/zkv", "make", "deps"],
        ["env", "-C", "/src/zkv", "make", "unit", "NICE=nice -n 10"],  # one argument, as given
    ]


def test_the_copy_is_the_tracked_files_as_they_are_now(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "kept.py").write_text("old\n")
    (repo / "gone.py").write_text("x\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "a b.txt").write_text("spaces\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    (repo / "kept.py").write_text("edited\n")  # an uncommitted edit is copied
    (repo / "gone.py").unlink()  # a deleted file is not
    (repo / "untracked.py").write_text("no\n")  # nor an untracked one (a venv, caches)
    assert sorted(clean_debian.tracked_files(repo)) == ["kept.py", "sub/a b.txt"]
    target = tmp_path / "root" / "src" / "zkv"
    target.mkdir(parents=True)
    (target / "stale").write_text("from an earlier run\n")
    clean_debian.copy_tree(repo, target)
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == ["kept.py", "sub/a b.txt"]
    assert (target / "kept.py").read_text() == "edited\n"


def test_only_ci_and_pytest_options_are_passed_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.setenv("ZKV_E2E_CACHE", "/var/tmp/elsewhere")  # a host path: meaningless inside
    assert clean_debian.passed_env() == {}
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-rs")
    assert clean_debian.passed_env() == {"CI": "true", "PYTEST_ADDOPTS": "-rs"}


@pytest.fixture
def as_root() -> None:
    """Mounts and chroot need root: a skip locally, a failure under CI."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("needs root (mount, chroot)")
        pytest.skip("needs root (mount, chroot)")


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def test_a_failed_run_leaves_no_mount_and_no_scratch(tmp_path: Path, as_root: None) -> None:
    """The overlay and the API file systems in it go away when the run fails (root only: mounts)."""
    lower = tmp_path / "entry" / "root"
    for directory in ("proc", "sys", "dev", "run", "usr/sbin", "etc", "tmp"):
        (lower / directory).mkdir(parents=True)
    (lower / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")
    with pytest.raises(RuntimeError, match="a test failed"):
        with clean_debian.overlay(lower) as root:
            with chroot_run.prepared(root):
                assert len(_mounts_below(tmp_path)) >= 5  # overlay, proc, sys, dev, run
                (root / "tmp" / "written").write_text("by the run\n")
                raise RuntimeError("a test failed")
    assert _mounts_below(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # the scratch is gone
    assert sorted(p.name for p in (lower / "tmp").iterdir()) == []  # the cache is untouched
    assert (lower / "etc/resolv.conf").read_text() == "nameserver 192.0.2.1\n"


def test_a_process_left_running_inside_is_ended(tmp_path: Path, as_root: None) -> None:
    """A daemon a failed test never stopped would keep the chroot's files busy: it is ended."""
    lower = tmp_path / "entry" / "root"
    (lower / "usr").mkdir(parents=True)
    for name in ("bin", "lib", "lib64"):  # merged /usr, as Debian 12 has it
        (lower / name).symlink_to(f"usr/{name}")
    with clean_debian.overlay(lower) as root:
        subprocess.run(["mount", "--bind", "-o", "ro", "/usr", str(root / "usr")], check=True)
        sleeper = subprocess.Popen(["chroot", str(root), "sleep", "600"])
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{sleeper.pid}/root") != str(root.resolve()):
            assert time.monotonic() < deadline, "the process never entered the chroot"
            time.sleep(0.05)
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert _mounts_below(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
