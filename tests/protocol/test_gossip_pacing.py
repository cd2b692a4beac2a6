"""
Whom ``publish()`` waits for, without sockets (``trustp2p.protocol.gossip.pacing``):
peers behind are waited for, a second at most; a peer that holds publishing is slow until
it has kept up for a while; all peers together hold it half of the time at most. Driven
by a fake clock.
"""

from __future__ import annotations

from trustp2p.protocol.gossip import PublishPacing
from trustp2p.protocol.gossip.pacing import KEEP_UP, LATE_WAIT, PUBLISH_WAIT, WAIT_WINDOW

from ..conftest import FakeClock


def _publish(
    pacing: PublishPacing[str], clock: FakeClock, behind: dict[str, bool], **took: float | None
) -> tuple[list[str], float]:
    """One publish: plan, then wait as the peers named in ``took`` drain (None: they
    don't), the clock moving by the longest wait."""
    peers, timeout = pacing.plan(behind)
    if peers:
        times = {peer: took.get(peer, 0.0) for peer in peers}
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
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock)
    peers = {f"p{i}": True for i in range(100)}
    start, waited = clock(), 0.0
    while clock() - start < 10 * WAIT_WINDOW:
        behind = {p: b for p, b in peers.items() if p not in pacing.slow}
        named, timeout = pacing.plan(behind)
        if named:  # one of them drains after 0.6 s each time, the others at once
            took = dict.fromkeys(named, 0.0)
            took[named[0]] = min(0.6, timeout)
            clock.advance(took[named[0]])
            waited += took[named[0]]
            pacing.waited(took, took[named[0]])
        clock.advance(0.1)  # the publish itself
    assert waited <= 10 * WAIT_WINDOW * pacing.share + PUBLISH_WAIT
    assert waited >= WAIT_WINDOW  # (they were waited for)


def test_a_wait_cut_short_by_the_nodes_share_makes_no_peer_slow() -> None:
    clock = FakeClock()
    pacing: PublishPacing[str] = PublishPacing(clock=clock, share=0.07)  # 0.7 s a window
    _publish(pacing, clock, {"a": True}, a=0.6)  # late: it counts
    peers, timeout = pacing.plan({"b": True})
    assert peers == ["b"] and abs(timeout - 0.1) < 1e-9
    pacing.waited({"b": None}, timeout)
    assert pacing.slow == set()
    assert pacing.plan({"b": True}) == ([], 0.0)  # the share is spent
    clock.advance(WAIT_WINDOW)
    peers, timeout = pacing.plan({"b": True})
    assert peers == ["b"] and abs(timeout - 0.7) < 1e-9


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
