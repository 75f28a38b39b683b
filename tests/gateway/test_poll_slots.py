"""The long-poll caps of gateway/polls.py: per request id, per source (IPv6 by /64), in all."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from gateway.errors import ApiError
from gateway.polls import PollSlots, source_of


def test_source_is_the_address_or_its_ipv6_64() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2::7") == source_of("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"


@pytest.mark.parametrize(
    ("slots", "ids", "ips"),
    [
        (PollSlots(2, 10, 10), ["a", "a"], ["192.0.2.1", "192.0.2.2"]),
        (PollSlots(10, 2, 10), ["a", "b"], ["2001:db8::1", "2001:db8::2"]),
        (PollSlots(10, 10, 2), ["a", "b"], ["192.0.2.1", "192.0.2.2"]),
    ],
)
def test_the_limit_refuses_the_next_and_frees_on_exit(
    slots: PollSlots, ids: list[str], ips: list[str]
) -> None:
    with ExitStack() as held:
        for request_id, ip in zip(ids, ips, strict=True):
            held.enter_context(slots.taken(request_id, ip))
        with pytest.raises(ApiError) as refused, slots.taken(ids[-1], ips[-1]):
            pass
        assert refused.value.code == "rate_limited"
    with slots.taken(ids[-1], ips[-1]):  # all released
        pass
