"""The delivery backlog's shares: which live messages are shed rather than their peer
held, and the turns of a topic's origins (:mod:`trustp2p.protocol.gossip.backlog`)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from trustp2p.protocol.gossip import OriginTurns, over_level, shed_level


def fair_level(sizes: dict[str, int], bound: int) -> int:
    """The max-min fair level of ``bound`` among ``sizes``, the slow way (sorted): the
    level ``L`` where ``sizes``, each counted up to ``L``, add up to ``bound``
    (rounded down); the largest size if they add up to no more."""
    left, count = bound, len(sizes)
    for size in sorted(sizes.values()):
        if size * count >= left:
            return left // count
        left -= size
        count -= 1
    return max(sizes.values(), default=0)


def test_the_fair_level_shares_what_the_small_ones_leave() -> None:
    assert fair_level({"a": 10, "b": 100, "c": 100}, 100) == 45  # 10 + 45 + 45
    assert fair_level({"a": 10, "b": 20}, 100) == 20  # all fit: the largest
    assert fair_level({"a": 60, "b": 60}, 100) == 50
    assert fair_level({}, 100) == 0


@given(st.dictionaries(st.text(max_size=2), st.integers(0, 1000), min_size=1), st.integers(1, 3000))
def test_the_fair_level_is_where_the_sizes_add_up_to_the_bound(
    sizes: dict[str, int], bound: int
) -> None:
    level = fair_level(sizes, bound)
    counted = sum(min(size, level) for size in sizes.values())
    if sum(sizes.values()) <= bound:
        assert level == max(sizes.values())
    else:  # (rounded down: within one a size)
        assert bound - len(sizes) < counted <= bound
        assert not any(over_level(sizes, key, counted) for key in sizes if sizes[key] <= level)


def sheds(waiting: int, topics: dict[str, int], topic: str, size: int, bound: int) -> bool:
    """Whether a message of ``size`` that a peer relays is shed (as TopicQueues.sheds)."""
    over = topics.get(topic, 0) + size > shed_level(topics, topic, bound)
    return waiting + size > bound and over


def test_every_relayed_message_of_a_topic_over_its_share_is_shed() -> None:
    # Found in review (review81 F1): only an origin over an even part of the topic's
    # share was shed, so the message that crossed the bound from another origin (a
    # flood split over two identities, an honest publisher's) held the relay as before.
    topics = {"slow": 140, "chat": 10}
    assert shed_level(topics, "slow", 100) == 90  # slow's share: 90 (chat's 10 counted)
    assert sheds(150, topics, "slow", 10, 100)  # whatever its origin
    assert not sheds(90, {"slow": 90}, "slow", 10, 100)  # within the bound: queued
    assert sheds(100, {"slow": 100}, "slow", 1, 100)  # one byte past it
    # Nor of a topic within its share (its peers are held past twice the bound only).
    assert shed_level(topics, "chat", 100) == 50
    assert not sheds(150, topics, "chat", 40, 100)  # 50 of 50
    assert sheds(150, topics, "chat", 41, 100)
    assert shed_level(topics, "new", 100) == 45  # a topic new to the backlog: 10 + 45 + 45
    assert shed_level({}, "new", 100) == 100


@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 1000), min_size=1),
    st.sampled_from("abcde"),
    st.integers(1, 300),
    st.integers(1, 3000),
)
def test_a_message_is_shed_if_its_topic_would_be_over_the_fair_level(
    topics: dict[str, int], topic: str, size: int, bound: int
) -> None:
    # The level is kept between messages (review81: a copy and a sort of every topic's
    # bytes, 9-158 us a message past the bound): the same as the max-min fair level of
    # the topics, the message counted.
    counted = {**topics, topic: topics.get(topic, 0) + size}
    over = counted[topic] > shed_level(topics, topic, bound)
    assert over == over_level(counted, topic, bound)
    if sum(counted.values()) > bound:
        assert over == (counted[topic] > fair_level(counted, bound))


def test_origins_take_turns_each_in_its_own_order() -> None:
    """review81 F4, review85 F2: one queue a topic kept a small publisher behind a
    flood of its topic (0 of 24 delivered in 60 s). The origins take turns, one item
    each; each origin's items stay in the order they came."""
    turns: OriginTurns[tuple[str, int]] = OriginTurns(lambda item: item[0])
    for n in range(4):
        turns.append(("flood", n))
    turns.append(("small", 0))
    turns.append(("small", 1))
    assert len(turns) == 6 and turns
    taken = [turns.popleft() for _ in range(3)]
    turns.append(("late", 0))  # after the origins waiting: in turn after them
    taken += [turns.popleft() for _ in range(4)]
    assert taken == [
        ("flood", 0),
        ("small", 0),
        ("flood", 1),
        ("small", 1),
        ("flood", 2),
        ("late", 0),
        ("flood", 3),
    ]
    assert not turns and len(turns) == 0


def test_an_origin_whose_items_ran_out_comes_back_at_the_end_of_the_turns() -> None:
    turns: OriginTurns[tuple[str, int]] = OriginTurns(lambda item: item[0])
    turns.append(("a", 0))
    turns.append(("b", 0))
    assert turns.popleft() == ("a", 0)  # a has none left: out of the turns
    turns.append(("a", 1))
    turns.append(("b", 1))
    assert [turns.popleft() for _ in range(3)] == [("b", 0), ("a", 1), ("b", 1)]


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.booleans())))
def test_turns_keep_each_origins_order_and_lose_nothing(steps: list[tuple[str, bool]]) -> None:
    """Whatever the appends and takes: every item comes out once, each origin's in the
    order it went in."""
    turns: OriginTurns[tuple[str, int]] = OriginTurns(lambda item: item[0])
    put: list[tuple[str, int]] = []
    out: list[tuple[str, int]] = []
    for n, (origin, take) in enumerate(steps):
        turns.append((origin, n))
        put.append((origin, n))
        if take:
            out.append(turns.popleft())
    while turns:
        out.append(turns.popleft())
    assert sorted(out) == sorted(put)
    for origin in "abcd":
        assert [i for i in out if i[0] == origin] == [i for i in put if i[0] == origin]
    with pytest.raises(IndexError):
        turns.popleft()
