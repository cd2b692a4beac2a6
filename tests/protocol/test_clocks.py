"""Our wall clock against our peers' (``trustp2p.protocol.clocks``): the median of one
offset per network, said once when it goes past the bound and once when it comes back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from trustp2p.protocol.clocks import (
    CLOCK_OFF,
    LEAST_CLOCKS,
    MAX_TIME,
    MOST_CLOCKS,
    TIME_KEY,
    ClockVerdict,
    PeerClocks,
    peer_time,
    with_time,
)

DAY = 86_400.0


def test_the_version_body_carries_our_wall_clock_in_milliseconds() -> None:
    body = with_time({"alt": "1"}, 1_700_000_000.25)
    assert body == {"alt": "1", TIME_KEY: 1_700_000_000_250}
    assert peer_time(body) == 1_700_000_000.25


@pytest.mark.parametrize(
    "value",
    [None, "1700000000000", True, math.nan, math.inf, [1], {}, 10**400, -(10**400), 2**53 + 1],
)
def test_a_time_that_is_not_a_finite_number_is_no_time(value: object) -> None:
    body = {} if value is None else {TIME_KEY: value}
    assert peer_time(body) is None


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_no_json_value_makes_peer_time_raise(value: object) -> None:
    theirs = peer_time({TIME_KEY: value})
    assert theirs is None or (math.isfinite(theirs) and abs(theirs) <= MAX_TIME / 1000)


def test_no_verdict_before_enough_networks_said_their_clock() -> None:
    clocks = PeerClocks()
    for n in range(LEAST_CLOCKS - 1):
        assert clocks.add(f"net{n}", 2 * DAY) is None
    assert clocks.offset is None
    verdict = clocks.add("last", 2 * DAY)
    assert verdict == ClockVerdict(2 * DAY, LEAST_CLOCKS, off=True)
    assert clocks.offset == 2 * DAY


def test_an_offset_past_the_bound_is_said_once_and_its_end_once() -> None:
    clocks = PeerClocks()
    said = [clocks.add(f"net{n}", -2 * DAY) for n in range(LEAST_CLOCKS + 3)]
    assert [v for v in said if v is not None] == [ClockVerdict(-2 * DAY, LEAST_CLOCKS, True)]
    # The same networks reconnect with their clocks right: back in line at the median.
    back = [clocks.add(f"net{n}", 0.5) for n in range(LEAST_CLOCKS + 3)]
    verdicts = [v for v in back if v is not None]
    assert len(verdicts) == 1 and not verdicts[0].off
    assert clocks.offset == 0.5


def test_offsets_within_the_bound_say_nothing() -> None:
    clocks = PeerClocks()
    offsets = [CLOCK_OFF - 1, -(CLOCK_OFF - 1), 3.0, -0.2, 10.0, 1.0]
    assert all(clocks.add(f"net{n}", o) is None for n, o in enumerate(offsets))
    assert clocks.offset is not None and abs(clocks.offset) < CLOCK_OFF


def test_one_network_counts_once_however_many_of_its_peers_say_their_clock() -> None:
    clocks = PeerClocks()
    for n in range(LEAST_CLOCKS):
        clocks.add(f"honest{n}", 0.1)
    # An attacker's many connections from one network: one offset, its latest.
    assert all(clocks.add("attacker", 2 * DAY) is None for _ in range(100))
    assert clocks.peers == LEAST_CLOCKS + 1
    assert clocks.offset == 0.1


def test_the_oldest_network_is_forgotten_past_the_most_kept() -> None:
    clocks = PeerClocks()
    for n in range(MOST_CLOCKS):
        clocks.add(f"old{n}", 2 * DAY)
    for n in range(MOST_CLOCKS // 2 + 1):
        clocks.add(f"new{n}", 0.0)
    assert clocks.peers == MOST_CLOCKS
    assert clocks.offset == 0.0  # the new ones are most of what is kept


@given(st.lists(st.tuples(st.integers(0, 9), st.floats(-3 * DAY, 3 * DAY)), max_size=60))
def test_verdicts_alternate_and_match_the_median(adds: list[tuple[int, float]]) -> None:
    clocks = PeerClocks()
    off = False
    for key, offset in adds:
        verdict = clocks.add(str(key), offset)
        median = clocks.offset
        if verdict is not None:
            assert verdict.off is not off and verdict.offset == median
            off = verdict.off
        assert off == (median is not None and abs(median) > CLOCK_OFF)
