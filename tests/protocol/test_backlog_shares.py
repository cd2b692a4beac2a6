"""The delivery backlog's shares: whose live messages are shed rather than their peer
held (:mod:`trustp2p.protocol.gossip.backlog`)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from trustp2p.protocol.gossip import fair_level, over_level, sheds


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


def test_one_origin_flooding_a_topic_over_its_share_is_shed() -> None:
    topics = {"slow": 150, "chat": 10}  # slow's share: 90
    assert sheds(160, topics, "slow", 140, 2, 100)  # the flood: 140 of slow's 150
    # An origin within an even part of the topic's share (45 of 90) is not: its peer
    # is held, as before.
    assert not sheds(160, topics, "slow", 10, 2, 100)
    assert not sheds(160, topics, "slow", 45, 2, 100)
    assert sheds(160, topics, "slow", 46, 2, 100)
    # Within the bound nothing is shed; nor of a topic within its share.
    assert not sheds(100, topics, "slow", 140, 2, 100)
    assert not sheds(160, topics, "chat", 9, 2, 100)


@given(st.lists(st.integers(1, 100), min_size=1, max_size=30), st.integers(1, 1000))
def test_of_a_topic_over_its_share_the_largest_origin_is_shed(
    origins: list[int], bound: int
) -> None:
    # Identities are free: a flood spread evenly over many origins is shed all the same.
    total = sum(origins)
    if total > bound:
        assert sheds(total, {"slow": total}, "slow", max(origins), len(origins), bound)
