"""Feeler dials (review62 F1): when a client dials an untried URL, and which one, on a
fake clock with a fake store."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from trustp2p.options import NodeOptions
from trustp2p.protocol.deliver import ConnId
from trustp2p.protocol.feelers import FeelerPolicy, Untried
from trustp2p.protocol.limits import UnprovenDials
from trustp2p.protocol.outbound import OutboundPolicy

from ..conftest import FakeClock
from .test_outbound import OWN, A, B, C, FakeStore

INTERVAL = 120.0


def keep_order(order: list[str]) -> None:
    pass


def untried(url: str, teller: str = "10.1", **fields: object) -> Untried:
    values: dict[str, object] = {"seconded": False, "failures": 0, "first_seen": 0.0}
    values.update(fields)
    return Untried(url, teller, **values)  # type: ignore[arg-type]


def make(clock: FakeClock, **options: object) -> tuple[FeelerPolicy, OutboundPolicy, FakeStore]:
    feelers = FeelerPolicy(clock=clock, interval=INTERVAL, shuffle=keep_order)
    policy = OutboundPolicy(clock=clock, target=2, **options)  # type: ignore[arg-type]
    return feelers, policy, FakeStore(proven=())


def test_one_feeler_every_interval_never_two_at_once(clock: FakeClock) -> None:
    feelers, policy, store = make(clock)
    assert feelers.wake_in() is None  # not started
    feelers.start()
    urls = [untried("ws://10.1.0.1:1107"), untried("ws://10.2.0.1:1107")]
    assert feelers.wake_in() == INTERVAL  # the first an interval after the start
    assert feelers.choose(urls, policy, {OWN}, [], store) is None
    clock.advance(INTERVAL)
    assert feelers.wake_in() == 0
    dial = feelers.choose(urls, policy, {OWN}, [], store)
    assert dial is not None
    assert dial.url == "ws://10.1.0.1:1107"
    assert feelers.under_way == dial.url
    assert policy.dials == [dial]  # a managed dial: its address is busy for the manager
    clock.advance(10 * INTERVAL)
    assert feelers.wake_in() is None  # one under way: no other, however long it takes
    assert feelers.choose(urls, policy, {OWN}, [], store) is None
    feelers.ended()
    policy.dial_ended(dial.url)
    assert feelers.under_way is None
    assert feelers.wake_in() == INTERVAL


def test_nothing_to_dial_tries_again_an_interval_later(clock: FakeClock) -> None:
    feelers, policy, store = make(clock)
    feelers.start()
    clock.advance(INTERVAL)
    assert feelers.choose([], policy, {OWN}, [], store) is None
    assert feelers.wake_in() == INTERVAL


def test_off_at_zero(clock: FakeClock) -> None:
    feelers = FeelerPolicy(clock=clock, interval=0)
    feelers.start()
    policy = OutboundPolicy(clock=clock)
    clock.advance(10_000)
    assert feelers.wake_in() is None
    assert feelers.choose([untried("ws://10.1.0.1:1107")], policy, set(), [], None) is None


@pytest.mark.parametrize("interval", [-1.0, float("inf"), float("nan")])
def test_interval_checked(clock: FakeClock, interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be a finite number of seconds"):
        FeelerPolicy(clock=clock, interval=interval)


SKIPPED = [
    "ws://10.9.0.1:1107",  # connected
    "ws://10.9.0.2:1107",  # its group is full
    "ws://10.3.0.1:1107",  # persistent (dialled for good)
    "ws://10.4.0.1:1107",  # being dialled
    "ws://10.5.0.1:1107",  # the peer met there is connected
    "ws://10.6.0.1:1107",  # the peer met there is blocked
    "ws://10.7.0.1:1107",  # its host is blocked
    "ws://10.8.0.1:1107",  # its retry is pending
    "ws://10.10.0.1:1107",  # proven in this run (its peer not connected)
    "ws://10.11.0.1:1107",  # ours
    f"ws://10.12.0.1:1107/p2p/{A}",  # names a connected peer
]
LEFT = "ws://10.99.0.1:1107"  # (sorts after them all: one teller, equal keys, by URL)


def choose_among(clock: FakeClock, urls: list[str]) -> str | None:
    """The feeler chosen among ``urls``, with what makes each of SKIPPED skipped."""
    feelers, policy, store = make(clock, max_per_netgroup=1)
    feelers.start()
    clock.advance(INTERVAL)  # (before the retry below: it is pending when choosing)
    policy.connection_opened(ConnId(1), "ws://10.9.0.1:1107", A)  # group 10.9 is full
    policy.add_persistent("ws://10.3.0.1:1107")
    policy.start_dial("ws://10.4.0.1:1107")
    store.ids["ws://10.5.0.1:1107"] = A
    store.ids["ws://10.6.0.1:1107"] = B
    store.blocked_ids.add(B)
    store.blocked_addresses.add("10.7.0.1")
    policy.dial_failed("ws://10.8.0.1:1107")
    policy.remember_peer("ws://10.10.0.1:1107", C)
    candidates = [untried(url) for url in urls]
    dial = feelers.choose(candidates, policy, {A, OWN}, ["ws://10.11.0.1:1107"], store)
    return None if dial is None else dial.url


@pytest.mark.parametrize(
    ("value", "shown"), [(-1.0, "-1.0"), (float("inf"), "inf"), (float("nan"), "nan"), ("5", "'5'")]
)
def test_the_node_option_is_checked(value: object, shown: str) -> None:
    """``feeler_interval`` is checked, and the error gives the value (review69 F6)."""
    message = f"feeler_interval must be a finite number of seconds >= 0, not {shown}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        NodeOptions(client=True, feeler_interval=value)  # type: ignore[arg-type]
    assert NodeOptions(client=True).feeler_interval == INTERVAL
    assert NodeOptions(client=True, feeler_interval=0).feeler_interval == 0


def test_skips_what_a_managed_dial_may_not_dial(clock: FakeClock) -> None:
    """Connected (its address, or the peer met there), dialled for good, being dialled,
    ours, blocked (host or peer), waiting for a retry, proven in this run, or in a
    network group that holds max_per_netgroup outbound peers: the one left, which sorts
    after all of them (review69 F2: it sorted before most, never looked at), is chosen."""
    assert sorted([*SKIPPED, LEFT])[-1] == LEFT
    assert choose_among(clock, [*SKIPPED, LEFT]) == LEFT


@pytest.mark.parametrize("skipped", range(len(SKIPPED)))
def test_each_skip_alone(clock: FakeClock, skipped: int) -> None:
    """Each of them alone, but for one that sorts after it: skipped for its own reason."""
    assert choose_among(clock, [SKIPPED[skipped], LEFT]) == LEFT
    assert choose_among(clock, [SKIPPED[skipped]]) is None


def test_within_a_teller_fewest_failures_then_seconded_then_oldest(clock: FakeClock) -> None:
    feelers, policy, store = make(clock)
    feelers.start()
    candidates = [
        untried("ws://10.1.0.1:1107", failures=1, seconded=True, first_seen=1.0),
        untried("ws://10.2.0.1:1107", first_seen=5.0),
        untried("ws://10.3.0.1:1107", seconded=True, first_seen=9.0),
        untried("ws://10.4.0.1:1107", seconded=True, first_seen=7.0),
    ]
    chosen: list[str] = []
    for _ in list(candidates):
        clock.advance(INTERVAL)
        dial = feelers.choose(candidates, policy, {OWN}, [], store)
        assert dial is not None
        chosen.append(dial.url)
        candidates = [c for c in candidates if c.url != dial.url]  # (proven, say)
        policy.dial_ended(dial.url)
        feelers.ended()
    assert chosen == [
        "ws://10.4.0.1:1107",
        "ws://10.3.0.1:1107",
        "ws://10.2.0.1:1107",
        "ws://10.1.0.1:1107",
    ]


def test_tellers_take_turns_whatever_they_told(clock: FakeClock) -> None:
    """An honest server's 3 URLs against 3,000 made-up ones from servers of three /16s:
    each of the four tellers gets about a quarter of the feelers (a URL chosen at random
    would be the honest one's once in 1,000), and a URL only a peer claimed (no teller)
    takes its turn with its host's group."""
    feelers = FeelerPolicy(clock=clock, interval=INTERVAL, shuffle=random.Random(7).shuffle)
    feelers.start()
    policy = OutboundPolicy(clock=clock, target=2)
    store = FakeStore(proven=())
    honest = [untried(f"ws://10.{i}.0.1:1107", teller="40.1") for i in range(3)]
    made_up = [
        untried(f"ws://{i // 250}.{i % 250}.0.9:1107", teller=f"172.{16 + i % 3}")
        for i in range(3000)
    ]
    claim = untried("ws://20.1.0.1:1107", teller="host 20.1")  # (no server told it)
    told: Counter[str] = Counter()
    for _ in range(400):
        clock.advance(INTERVAL)
        dial = feelers.choose([*made_up, claim, *honest], policy, {OWN}, [], store)
        assert dial is not None
        told["honest" if "ws://10." in dial.url else "claim" if "20.1" in dial.url else "x"] += 1
        policy.dial_ended(dial.url)
        feelers.ended()
    assert 60 <= told["honest"] <= 100
    assert 60 <= told["claim"] <= 100
    assert told["x"] == 400 - told["honest"] - told["claim"]


def test_the_bound_on_unproven_dials_holds_a_feeler(clock: FakeClock) -> None:
    feelers = FeelerPolicy(clock=clock, interval=INTERVAL, shuffle=keep_order)
    feelers.start()
    bound = UnprovenDials(max_concurrent=1, rate=0.5, burst=1)
    policy = OutboundPolicy(clock=clock, unproven=bound)
    store = FakeStore(proven=())
    assert policy.may_dial("ws://10.1.0.1:1107", store)  # the manager's, under way
    clock.advance(INTERVAL)
    urls = [untried("ws://10.2.0.1:1107")]
    assert feelers.choose(urls, policy, {OWN}, [], store) is None
    assert feelers.wake_in() == 1.0  # soon, not an interval later
    bound.ended("ws://10.1.0.1:1107")
    clock.advance(1.0)
    dial = feelers.choose(urls, policy, {OWN}, [], store)
    assert dial is not None
    assert dial.url == "ws://10.2.0.1:1107"


def first_of_two(
    clock: FakeClock, first: str, second: str
) -> tuple[FeelerPolicy, OutboundPolicy, FakeStore, list[Untried]]:
    """Feelers started with two URLs of one teller, ``first`` told first; the first
    feeler, an interval later, dialled ``first`` (checked)."""
    feelers, policy, store = make(clock)
    feelers.start()
    candidates = [untried(first, first_seen=1.0), untried(second, first_seen=2.0)]
    clock.advance(INTERVAL)
    dial = feelers.choose(candidates, policy, {OWN}, [], store)
    assert dial is not None and dial.url == first
    return feelers, policy, store, candidates


def test_a_held_url_waits_the_time_its_peer_named(clock: FakeClock) -> None:
    # Found in review (review72 A1): a hold (a peer's "blocked for 900 s", a 1013 "try
    # again in 900 s") held the managed dials only: a feeler dialled the URL again at
    # the next interval.
    held, other = "ws://10.1.0.1:1107", "ws://10.1.0.2:1107"
    feelers, policy, store, candidates = first_of_two(clock, held, other)
    policy.hold(held, 900.0)
    policy.dial_ended(held)
    feelers.ended()
    for _ in range(3):
        clock.advance(INTERVAL)
        dial = feelers.choose(candidates, policy, {OWN}, [], store)
        assert dial is not None and dial.url == other
        policy.dial_ended(other)
        feelers.ended()
    clock.advance(900.0)
    dial = feelers.choose(candidates, policy, {OWN}, [], store)
    assert dial is not None and dial.url == held  # (its wait over; the other failed none)


def test_a_url_refused_in_this_run_goes_after_the_teller_s_others(clock: FakeClock) -> None:
    # Found in review (review72 A2): a full server's refusal (1013) counts no store
    # failure, and its wait ended before the next feeler: it took every one of its
    # teller's feelers, and the honest URL beside it was never tried.
    full, honest = "ws://10.1.0.1:1107", "ws://10.1.0.2:1107"
    feelers, policy, store, candidates = first_of_two(clock, full, honest)
    policy.dial_failed(full)  # refused: a failure in this run, none in the store
    policy.dial_ended(full)
    feelers.ended()
    clock.advance(INTERVAL)
    dial = feelers.choose(candidates, policy, {OWN}, [], store)
    assert dial is not None and dial.url == honest
