"""Our wall clock against our peers' (``trustp2p.protocol.clocks``): one offset per
network, kept while a connection of it is open, against our monotonic clock; their
median said once when it goes past the bound and once when it is back within half."""

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
    clock_key,
    peer_time,
    with_time,
)

DAY = 86_400.0
WALL = 1_800_000_000.0  # our wall clock at monotonic 0 in these tests


def add(clocks: PeerClocks, conn: int, key: str, offset: float, at: float = 0.0) -> None:
    """Connection ``conn`` of ``key`` says a clock ``offset`` s from ours at monotonic
    ``at`` (our wall clock reading WALL + at)."""
    clocks.add(conn, key, WALL + at + offset, at)


def check(clocks: PeerClocks, at: float = 0.0, step: float = 0.0) -> ClockVerdict | None:
    """Check at monotonic ``at``, our wall clock stepped by ``step`` since WALL."""
    return clocks.check(WALL + at + step, at)


def test_the_version_body_carries_our_wall_clock_in_seconds() -> None:
    # To the millisecond: whole seconds read 0-1 s low (a tester saw every node of one
    # host 1.0 s ahead of its peers); whole seconds are still read (session 22's nodes).
    body = with_time({"alt": "1"}, 1_700_000_000.7506)
    assert body == {"alt": "1", TIME_KEY: 1_700_000_000.751}
    assert peer_time(body) == 1_700_000_000.751
    assert peer_time({TIME_KEY: 1_700_000_000}) == 1_700_000_000.0


@pytest.mark.parametrize(
    "value",
    [None, "1700000000", True, math.nan, math.inf, [1], {}, 10**400, -(10**400), 2**53 + 1],
)
def test_a_time_that_is_not_a_number_within_bounds_is_no_time(value: object) -> None:
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
    assert theirs is None or (math.isfinite(theirs) and abs(theirs) <= MAX_TIME)


def test_the_median_decides_once_enough_networks_said_their_clock() -> None:
    clocks = PeerClocks()
    for n in range(LEAST_CLOCKS - 1):
        add(clocks, n, f"net{n}", 2 * DAY)
        assert check(clocks) is None  # fewer, and no `alone`: they never decide
    add(clocks, 99, "last", 2 * DAY)
    assert check(clocks) == ClockVerdict(2 * DAY, LEAST_CLOCKS, off=True)
    assert check(clocks) is None  # said once


def test_fewer_networks_decide_only_if_all_put_us_past_alone_the_same_way() -> None:
    clocks = PeerClocks(alone=DAY)
    add(clocks, 1, "server", -2 * DAY)  # a client of one server, two days ahead of it
    verdict = check(clocks)
    assert verdict is not None and verdict.off and verdict.offset == -2 * DAY
    split = PeerClocks(alone=DAY)
    add(split, 1, "a", -2 * DAY)
    add(split, 2, "b", 2 * DAY)
    assert check(split) is None
    near = PeerClocks(alone=DAY)
    add(near, 1, "a", 2 * CLOCK_OFF)  # off, but less than `alone`: one peer's word
    assert check(near) is None


def test_fewer_networks_say_our_clock_is_ahead_once_all_put_it_past_ahead() -> None:
    """tester49 F1: a client of four servers, ten minutes ahead, had all its gossip
    dropped by them as from the future, and said nothing (``alone`` is a day)."""
    clocks = PeerClocks(alone=DAY, ahead=CLOCK_OFF)
    add(clocks, 1, "a", -2 * CLOCK_OFF)
    add(clocks, 2, "b", -3 * CLOCK_OFF)
    assert check(clocks) == ClockVerdict(-2.5 * CLOCK_OFF, 2, off=True)
    add(clocks, 2, "b", -0.4 * CLOCK_OFF)
    assert check(clocks) is None  # the median still past half the bound
    add(clocks, 1, "a", -0.2 * CLOCK_OFF)
    assert check(clocks) == ClockVerdict(-0.3 * CLOCK_OFF, 2, off=False)
    behind = PeerClocks(alone=DAY, ahead=CLOCK_OFF)
    add(behind, 1, "a", 2 * CLOCK_OFF)  # behind: its peers take what it publishes
    assert check(behind) is None
    split = PeerClocks(alone=DAY, ahead=CLOCK_OFF)
    add(split, 1, "a", -2 * CLOCK_OFF)
    add(split, 2, "b", -0.5 * CLOCK_OFF)  # one network finds it within the skew
    assert check(split) is None
    near = PeerClocks(alone=DAY, ahead=CLOCK_OFF)
    add(near, 1, "a", -0.9 * CLOCK_OFF)
    assert check(near) is None


def test_a_step_of_our_wall_clock_shows_at_the_next_check() -> None:
    clocks = PeerClocks()
    for n in range(LEAST_CLOCKS):
        add(clocks, n, f"net{n}", 0.2)
    assert check(clocks, at=10) is None
    verdict = check(clocks, at=20, step=2 * DAY)  # NTP, a restored snapshot
    assert verdict is not None and verdict.off and verdict.offset == pytest.approx(0.2 - 2 * DAY)
    assert clocks.offset(WALL + 20 + 2 * DAY, 20) == pytest.approx(0.2 - 2 * DAY)
    back = check(clocks, at=30)  # put right
    assert back is not None and not back.off and back.offset == pytest.approx(0.2)


def test_back_in_line_only_within_half_the_bound() -> None:
    clocks = PeerClocks()
    for n in range(LEAST_CLOCKS):
        add(clocks, n, f"net{n}", 0.0)
    assert check(clocks, step=CLOCK_OFF + 1) is not None
    assert check(clocks, step=CLOCK_OFF - 1) is None  # around the bound: still off
    assert check(clocks, step=CLOCK_OFF / 2 + 1) is None
    verdict = check(clocks, step=CLOCK_OFF / 2 - 1)
    assert verdict is not None and not verdict.off


def test_an_offset_goes_with_its_networks_last_connection() -> None:
    clocks = PeerClocks()
    add(clocks, 1, "net", 2 * DAY)
    add(clocks, 2, "net", 2 * DAY)
    clocks.remove(1)
    assert clocks.peers == 1
    clocks.remove(2)
    assert clocks.peers == 0 and clocks.offset(WALL, 0) is None
    clocks.remove(3)  # never added: nothing


def test_one_network_counts_once_however_many_of_its_peers_say_their_clock() -> None:
    clocks = PeerClocks()
    for n in range(LEAST_CLOCKS):
        add(clocks, n, f"honest{n}", 0.1)
    for conn in range(100, 200):  # an attacker's many connections from one network
        add(clocks, conn, "attacker", 2 * DAY)
    assert clocks.peers == LEAST_CLOCKS + 1
    assert clocks.offset(WALL, 0) == pytest.approx(0.1)
    assert check(clocks) is None


def test_the_oldest_network_is_forgotten_past_the_most_kept() -> None:
    clocks = PeerClocks()
    for n in range(MOST_CLOCKS):
        add(clocks, n, f"old{n}", 2 * DAY)
    for n in range(MOST_CLOCKS // 2 + 1):
        add(clocks, 1000 + n, f"new{n}", 0.0)
    assert clocks.peers == MOST_CLOCKS
    assert clocks.offset(WALL, 0) == 0.0  # the new ones are most of what is kept
    clocks.remove(0)  # a forgotten network's connection closes: nothing else goes
    assert clocks.peers == MOST_CLOCKS


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("8.8.4.4", "8.8.0.0/16"),
        ("8.8.8.8", "8.8.0.0/16"),
        ("10.0.0.5", "10.0.0.5"),  # a LAN's peers apart
        ("10.0.0.6", "10.0.0.6"),
        ("fd00::1", "fd00::/64"),
    ],
)
def test_a_peer_counts_by_its_network_on_the_internet_by_its_address_elsewhere(
    host: str, key: str
) -> None:
    assert clock_key(host) == key


@given(
    st.lists(st.tuples(st.integers(0, 9), st.floats(-3 * DAY, 3 * DAY), st.booleans()), max_size=60)
)
def test_verdicts_alternate(steps: list[tuple[int, float, bool]]) -> None:
    clocks = PeerClocks(alone=DAY)
    off = False
    for conn, offset, close in steps:
        if close:
            clocks.remove(conn)
        else:
            add(clocks, conn, f"net{conn % 7}", offset)
        verdict = check(clocks)
        if verdict is not None:
            assert verdict.off is not off
            assert verdict.offset == clocks.offset(WALL, 0)
            off = verdict.off
