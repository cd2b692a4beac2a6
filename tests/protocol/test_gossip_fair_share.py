"""The node-wide budget of live gossip messages, shared fairly among peers
(:class:`~trustp2p.protocol.gossip.FairShare`), on a fake clock."""

from __future__ import annotations

import pytest

from trustp2p.protocol.gossip import FairShare


def spend(share: FairShare, peer: str, count: int, now: float) -> list[float]:
    return [share.spend(peer, now) for _ in range(count)]


def test_within_the_rate_nobody_waits() -> None:
    share = FairShare(100)
    assert spend(share, "a", 60, 0.0) == [0.0] * 60
    assert spend(share, "b", 40, 0.5) == [0.0] * 40


def test_past_the_rate_a_peer_over_its_share_waits_for_the_next_window() -> None:
    share = FairShare(100)
    assert spend(share, "a", 100, 0.0) == [0.0] * 100
    assert share.spend("a", 0.25) == pytest.approx(0.75)  # the window ends at 1.0
    assert share.spend("a", 1.0) == 0.0  # a new window


def test_a_peer_within_its_share_never_waits() -> None:
    # Two flooders and a peer that sends a little: the flooders wait, it never does.
    share = FairShare(100)
    assert spend(share, "light", 1, 0.0) == [0.0]
    waits = spend(share, "flood1", 60, 0.1) + spend(share, "flood2", 60, 0.2)
    assert waits.count(0.0) == 99  # the node's 100, less light's one
    assert all(wait > 0 for wait in waits[99:])
    assert spend(share, "light", 30, 0.3) == [0.0] * 30  # 31 <= 100 / 3


def test_shares_are_even_among_the_peers_of_the_window() -> None:
    share = FairShare(90)
    spend(share, "a", 90, 0.0)  # the whole rate, alone: nobody else sent
    assert share.spend("b", 0.1) == 0.0  # 1 <= 90 / 2
    assert share.spend("a", 0.1) > 0  # 91 > 45
    assert spend(share, "b", 44, 0.2) == [0.0] * 44  # 45: its share, no more
    assert share.spend("b", 0.2) > 0


def test_windows_follow_each_other_and_restart_after_a_quiet_spell() -> None:
    share = FairShare(10, window=2.0)  # 20 a window
    spend(share, "a", 20, 0.5)  # the window is [0.5, 2.5)
    assert share.spend("a", 2.0) == pytest.approx(0.5)
    spend(share, "a", 20, 2.5)  # [2.5, 4.5)
    assert share.spend("a", 4.0) == pytest.approx(0.5)
    spend(share, "a", 20, 9.0)  # after a quiet spell: [9.0, 11.0)
    assert share.spend("a", 10.0) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "window"), [(0, 1.0), (-1, 1.0), (10, 0.0)])
def test_rate_and_window_must_be_positive(rate: float, window: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        FairShare(rate, window)


def test_never_past_twice_the_rate_whatever_the_shares() -> None:
    # Found in review: a flooder's messages still arriving (it is throttled, they
    # count) and identities each within an even share took a node to about twice the
    # rate; past twice it, every peer waits.
    share = FairShare(100)
    spend(share, "flood", 150, 0.0)  # 50 over: it waits, what was in flight counts
    waits = [share.spend(f"light{n}", 0.1) for _ in range(9) for n in range(10)]
    assert waits[:50] == [0.0] * 50  # 9 each is within 100 / 11
    assert all(wait > 0 for wait in waits[50:])  # past 200 in the window


def test_an_amount_spends_its_size() -> None:
    # Bytes of catch-up answers: an answer spends its size of the node's rate.
    share = FairShare(1000)
    assert share.spend("a", 0.0, 600) == 0.0
    assert share.spend("b", 0.0, 400) == 0.0  # the rate, no more
    assert share.spend("a", 0.5, 100) == pytest.approx(0.5)  # 700 > 1,000 / 2
    assert share.spend("b", 0.5, 100) == 0.0  # 500: its share
    assert share.spend("b", 0.5, 1) > 0


def test_wait_says_what_spend_would_and_spends_nothing() -> None:
    share = FairShare(100)
    assert share.wait("a", 0.0) == 0.0  # no window yet
    share.spend("a", 0.0, 150)
    assert share.wait("a", 0.25) == pytest.approx(0.75)
    assert share.wait("a", 0.25) == pytest.approx(0.75)  # (nothing spent)
    assert share.wait("b", 0.25) == 0.0  # nothing spent: within its share
    assert share.wait("a", 1.0) == 0.0  # the window is over


def test_uncapped_a_peer_within_its_share_never_waits() -> None:
    # Catch-up answers: identities each taking one answer kept every window past twice
    # the rate, and a capped share refused every honest asker (found in review).
    share = FairShare(100, capped=False)
    for n in range(30):
        share.spend(f"x{n}", 0.0, 10)  # 300: three times the rate, each within 100 / 30
    assert share.wait("honest", 0.1) == 0.0
    assert share.spend("x0", 0.1, 10) > 0  # 20 > 100 / 31: over its share
    assert FairShare(100).spend("y", 0.0, 300) > 0  # (capped, as for live messages)


def test_peers_of_one_group_share_one_groups_share() -> None:
    """Catch-up answers, shared by address first (an attacker's test: 40 throwaway
    identities on 5 addresses cut an honest newcomer's share to 1/41, its catch-up
    16 times slower): each address gets an even share, its identities split it."""
    share = FairShare(120, capped=False)
    for address in range(5):
        for n in range(8):  # max_per_ip identities an address
            share.spend(f"sybil{address}-{n}", 0.0, 10, group=f"10.6{address}.0.2")
    # 400 spent, three times the rate: each sybil over its part of its address's 20.
    assert share.wait("sybil0-0", 0.1) > 0
    # The honest asker, alone at its address, has a sixth: 20, not 120 / 41.
    assert [share.spend("honest", 0.1, 4, group="192.0.2.1") for _ in range(5)] == [0.0] * 5
    assert share.spend("honest", 0.1, 4, group="192.0.2.1") > 0  # 24 > 20
    # Without a group, a peer is a group of its own, as before.
    assert share.wait("alone", 0.1) == 0.0


def test_a_new_peer_of_a_group_over_its_share_waits_too() -> None:
    """review36: an id of an address over its share was answered once a window, since
    its group was known only once it had spent: throwaway ids, one answer each."""
    share = FairShare(100, capped=False)
    share.spend("honest", 0.0, 10, group="192.0.2.9")
    for n in range(4):
        share.spend(f"sybil{n}", 0.0, 50, group="10.0.0.1")  # 200: its group's 50 is spent
    assert share.wait("sybil-new", 0.1, group="10.0.0.1") > 0
    assert share.wait("honest", 0.1, group="192.0.2.9") == 0.0
    assert share.wait("elsewhere", 0.1, group="10.9.0.1") == 0.0  # a group of its own
