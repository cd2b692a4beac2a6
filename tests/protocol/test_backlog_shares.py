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
    topics = {"slow": 150, "chat": 10}
    origins = {"flood": 140, "honest": 10}
    assert sheds(160, topics, origins, "slow", "flood", 100)
    # An origin within its share of the topic's share (90 of 100) is not: its peer is
    # held, as before.
    assert not sheds(160, topics, origins, "slow", "honest", 100)
    # Within the bound nothing is shed; nor of a topic within its share.
    assert not sheds(100, topics, origins, "slow", "flood", 100)
    assert not sheds(160, topics, {"a": 9, "b": 1}, "chat", "a", 100)


def test_origins_flooding_evenly_are_all_shed() -> None:
    # Identities are free: many origins each with an even part of the flood are each
    # over their share of the topic's share.
    origins = {f"o{n}": 20 for n in range(10)}
    assert all(sheds(200, {"slow": 200}, origins, "slow", o, 100) for o in origins)
