"""`make deb`'s two packages pass lintian without errors (warnings are printed, not failed)."""

from __future__ import annotations

import subprocess

import pytest

from tests.vm.packages import Debs

pytestmark = pytest.mark.e2e


def test_lintian_finds_no_errors(debs: Debs) -> None:
    done = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(debs.zkv), str(debs.gateway)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = [line for line in done.stdout.splitlines() if line[:3] in ("E: ", "W: ")]
    print("\n".join(tags))
    errors = [line for line in tags if line.startswith("E: ")]
    assert not errors, "\n".join(errors)
    assert done.returncode == 0, done.stdout + done.stderr
