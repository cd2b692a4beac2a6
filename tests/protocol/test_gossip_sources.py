"""The catch-up rounds' preferred sources, by credit (fake clock)."""

from __future__ import annotations

import random

import pytest

from trustp2p.protocol.gossip import MAX_CREDIT, CatchUp, RelaySources


def test_a_credit_halves_every_half_life_and_goes_below_the_floor() -> None:
    sources = RelaySources[str](half_life=30.0)
    assert sources.weight("relay", 0.0) == 0.0
    sources.relayed("relay", 0.0)
    assert sources.weight("relay", 0.0) == 1.0
    assert sources.weight("relay", 30.0) == 0.5
    assert sources.weight("relay", 60.0) == 0.25  # a message two intervals ago counts
    assert len(sources) == 1
    assert sources.weight("relay", 61.0) == 0.0  # ...and no older one
    assert len(sources) == 0  # (forgotten)


def test_credits_add_up_to_the_cap() -> None:
    sources = RelaySources[str](half_life=30.0)
    for _ in range(3):
        sources.relayed("relay", 10.0)
    assert sources.weight("relay", 10.0) == 3.0
    sources.relayed("relay", 40.0)  # 1.5 left of the 3, and 1 more
    assert sources.weight("relay", 40.0) == 2.5
    for _ in range(1000):
        sources.relayed("relay", 40.0)
    assert sources.weight("relay", 40.0) == MAX_CREDIT
    assert sources.weight("relay", 70.0) == MAX_CREDIT / 2


def test_a_time_going_back_takes_nothing_away() -> None:
    sources = RelaySources[str](half_life=30.0)
    sources.relayed("relay", 100.0)
    assert sources.weight("relay", 90.0) == 1.0


@pytest.mark.parametrize("half_life", [0.0, -1.0, float("nan")])
def test_the_half_life_must_be_positive(half_life: float) -> None:
    with pytest.raises(ValueError, match=r"^half_life must be more than 0, not "):
        RelaySources[str](half_life=half_life)


def test_a_steady_relay_outweighs_identities_that_each_relay_a_message_a_minute() -> None:
    # review71 F3: seven identities, each bringing one message a minute (each other's:
    # their own earn nothing), against an honest relay that brought one every 2 s.
    sources = RelaySources[str](half_life=30.0)
    liars = [f"liar{n}" for n in range(7)]
    for second in range(0, 600, 2):
        sources.relayed("honest", float(second))
        if second % 60 == 0:
            for liar in liars:
                sources.relayed(liar, float(second))
    now = 598.0
    weighted = [(p, w) for p in ["honest", *liars] if (w := sources.weight(p, now)) > 0]
    catchup = CatchUp(batch=1, rng=random.Random(7))
    peers = ["honest", *liars]
    picks = [catchup.choose(peers, weighted) for _ in range(2000)]
    # Every other round by credit (the relay's ~30 of ~32 in all), the rest at random.
    assert picks.count("honest") > 2000 * (0.5 * 0.9 + 0.5 / 8) * 0.95


def test_peers_of_one_group_share_its_credit() -> None:
    # review75 F1: seven identities relaying spam to each other each took the cap, as
    # much as the honest relay; those of one address group now share one credit.
    sources = RelaySources[str](half_life=30.0)
    for _ in range(100):
        sources.relayed("10.1", 0.0)  # the honest relay's group
        sources.relayed("10.2", 0.0)  # the identities' group
    members = {"honest": "10.1", **{f"sybil{n}": "10.2" for n in range(7)}, "idle": "10.3"}
    weighed = dict(sources.weigh(members, 0.0))
    assert weighed == {"honest": MAX_CREDIT, **{f"sybil{n}": MAX_CREDIT / 7 for n in range(7)}}


def test_weighing_forgets_the_groups_that_are_no_sources() -> None:
    sources = RelaySources[str](half_life=30.0)
    sources.relayed("gone", 0.0)  # a group none of whose peers is asked about again
    sources.relayed("here", 50.0)
    assert sources.weigh({"peer": "here"}, 61.0) == [("peer", pytest.approx(0.5 ** (11 / 30)))]
    assert len(sources) == 1
