"""The node's checks of new gossip messages by who asked for them
(:class:`~trustp2p.protocol.gossip.CheckShares`), and the order a catch-up fetches in
(:func:`~trustp2p.protocol.gossip.order_fetches`), on a fake clock. Found by a tester
(tester46): a new node's catch-up spent its hub's share of ``gossip_node_rate``, the node
stopped reading the hub, and the hub's live messages waited 22-37 s behind the backlog."""

from __future__ import annotations

import pytest

from trustp2p.protocol.gossip import (
    IHAVE,
    IWANT,
    CheckShares,
    Fetch,
    FetchRange,
    GapSkipped,
    RouterAction,
    order_fetches,
)
from trustp2p.protocol.gossip.lazy import LATE_FOR
from trustp2p.protocol.gossip.streams import START_AGE

from . import test_gossip_catchup as catchup, test_gossip_streams as streams
from .test_gossip_router import TOPIC, _meshed, _message, _talks, _with_peers


def test_a_catch_up_answer_spends_no_share_of_the_pushed_messages() -> None:
    checks = CheckShares(100)
    assert checks.fetched("hub", 0.0, 100, None) == 0.0
    assert checks.fetched("hub", 0.1, 100, None) == pytest.approx(0.9)  # the asker waits
    # The hub's live messages are read on: the catch-up took none of their share.
    assert [checks.live("hub", 0.2, None, asked=False) for _ in range(100)] == [0.0] * 100
    assert checks.live("hub", 0.3, None, asked=False) == pytest.approx(0.9)  # a flood: paused


def test_nothing_fetched_spends_nothing() -> None:
    checks = CheckShares(1)
    assert checks.fetched("hub", 0.0, 0, None) == 0.0
    assert checks.live("hub", 0.0, None, asked=False) == 0.0


def test_messages_asked_for_never_pause_the_reading_but_stop_the_asking() -> None:
    checks = CheckShares(100)
    assert checks.may_ask("hub", 0.0, None)
    checks.asking("hub", 0.0, 150, None)  # (spent as asked: review90 F1)
    assert [checks.live("hub", 0.0, None, asked=True) for _ in range(150)] == [0.0] * 150
    assert not checks.may_ask("hub", 0.5, "group")  # past its share of pulls
    assert checks.may_ask("other", 0.5, None)  # within its own
    assert checks.may_ask("hub", 1.0, None)  # a new window
    # Neither pulls nor fetches took the pushed messages' share.
    assert [checks.live("hub", 1.0, None, asked=False) for _ in range(100)] == [0.0] * 100


def test_a_router_asks_a_peer_over_its_share_of_pulls_for_nothing() -> None:
    router, sent, _ = _meshed(2)
    router.may_ask = lambda peer: peer != 0
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a", "b"]})
    assert sent == []
    assert router.stats.ihave_ignored == 2
    assert not router.asked(0, "a")
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["a", "b"]})
    assert sent == [RouterAction("talk", 1, IWANT, {"ids": ["a", "b"]})]
    assert router.asked(1, "a") and not router.asked(0, "a")  # (only of whom it was asked)


def test_peers_that_announce_at_once_are_asked_for_twice_the_rate_at_most() -> None:
    """review90 F1: a pull's check was spent as its answer came, so peers announcing
    ids at the start of a second were each asked for ``max_asks`` of them while the
    share was empty: K identities, K x 500 checks a second (48: 24,000, at a rate of
    1,000). Spent as asked, the asks stop at twice the rate, and one peer's last ask."""
    router, sent, clock = _meshed(48, max_asks=500, max_ihave=500)
    checks = CheckShares(1000)
    router.may_ask = lambda peer: checks.may_ask(peer, clock(), None)
    router.asking = lambda peer, count: checks.asking(peer, clock(), count, None)
    for peer in range(48):
        ids = [f"{peer}-{n}" for n in range(500)]
        router.control(peer, IHAVE, {"topic": TOPIC, "ids": ids})
    asked = sum(len(action.body["ids"]) for action in sent if action.event == IWANT)
    assert 1000 <= asked <= 2 * 1000 + 500  # (before: 24,000)


def test_a_late_answer_to_an_iwant_is_a_pull_not_a_push() -> None:
    """review90 F3: an answer that came after the ask's timeout (1 s) was no longer
    taken as asked, and spent the honest peer's share of pushed messages: past it, the
    node stopped reading the peer that answered it late. It is a pull for
    ``LATE_FOR`` timeouts after the ask is given up on (its check spent as asked)."""
    router, sent, clock = _meshed(2)
    checks = CheckShares(1)  # (one pushed message a second: a second one is over)
    router.may_ask = lambda peer: checks.may_ask(peer, clock(), None)
    router.asking = lambda peer, count: checks.asking(peer, clock(), count, None)
    first, second = _message(1), _message(2)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": [first.id, second.id]})
    router.control(1, IHAVE, {"topic": TOPIC, "ids": [first.id]})
    clock.advance(1.5)
    router.heartbeat()  # timed out: the first asked of peer 1, the second of nobody
    assert _talks(sent, IWANT) == [
        (0, IWANT, {"ids": [first.id, second.id]}),
        (1, IWANT, {"ids": [first.id]}),
    ]
    clock.advance(0.5)  # peer 0's answers come, late: pulls, the reading goes on
    for message in (first, second):
        asked = router.asked(0, message.id)
        assert asked  # (before: False, and the second paused peer 0 for 1 s)
        assert checks.live(0, clock(), None, asked=asked) == 0.0
        assert router.receive(0, message)
    assert not router.asked(1, first.id)  # (it came: nobody is asked for it)
    assert checks.live(0, clock(), None, asked=False) == 0.0  # the pushed share untouched
    # Given up on LATE_FOR timeouts ago, an id's answer is pushed again.
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["x"]})
    clock.advance(1.5)
    router.heartbeat()
    assert router.asked(1, "x")
    clock.advance(LATE_FOR * router.iwant_timeout - 0.5)
    router.heartbeat()
    assert router.asked(1, "x")  # (within the grace)
    clock.advance(1.0)
    router.heartbeat()
    assert not router.asked(1, "x")


def test_the_late_answers_a_peer_may_give_are_bounded() -> None:
    """Taken over from a peer that broke a promise, an id is late from it too; a peer
    has its last ``max_asks`` ids given up on at most, and none once it goes."""
    router, sent, clock = _meshed(2, max_asks=3)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a", "b", "c"]})
    clock.advance(1.5)
    router.heartbeat()  # peer 0 broke its promises: a, b, c late from it
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["d", "e", "f"]})
    assert all(router.asked(0, i) for i in "abcdef")
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["d"]})  # asked of 1 at once
    assert _talks(sent, IWANT)[-1] == (1, IWANT, {"ids": ["d"]})
    assert router.asked(0, "d") and router.asked(1, "d")  # (late from 0)
    assert not router.asked(0, "a")  # three late at most: the oldest went
    clock.advance(1.5)
    router.heartbeat()
    assert [i for i in "abcdef" if router.asked(0, i)] == ["d", "e", "f"]
    router.remove_peer(0)
    _with_peers(router, sent, range(1), [TOPIC])  # the same key again: nothing late
    assert not any(router.asked(0, i) for i in "abcdef")


class Held:
    """Messages held behind a gap in ``streams``, at seq 50."""

    def __init__(self, *streams: str) -> None:
        self.streams = streams

    def held_range(self, stream: str, /) -> tuple[int, int] | None:
        return (50, 50) if stream in self.streams else None

    def missing_runs(self, stream: str, /) -> list[tuple[int, int]]:
        return [(1, 49)] if stream in self.streams else []


def test_a_catch_up_fetches_what_held_messages_wait_for_first() -> None:
    a1, a2 = FetchRange("t", "a" * 34, 1, 100), FetchRange("t", "a" * 34, 200, 300)
    b = FetchRange("t", "b" * 34, 1, 100)
    c1, c2 = FetchRange("t", "c" * 34, 51, 100), FetchRange("t", "c" * 34, 1, 49)
    planned = [a2, a1, b, c1, c2]
    order_fetches(planned, lambda stream: 0, Held(c1.stream))
    # c's messages wait at 50: its gap first, then what follows; then a's gap before its
    # range after one (a2 waits behind a1); b kept in place among them.
    assert planned == [c2, c1, a1, b, a2]


def test_a_fetch_says_at_its_first_answer_that_the_peer_lacks_the_ranges_start() -> None:
    # Found while mending tester46's finding: a new node fetched a whole stream whose
    # first messages its hub had let go of, holding all of it, before it said the hub
    # lacked them; with such streams fetched first, nothing was delivered for 10 s.
    fetch = Fetch(FetchRange(catchup.TOPIC, catchup.A, 1, 1000), batch=100)
    fetch.request()
    assert fetch.lacking_before == 0  # (nothing yet)
    fetch.receive(catchup._answer(*range(40, 140)))
    assert not fetch.done and fetch.lacking_before == 39
    waited = Fetch(FetchRange(catchup.TOPIC, catchup.A, 1, 1000), batch=100)
    waited.request()
    waited.receive({**catchup._answer(*range(40, 140)), "waiting": True})
    assert waited.lacking_before == 0  # it waits for them: it doesn't lack them
    whole = Fetch(FetchRange(catchup.TOPIC, catchup.A, 1, 1000), batch=100)
    whole.request()
    whole.receive(catchup._answer(*range(1, 101)))
    assert whole.lacking_before == 0
    seqs = Fetch(FetchRange.of_seqs(catchup.TOPIC, catchup.A, (5, 10)), batch=10)
    seqs.request()
    seqs.receive(catchup._answer(10))
    assert seqs.lacking_before == 0  # (what a fetch of numbers lacks: once done)


def test_a_start_decided_is_skipped_while_its_stream_is_still_fetched() -> None:
    states, marks, _ = streams._streams()
    old = streams.NOW_MS - int(START_AGE * 1000)
    states.add(streams._message(40, ts=old), "p")
    states.add(streams._message(41, ts=old), "p")
    assert states.tick(busy={streams.STREAM}) == ([], [])  # the gap waits for the fetch
    states.answered(streams.STREAM, 1, 39)  # its first answer began at 40
    events, _ = states.tick(busy={streams.STREAM})  # at once, though the fetch goes on
    assert events == [
        GapSkipped(streams.TOPIC, streams.ALICE.peer_id, 1, 39, "start"),
        streams.Deliver(streams._message(40, ts=old), "p"),
        streams.Deliver(streams._message(41, ts=old), "p"),
    ]
    assert marks.marks[streams.STREAM] == 41
