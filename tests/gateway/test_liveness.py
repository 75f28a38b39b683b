"""The dead-man switch's state machine (gateway/liveness.py): pure, on explicit times."""

from __future__ import annotations

import pytest

from gateway import liveness
from gateway.approvals import NotAllowed
from gateway.liveness import ACTIVE, SUSPENDED, WIPED

HOUR = 3600.0
T0 = 1_800_000_000.0


def test_silent_past_the_window_is_suspended_once() -> None:
    x = liveness.set_window(liveness.start("h", T0), HOUR, T0)
    assert liveness.observe(x, T0 + HOUR, 0) == x  # at the edge: still inside
    late = liveness.observe(x, T0 + HOUR + 1, 0)
    assert (late.state, late.changed_at, late.notice_due) == (SUSPENDED, T0 + HOUR + 1, True)
    assert late.refuses_unlock and not x.refuses_unlock
    assert liveness.observe(late, T0 + 10 * HOUR, 0) == late  # suspended stays as it was


def test_heartbeats_keep_a_host_alive() -> None:
    x = liveness.set_window(liveness.start("h", T0), HOUR, T0)
    for step in range(1, 25):
        x = liveness.beat(x, T0 + step * 0.5 * HOUR, 0)
    assert x.state == ACTIVE and x.since == T0 + 12 * HOUR
    assert liveness.observe(x, T0 + 13 * HOUR, 0).state == ACTIVE


def test_a_late_heartbeat_does_not_undo_the_suspension() -> None:
    x = liveness.set_window(liveness.start("h", T0), HOUR, T0)
    late = liveness.beat(x, T0 + 2 * HOUR, 0)
    assert late.state == SUSPENDED and late.notice_due


def test_the_gateway_default_applies_unless_the_host_has_its_own() -> None:
    x = liveness.start("h", T0)
    assert liveness.observe(x, T0 + 100 * HOUR, 0).state == ACTIVE  # default 0: no switch
    assert liveness.observe(x, T0 + HOUR + 1, HOUR).state == SUSPENDED
    off = liveness.set_window(x, 0, T0)
    assert liveness.observe(off, T0 + 100 * HOUR, HOUR).state == ACTIVE
    back = liveness.set_window(off, None, T0 + 5 * HOUR)  # "default", counting from now
    assert liveness.observe(back, T0 + 6 * HOUR, HOUR).state == ACTIVE
    assert liveness.observe(back, T0 + 6 * HOUR + 1, HOUR).state == SUSPENDED


def test_resume_starts_a_new_window() -> None:
    x = liveness.set_window(liveness.start("h", T0), HOUR, T0)
    suspended = liveness.observe(x, T0 + 2 * HOUR, 0)
    resumed = liveness.resume(suspended, T0 + 3 * HOUR)
    assert (resumed.state, resumed.since, resumed.notice_due) == (ACTIVE, T0 + 3 * HOUR, False)
    assert liveness.observe(resumed, T0 + 4 * HOUR, 0).state == ACTIVE
    assert liveness.observe(resumed, T0 + 4 * HOUR + 1, 0).state == SUSPENDED


def test_a_failed_notice_is_due_again_only_while_suspended() -> None:
    x = liveness.set_window(liveness.start("h", T0), HOUR, T0)
    told = liveness.told(liveness.observe(x, T0 + 2 * HOUR, 0))
    assert not told.notice_due and liveness.tell_again(told).notice_due
    resumed = liveness.resume(told, T0 + 3 * HOUR)
    assert liveness.tell_again(resumed) == resumed


def test_wipe_is_final() -> None:
    wiped = liveness.wipe(liveness.start("h", T0), T0 + 1)
    assert wiped.state == WIPED and wiped.refuses_unlock
    assert liveness.beat(wiped, T0 + 2, HOUR) == wiped
    assert liveness.wipe(wiped, T0 + 3) == wiped
    with pytest.raises(NotAllowed):
        liveness.resume(wiped, T0 + 4)
    with pytest.raises(NotAllowed):
        liveness.set_window(wiped, HOUR, T0 + 4)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86400.0),
        ("12h", 12 * HOUR),
        ("30m", 1800.0),
        ("90s", 90.0),
        ("2w", 14 * 86400.0),
        ("45", 45.0),
        ("0", 0.0),
        ("default", None),
        (" 7D ", 7 * 86400.0),
    ],
)
def test_window_spellings(text: str, seconds: float | None) -> None:
    assert liveness.parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "1.5h", "7 d", "٣d", "1y", "367d", "1e3"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        liveness.parse_window(text)


def test_describe() -> None:
    assert [liveness.describe(s) for s in (0, 90, 1800, 7200, 86400 * 3, 86400 * 14)] == [
        "off",
        "90s",
        "30m",
        "2h",
        "3d",
        "2w",
    ]
