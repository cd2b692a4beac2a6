"""Two processes of one peer id (``trustp2p.protocol.copies``), on a fake clock: a
restart is said once, two nodes sharing an identity at WARNING, and only on proof."""

from __future__ import annotations

from trustp2p.protocol.copies import GRACE, IdentityCopies, Meeting

from ..conftest import FakeClock

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
PEER = "peer"


def test_one_process_crossing_its_own_dial_is_nothing() -> None:
    copies = IdentityCopies(FakeClock())
    assert copies.met(PEER, A, A, 0.0) is None


def test_a_restart_whose_old_connection_lingers_is_said_once_and_never_called_a_copy() -> None:
    """The new process redials while the dead one's connection stays silent, open."""
    clock = FakeClock()
    copies = IdentityCopies(clock)
    heard = clock.now - 5
    assert copies.met(PEER, A, B, heard) is Meeting.SECOND
    for _ in range(5):
        clock.advance(3)
        assert copies.met(PEER, A, B, heard) is Meeting.REPEATED


def test_the_first_process_connecting_again_proves_a_copy() -> None:
    """The copy displaced the original's link; the original comes back (a new user's
    test: a copied data directory)."""
    clock = FakeClock()
    copies = IdentityCopies(clock)
    assert copies.met(PEER, A, B, clock.now) is Meeting.SECOND
    clock.advance(1)
    assert copies.met(PEER, B, A, clock.now) is Meeting.COPIED
    # Said once per window; the swaps that follow are repeats.
    clock.advance(1)
    assert copies.met(PEER, A, B, clock.now) is Meeting.REPEATED
    clock.advance(600)
    assert copies.met(PEER, B, A, clock.now) is Meeting.COPIED


def test_the_first_process_heard_from_after_the_second_came_proves_a_copy() -> None:
    """The original's link stayed (the copy's dials are refused), and it still talks."""
    clock = FakeClock()
    copies = IdentityCopies(clock)
    met_at = clock.now
    assert copies.met(PEER, A, B, met_at - 1) is Meeting.SECOND
    clock.advance(5)
    # What arrived within GRACE of the meeting may have been on its way: no proof.
    assert copies.met(PEER, A, B, met_at + GRACE) is Meeting.REPEATED
    assert copies.met(PEER, A, B, met_at + GRACE + 0.5) is Meeting.COPIED


def test_the_first_process_answering_a_ping_sent_after_the_second_came_proves_a_copy() -> None:
    """tester39 F9: the node probes the first process's link when the second comes;
    its pong proves it alive at once (the pong comes within GRACE: "heard" is no
    proof). A pong to a ping sent before the meeting proves nothing."""
    clock = FakeClock()
    copies = IdentityCopies(clock)
    met_at = clock.now
    assert copies.met(PEER, A, B, met_at - 5, met_at - 3) is Meeting.SECOND
    clock.advance(3)
    assert copies.met(PEER, A, B, met_at + 0.1, met_at - 3) is Meeting.REPEATED
    assert not copies.proven(PEER)
    assert copies.met(PEER, A, B, met_at + 0.1, met_at) is Meeting.COPIED
    assert copies.proven(PEER)


def test_a_third_process_starts_over_and_old_meetings_are_forgotten() -> None:
    clock = FakeClock()
    copies = IdentityCopies(clock, window=60)
    assert copies.met(PEER, A, B, clock.now) is Meeting.SECOND
    assert copies.met(PEER, B, C, clock.now) is Meeting.SECOND  # B restarted as C
    assert copies.met(PEER, C, B, clock.now) is Meeting.COPIED
    clock.advance(61)
    assert copies.met(PEER, B, C, clock.now) is Meeting.SECOND


def test_peers_remembered_are_bounded_oldest_first() -> None:
    clock = FakeClock()
    copies = IdentityCopies(clock, max_peers=2)
    for peer in ("p1", "p2", "p3"):
        assert copies.met(peer, A, B, clock.now) is Meeting.SECOND
    assert copies.met("p1", B, A, clock.now) is Meeting.SECOND  # let go
    assert copies.met("p3", B, A, clock.now) is Meeting.COPIED
