"""RecentMessages: what a router announces and serves, bounded in payload."""

from __future__ import annotations

import dataclasses

from trustp2p.identity import Identity
from trustp2p.protocol.gossip import GossipMessage, sign_message
from trustp2p.protocol.gossip.recent import RecentMessages, worth_announcing

IDENTITY = Identity.generate()


def message(seq: int, size: int = 10, topic: str = "chat") -> GossipMessage:
    return sign_message(IDENTITY, topic, seq, 0, {"x": "a" * size})


def test_the_oldest_held_gives_way_past_the_bound() -> None:
    one, two, three = message(1), message(2), message(3)
    recent = RecentMessages(history=3, max_bytes=2 * len(one.data))
    for each in (one, two, three):
        recent.add(each)
    assert [recent.get(m.id) for m in (one, two, three)] == [None, two, three]
    assert recent.size == 2 * len(one.data) and recent.ids("chat") == [two.id, three.id]


def test_adding_again_counts_once() -> None:
    one = message(1)
    recent = RecentMessages(history=2)
    recent.add(one)
    recent.add(one)
    assert recent.size == len(one.data) and recent.ids("chat") == [one.id]


def test_a_window_that_ends_lets_its_messages_go() -> None:
    one, two = message(1), message(2, topic="news")
    recent = RecentMessages(history=2)
    recent.add(one)
    assert recent.roll() == []
    recent.add(two)
    assert recent.ids("chat") == [one.id] and recent.ids("news") == [two.id]
    assert recent.roll() == [one.id]
    assert recent.get(one.id) is None and recent.size == len(two.data)
    assert recent.roll() == [two.id] and recent.size == 0


def test_one_let_go_and_added_again_stays_for_its_new_window() -> None:
    one, two = message(1), message(2)
    recent = RecentMessages(history=2, max_bytes=len(one.data))
    recent.add(one)
    recent.add(two)  # one gives way
    recent.roll()
    recent.add(one)  # again, in the newer window (two gives way)
    assert recent.ids("chat") == [one.id]  # once (found in review: once a window)
    assert recent.roll() == [two.id]  # the first window's end: one stays
    assert recent.get(one.id) is one
    assert recent.roll() == [one.id]


def test_a_message_larger_than_the_bound_is_not_held() -> None:
    small, large = message(1), message(2, size=100)
    recent = RecentMessages(history=2, max_bytes=50)
    recent.add(small)
    recent.add(large)
    assert recent.get(small.id) is small and recent.get(large.id) is None
    # Its id still ends with its window: what the router keeps of it goes then (found
    # in review: it was never dropped).
    assert sorted(recent.roll() + recent.roll()) == sorted([small.id, large.id])


def test_a_caught_up_message_is_worth_announcing_within_seen_ttl_either_way() -> None:
    """Younger than seen_ttl: announced (review36, a healed partition's bridge). Older:
    not (tester32 F2, peers would ask for what their logs hold). Stamped ahead by more
    than seen_ttl: not (review37: a clock far ahead kept its messages fresh for ever)."""
    now = 1_700_000_000.0

    def stamped(offset: float) -> GossipMessage:
        return sign_message(IDENTITY, "t", 1, int((now + offset) * 1000), {})

    assert worth_announcing(stamped(-119), now, 120.0)
    assert not worth_announcing(stamped(-121), now, 120.0)
    assert worth_announcing(stamped(119), now, 120.0)  # a clock a little ahead
    assert not worth_announcing(stamped(86_400), now, 120.0)


def test_a_copy_replaces_the_one_held_in_its_window_only_if_held() -> None:
    one, two = message(1), message(2)
    recent = RecentMessages(history=2)
    recent.add(one)
    recent.roll()
    fewer = dataclasses.replace(one, hops=0)
    recent.add(dataclasses.replace(one, hops=5))  # (adding again changes nothing)
    assert recent.get(one.id) is one
    recent.replace(fewer)
    recent.replace(two)  # not held: not added
    assert recent.get(one.id) is fewer and recent.get(two.id) is None
    assert recent.size == len(one.data) and recent.roll() == [one.id]


def test_wide_characters_count_as_they_weigh() -> None:
    """attacker37 N3: the recent cache's bound counted characters."""
    wide = sign_message(IDENTITY, "chat", 1, 0, {"x": "\U0001f600" * 10})
    recent = RecentMessages(history=2)
    recent.add(wide)
    assert recent.size == 4 * len(wide.data)
    recent.roll()
    recent.roll()
    assert recent.size == 0
