"""The limits on addresses learned from peers, on a fake clock: what a peer may make us
store (AddressBudget), and how many dials go to unproven addresses (UnprovenDials)."""

from __future__ import annotations

import pytest

from trustp2p.protocol.limits import (
    ADDRESS_BURST,
    ADDRESS_RATE,
    FIRST_ADDRESSES,
    AddressBudget,
    UnprovenDials,
)

from ..conftest import FakeClock


def urls(first: int, count: int) -> list[str]:
    return [f"ws://10.0.{n // 256}.{n % 256}:1107" for n in range(first, first + count)]


def nothing_known(url: str) -> bool:
    return False


def test_defaults_follow_bitcoin_core() -> None:
    budget = AddressBudget()
    assert (budget.rate, budget.burst, budget.initial) == (0.1, 1000, 100)
    assert (ADDRESS_RATE, ADDRESS_BURST, FIRST_ADDRESSES) == (0.1, 1000, 100)


def test_a_new_peer_may_add_one_answer_then_a_trickle(clock: FakeClock) -> None:
    budget = AddressBudget()
    assert budget.take("tpa", urls(0, 100), clock(), known=nothing_known) == urls(0, 100)
    assert budget.take("tpa", urls(100, 100), clock(), known=nothing_known) == []
    clock.advance(15.0)  # 1.5 tokens
    assert budget.take("tpa", urls(200, 100), clock(), known=nothing_known) == urls(200, 1)
    clock.advance(5.0)
    assert budget.take("tpa", urls(300, 100), clock(), known=nothing_known) == urls(300, 1)
    # Another peer has its own budget.
    assert len(budget.take("tpb", urls(400, 100), clock(), known=nothing_known)) == 100


def test_known_urls_cost_nothing(clock: FakeClock) -> None:
    budget = AddressBudget(initial=2)
    known = set(urls(0, 50))
    offered = urls(0, 50) + urls(50, 5)
    assert budget.take("tpa", offered, clock(), known=known.__contains__) == (
        urls(0, 50) + urls(50, 2)
    )
    assert budget.level("tpa", clock()) == 0.0


def test_a_peer_saves_up_to_the_burst(clock: FakeClock) -> None:
    budget = AddressBudget(rate=1.0, burst=10, initial=0)
    assert budget.take("tpa", urls(0, 5), clock(), known=nothing_known) == []
    clock.advance(3600.0)
    assert budget.level("tpa", clock()) == 10.0
    assert len(budget.take("tpa", urls(0, 50), clock(), known=nothing_known)) == 10


def test_forgetting_never_gives_a_peer_more(clock: FakeClock) -> None:
    budget = AddressBudget(rate=1.0, burst=10, initial=5, max_tracked=2)
    budget.take("spent", urls(0, 5), clock(), known=nothing_known)  # 0 tokens left
    budget.take("rich", urls(0, 0), clock(), known=nothing_known)  # 5 tokens
    budget.take("new", urls(0, 0), clock(), known=nothing_known)  # over: "rich" goes
    assert len(budget) == 2
    assert budget.take("spent", urls(10, 5), clock(), known=nothing_known) == []


def test_invalid_budget() -> None:
    with pytest.raises(ValueError, match="need rate > 0"):
        AddressBudget(initial=2000)
    with pytest.raises(ValueError, match="need rate > 0"):
        AddressBudget(rate=0)


def test_unproven_dials_are_bounded_in_number(clock: FakeClock) -> None:
    dials = UnprovenDials(max_concurrent=2, rate=100.0, burst=100)
    assert dials.start("a", clock()) and dials.start("b", clock())
    assert not dials.start("c", clock())
    assert dials.wait(clock()) is None  # one must end first
    assert dials.start("a", clock())  # already under way: allowed, not counted twice
    dials.ended("a")
    dials.ended("x")  # never started: nothing happens
    assert dials.wait(clock()) == 0.0
    assert dials.start("c", clock())
    assert len(dials) == 2


def test_unproven_dials_are_bounded_in_rate(clock: FakeClock) -> None:
    dials = UnprovenDials()  # 8 at once, 0.5/s, burst 8
    started = 0
    for n in range(100):  # a list of 100 addresses that don't answer
        url = f"ws://192.0.2.{n}:1107"
        if dials.start(url, clock()):
            started += 1
            dials.ended(url)  # each fails at once
    assert started == 8
    assert dials.wait(clock()) == pytest.approx(2.0)
    # In the next 12 s, at 0.5/s: 6 more, however often the dialler tries.
    for _ in range(48):
        clock.advance(0.25)
        if dials.start("ws://192.0.2.1:1107", clock()):
            started += 1
            dials.ended("ws://192.0.2.1:1107")
    assert started == 14


def test_invalid_dial_limits() -> None:
    with pytest.raises(ValueError, match="need max_concurrent >= 1"):
        UnprovenDials(max_concurrent=0)
