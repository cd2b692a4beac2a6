"""
Whom ``publish()`` waits for, without sockets (``trustp2p.protocol.gossip.pacing``):
peers behind are waited for, a second at most; a wait is late past what a peer taking
the message at MIN_DRAIN_RATE needs; a peer whose waits are late is slow until it has
kept up for a while; all peers' late waits together hold publishing half of the time at
most, and on-time waits go on past that. Driven by a fake clock.
"""

from __future__ import annotations

import math

from trustp2p.protocol.gossip import PublishPacing
from trustp2p.protocol.gossip.pacing import (
    KEEP_UP,
    LATE_WAIT,
    MIN_DRAIN_RATE,
    MIN_TAKE,
    NODE_WAIT_SHARE,
    PUBLISH_WAIT,
    WAIT_WINDOW,
)

from ..conftest import FakeClock


def _publish(
    pacing: PublishPacing[str],
    clock: FakeClock,
    behind: dict[str, bool],
    size: int = 0,
    **took: float | None,
) -> tuple[list[str], float]:
    """One publish of ``size`` bytes: plan, then wait as the peers named in ``took``
    drain after that many seconds (None: never), the clock moving by the wait."""
    peers, timeout = pacing.plan(behind, size)
    if peers:
        times = {p: None if (t := took.get(p, 0.0)) is None or t > timeout else t for p in peers}
        elapsed = max(timeout if t is None else t for t in times.values())
        clock.advance(elapsed)
        pacing.waited(times, elapsed)
    return peers, timeout


def test_peers_behind_are_waited_for_a_second_at_most() -> None:
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    assert pacing.plan({"a": False, "b": False}) == ([], 0.0)
    assert pacing.plan({"a": True, "b": False}) == (["a"], PUBLISH_WAIT)
    pacing.waited({"a": 0.01}, 0.01)
    assert pacing.slow == set()


def test_a_peer_still_behind_when_the_wait_ends_is_slow() -> None:
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    _publish(pacing, clock, {"a": True, "b": True}, a=None, b=0.2)
    assert pacing.slow == {"a"}
    assert pacing.plan({"a": True, "b": True}) == (["b"], PUBLISH_WAIT)


def test_a_peer_draining_just_before_the_second_is_up_is_slow_by_its_total() -> None:
    """Found by an attacker: a peer that read its buffer just before each wait's second
    was up was never still behind at the end, and every publish() waited ~0.8 s for it.
    Its waits add up: past PUBLISH_WAIT in a window, it is slow."""
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    waits = 0
    for _ in range(50):  # publishes
        peers, _ = _publish(pacing, clock, {"x": True}, x=0.8)
        waits += bool(peers)
        clock.advance(0.2)
    assert waits == 2
    assert pacing.slow == {"x"}


def test_a_slow_peer_is_waited_for_again_once_it_kept_up_for_keep_up() -> None:
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    _publish(pacing, clock, {"a": True}, a=None)
    assert pacing.slow == {"a"}
    assert pacing.plan({"a": False}) == ([], 0.0)  # seen keeping up...
    clock.advance(KEEP_UP - 1)
    assert pacing.plan({"a": True}) == ([], 0.0)  # ...then behind: it starts again
    clock.advance(1)
    pacing.plan({"a": False})
    clock.advance(KEEP_UP - 0.001)
    pacing.plan({"a": False})
    assert pacing.slow == {"a"}
    clock.advance(0.001)
    pacing.plan({"a": False})
    assert pacing.slow == set()
    assert pacing.plan({"a": True}) == (["a"], PUBLISH_WAIT)  # its waits start afresh


def test_many_peers_each_within_its_bound_hold_publishing_half_the_time_at_most() -> None:
    # Their late waits add up to half of each window at most (and one wait); past that,
    # each publish waits as long as it is on time at most (review25 M2: it waited for
    # no one, not even for peers that drain on time).
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    peers = {f"p{i}": True for i in range(100)}
    on_time, start, late = LATE_WAIT * PUBLISH_WAIT, clock(), 0.0
    while clock() - start < 10 * WAIT_WINDOW:
        behind = {p: b for p, b in peers.items() if p not in pacing.slow}
        named, timeout = pacing.plan(behind)
        if named:  # one of them drains after 0.6 s each time, the others at once
            assert timeout >= on_time
            took: dict[str, float | None] = dict.fromkeys(named, 0.0)
            took[named[0]] = 0.6 if 0.6 <= timeout else None
            elapsed = min(0.6, timeout)
            clock.advance(elapsed)
            late += elapsed if elapsed > on_time else 0.0  # (the rest are on time)
            pacing.waited(took, elapsed)
        clock.advance(0.1)  # the publish itself
    assert late <= 10 * (WAIT_WINDOW * pacing.share + PUBLISH_WAIT)
    assert late >= WAIT_WINDOW  # (they were waited for)


def test_a_wait_cut_short_by_the_nodes_share_makes_no_peer_slow_but_is_late() -> None:
    # Changed by design (review25 M2): once the share is spent, a publish still waits
    # on time (it waited for no one); a peer still behind then waited late.
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock, share=0.07)  # 0.7 s a window
    _publish(pacing, clock, {"a": True}, a=0.6)  # late: it counts
    peers, timeout = pacing.plan({"b": True})
    assert peers == ["b"] and timeout == LATE_WAIT * PUBLISH_WAIT  # on time, not 0.1
    pacing.waited({"b": None}, timeout)
    assert pacing.slow == set()
    for _ in range(3):  # the share is spent: each wait is on time at most, and late
        assert pacing.plan({"b": True}) == (["b"], LATE_WAIT * PUBLISH_WAIT)
        pacing.waited({"b": None}, LATE_WAIT * PUBLISH_WAIT)
    assert pacing.slow == {"b"}  # four late waits of a quarter of a second: one second
    clock.advance(WAIT_WINDOW)
    peers, timeout = pacing.plan({"c": True})
    assert peers == ["c"] and abs(timeout - 0.7) < 1e-9


def test_a_peer_that_drains_steadily_paces_publishing_however_long() -> None:
    # Found in review: an honest subscriber on a 2 MB/s link drained each wait in 0.2 s
    # during the application's burst; counting those waits made it slow after five, and
    # the burst's tail was dropped for it. Only late waits count.
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    for _ in range(200):  # 100 s of publishing, the subscriber behind at every publish
        peers, _ = _publish(pacing, clock, {"s": True}, s=0.2)
        assert peers == ["s"]
        clock.advance(0.3)  # the application's own work between publishes
    assert pacing.slow == set()
    _publish(pacing, clock, {"s": True}, s=0.6)
    _publish(pacing, clock, {"s": True}, s=0.6)
    assert pacing.slow == {"s"}  # two late waits: over a second


def test_a_peer_draining_just_under_the_late_mark_paces_publishing() -> None:
    # The price of backpressure (review23, review24): a peer that drains just under
    # LATE_WAIT at every publish holds each that long, as an honest subscriber on a slow
    # link does, and is never slow: a quarter of a second a publish at most. (Counting
    # such waits in the node's share made the end of a long burst drop for an honest
    # subscriber, past what the origin's log keeps for catch-up.)
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    publishes, start = 0, clock()
    while clock() - start < 10 * WAIT_WINDOW:
        peers, timeout = pacing.plan({"x": True})
        assert peers == ["x"] and timeout == PUBLISH_WAIT
        _publish(pacing, clock, {"x": True}, x=LATE_WAIT * PUBLISH_WAIT - 0.01)
        clock.advance(0.01)  # the publish itself
        publishes += 1
    assert pacing.slow == set()
    assert publishes >= 10 * WAIT_WINDOW / (LATE_WAIT * PUBLISH_WAIT) - 1


def test_a_peer_gone_is_forgotten() -> None:
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    _publish(pacing, clock, {"a": True}, a=None)
    pacing.forget("a")
    assert pacing.slow == set()
    assert pacing.plan({"a": True}) == (["a"], PUBLISH_WAIT)


def test_a_wait_is_on_time_for_as_long_as_the_message_takes_at_the_floor_rate() -> None:
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    on_time = LATE_WAIT * PUBLISH_WAIT
    assert pacing.on_time(0) == pacing.on_time(1_000) == on_time
    assert pacing.on_time(int(MIN_DRAIN_RATE * on_time)) == on_time  # 32 KiB
    assert pacing.on_time(100_000) == 100_000 / MIN_DRAIN_RATE  # 0.76 s
    assert pacing.on_time(800_000) == pacing.on_time(10**7) == PUBLISH_WAIT
    assert pacing.plan({"s": True}, 100_000) == (["s"], PUBLISH_WAIT)


def test_a_subscriber_taking_large_messages_steadily_stays_paced() -> None:
    # review25 M1: a wait judged by its seconds alone (late past a quarter of a second)
    # made a subscriber taking 100 KB messages over 300 KB/s (0.33 s each), or 800 KB
    # over 2 MB/s (0.4 s), slow after 3 publishes; a burst's tail was dropped past its
    # send queue, and lost for good past the origin's log. At MIN_DRAIN_RATE or more,
    # its waits are on time, however many.
    for size, seconds in ((100_000, 0.33), (800_000, 0.4), (100_000, 0.75)):
        clock = FakeClock()
        pacing: PublishPacing[str] = PublishPacing(clock=clock)
        for _ in range(200):
            peers, _ = _publish(pacing, clock, {"s": True}, size, s=seconds)
            assert peers == ["s"], f"{size} bytes in {seconds} s: not waited for at {clock()}"
        assert pacing.slow == set()


def test_a_peer_taking_a_message_below_the_floor_rate_is_late() -> None:
    # 100 KB in 0.9 s (111 KB/s, under 128 KiB/s): late, slow after two such waits.
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    peers = [_publish(pacing, clock, {"x": True}, 100_000, x=0.9)[0] for _ in range(5)]
    assert peers == [["x"], ["x"], [], [], []]
    assert pacing.slow == {"x"}


def test_a_peer_draining_just_in_time_for_small_messages_is_still_slow() -> None:
    # attacker27 F7 with the message size the node sends (chat messages of about 1 KB,
    # the peer's own buffer filled by the answers it asked for): the size of the message,
    # not of the peer's backlog, sets how long a wait is on time, so its 0.8 s waits are
    # late as before and it is slow after two.
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    waits = 0
    for _ in range(50):
        peers, _ = _publish(pacing, clock, {"x": True}, 1_000, x=0.8)
        waits += bool(peers)
        clock.advance(0.2)
    assert waits == 2 and pacing.slow == {"x"}


def test_sybils_spending_the_share_do_not_switch_off_backpressure_for_others() -> None:
    # review25 M2: three Sybil subscribers taking turns, each draining after 0.95 s and
    # keeping up while slow so that it is waited for again after KEEP_UP, spent the
    # node's share of each window; for the rest of it no one was waited for, and an
    # honest subscriber (2 MB/s, 100 KB messages: 0.05 s) lost the end of a burst.
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    sybils = ["a0", "a1", "a2"]
    unpaced, late = 0, 0.0
    on_time = pacing.on_time(100_000)  # 0.76 s
    for _ in range(3000):
        clock.advance(0.001)
        active = next((a for a in sybils if a not in pacing.slow), None)
        behind = {"s": True, **{a: a == active for a in sybils}}
        took = {"s": 0.05, **dict.fromkeys(sybils, 0.95)}
        start = clock()
        peers, _ = _publish(pacing, clock, behind, 100_000, **took)
        unpaced += "s" not in peers
        late += held if (held := clock() - start) > on_time + 1e-9 else 0.0
    assert unpaced == 0
    # The waits past on time: the node's share of each window and one wait at most (the
    # rest, on time, as an honest subscriber at the floor rate holds each publish).
    windows = math.ceil(clock() / WAIT_WINDOW)
    assert WAIT_WINDOW <= late <= windows * (NODE_WAIT_SHARE * WAIT_WINDOW + PUBLISH_WAIT)


def test_a_peer_has_drained_for_a_publish_once_it_took_the_messages_size() -> None:
    # Found measuring: the kernel takes from a paused write buffer only once a third of
    # its own send buffer (up to 4 MB) is free: a subscriber reading 300 KB/s steadily
    # kept its buffer over the mark for 4.5 s, every wait ran to its end, and it was slow
    # at the first. Taking the message's size ends its wait for this publish.
    pacing: PublishPacing[str] = PublishPacing(clock=FakeClock())
    pacing.plan({"s": True}, 100_000)
    assert not pacing.has_taken(99_999)
    assert pacing.has_taken(100_000)
    pacing.plan({"s": True})  # (no size: only its buffer under the mark will do)
    assert not pacing.has_taken(10**9)
    # A small message: MIN_TAKE at least, or a burst of them would push hundreds into a
    # buffer the kernel takes from in steps of 1.3 MB (the send queue takes 256).
    pacing.plan({"s": True}, 1_000)
    assert not pacing.has_taken(MIN_TAKE - 1)
    assert pacing.has_taken(MIN_TAKE)
