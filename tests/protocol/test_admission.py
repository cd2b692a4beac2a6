"""Admission, the duplicate-connection rule and block scope, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from trustp2p.protocol.admission import (
    MAX_CANDIDATES,
    PROTECTED_SHARE,
    ROOM_HOLD,
    Admission,
    Admitted,
    BlockScope,
    Refusal,
    block_scope,
    keep_new_connection,
)
from trustp2p.protocol.close import CloseCode
from trustp2p.protocol.limits import SITE_SHARE, AddressLimiter, ReconnectStorms, netgroup
from trustp2p.protocol.refusal_notices import NOTICE_BURST, NOTICE_INTERVAL, RefusalNotices

from ..conftest import FakeClock


def admission(
    *,
    max_inbound: int | None = 3,
    blocked: frozenset[str] = frozenset(),
    handshake_timeout: float | None = None,
    probe_after: float | None = None,
    **limits: object,
) -> Admission:
    limiter = AddressLimiter(exempt_loopback=False, **limits)  # type: ignore[arg-type]
    return Admission(
        max_inbound=max_inbound,
        limiter=limiter,
        is_blocked=blocked.__contains__,
        handshake_timeout=handshake_timeout,
        probe_after=probe_after,
    )


def test_blocked_address_is_refused_quietly(clock: FakeClock) -> None:
    rules = admission(blocked=frozenset({"10.0.0.1"}))
    assert rules.admit(1, "10.0.0.1", clock()) == Refusal(
        CloseCode.POLICY_VIOLATION, "blocked", warn=False
    )
    assert len(rules) == 0


def test_max_inbound_then_release_frees_a_slot(clock: FakeClock) -> None:
    rules = admission(max_inbound=2)
    assert rules.admit(1, "10.0.0.1", clock()) == Admitted()
    assert rules.admit(2, "10.0.0.2", clock()) == Admitted()
    rules.finish(1, clock())
    rules.finish(2, clock())
    refusal = rules.admit(3, "10.0.0.3", clock())
    assert refusal == Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)
    rules.release(1)
    rules.release(1)  # twice is harmless
    assert len(rules) == 1
    assert rules.admit(3, "10.0.0.3", clock()) == Admitted()


def test_per_address_concurrency(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, max_concurrent=1)
    assert rules.admit(1, "10.0.0.1", clock()) == Admitted()
    refusal = rules.admit(2, "10.0.0.1", clock())
    assert refusal is not None and refusal.reason == (
        "too many connections from your address (limit 1)"
    )
    assert rules.admit(3, "10.0.0.2", clock()) == Admitted()
    rules.release(1)
    assert rules.admit(4, "10.0.0.1", clock()) == Admitted()


def test_per_address_rate_refills_with_time(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, max_concurrent=None, rate=1.0, burst=2)
    assert rules.admit(1, "10.0.0.1", clock()) == Admitted()
    assert rules.admit(2, "10.0.0.1", clock()) == Admitted()
    refusal = rules.admit(3, "10.0.0.1", clock())
    assert refusal is not None and refusal.reason == "connecting too often (limit 1/s, burst 2)"
    clock.advance(1.0)
    assert rules.admit(4, "10.0.0.1", clock()) == Admitted()


def test_release_of_a_refused_connection_changes_nothing(clock: FakeClock) -> None:
    rules = admission(max_inbound=1)
    assert rules.admit(1, "10.0.0.1", clock()) == Admitted()
    rules.finish(1, clock())
    assert rules.admit(2, "10.0.0.2", clock()) is not None
    rules.release(2)
    assert len(rules) == 1


def test_a_connection_counts_from_admission_until_release(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, max_concurrent=2)
    assert rules.admit(1, "10.0.0.1", clock()) == Admitted()  # at accept: no handshake yet
    assert (len(rules), rules.handshaking, rules.open_from("10.0.0.1")) == (1, 1, 1)
    assert not rules.finished(1)
    rules.finish(1, clock())
    assert (len(rules), rules.handshaking, rules.finished(1)) == (1, 0, True)
    rules.release(1)
    assert (len(rules), rules.open_from("10.0.0.1"), rules.finished(1)) == (0, 0, False)


def test_full_slots_evict_the_oldest_unfinished_handshake(clock: FakeClock) -> None:
    rules = admission(max_inbound=3)
    for conn_id in (1, 2, 3):
        assert rules.admit(conn_id, f"10.0.0.{conn_id}", clock()) == Admitted()
        clock.advance(1.0)
    rules.finish(1, clock())  # finished: never evicted
    assert rules.admit(4, "10.0.0.4", clock()) == Admitted(evicted=2)
    assert rules.admit(5, "10.0.0.5", clock()) == Admitted(evicted=3)
    assert len(rules) == 3 and rules.open_from("10.0.0.2") == 0
    rules.release(2)  # the evicted one closing later changes nothing
    assert len(rules) == 3
    assert rules.admit(6, "10.0.0.6", clock()) == Admitted(evicted=4)
    rules.finish(5, clock())
    rules.finish(6, clock())
    refusal = rules.admit(7, "10.0.0.7", clock())
    assert refusal == Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)


def test_a_handshake_that_progressed_makes_room_after_those_that_did_not(
    clock: FakeClock,
) -> None:
    # Found by an attacker: 3,200 bare connects a second (sending nothing) dropped the
    # oldest handshakes, honest newcomers half way through theirs: 24 of 30 failed.
    rules = admission(max_inbound=4)
    for conn_id in (1, 2, 3, 4):
        assert rules.admit(conn_id, f"10.0.0.{conn_id}", clock()) == Admitted()
        clock.advance(1.0)
    rules.progressed(1)  # upgraded: the oldest, yet not the first to go
    rules.progressed(3)
    rules.progressed(99)  # not in its handshake: nothing
    assert rules.admit(5, "10.0.1.5", clock()) == Admitted(evicted=2)
    assert rules.admit(6, "10.0.1.6", clock()) == Admitted(evicted=4)
    assert rules.admit(7, "10.0.1.7", clock()) == Admitted(evicted=5)
    assert rules.admit(8, "10.0.1.8", clock()) == Admitted(evicted=6)
    rules.progressed(7)
    rules.progressed(8)
    # Every one progressed: the oldest, as ever; finishing forgets the mark.
    assert rules.admit(9, "10.0.1.9", clock()) == Admitted(evicted=1)
    rules.finish(3, clock())
    rules.progressed(3)  # finished: nothing
    assert rules.admit(10, "10.0.1.10", clock()) == Admitted(evicted=9)


def finished_from(rules: Admission, clock: FakeClock, hosts: dict[int, str]) -> None:
    for conn_id, host in hosts.items():
        assert rules.admit(conn_id, host, clock()) == Admitted()
        rules.finish(conn_id, clock())


def test_a_network_holding_the_most_finished_slots_makes_room_for_another(
    clock: FakeClock,
) -> None:
    rules = admission(max_inbound=4)
    # Three slots held from 10.0/16, one from 10.1/16; all handshakes finished.
    finished_from(rules, clock, {1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.3", 4: "10.1.0.1"})
    # One from a network without a slot: a candidate, above the limit, until it is
    # introduced; then the newest of the largest network goes.
    assert rules.admit(5, "10.2.0.1", clock()) == Admitted()
    assert (len(rules), rules.finished(3)) == (5, True)
    assert rules.finish(5, clock()) == Admitted(evicted=3, finished=True)
    assert (len(rules), rules.finished(3), rules.open_from("10.0.0.3")) == (4, False, 0)
    assert rules.admit(6, "10.3.0.1", clock()) == Admitted()
    assert rules.finish(6, clock()) == Admitted(evicted=2, finished=True)
    # One slot per network now: nobody is dropped for a fifth.
    refusal = rules.admit(7, "10.4.0.1", clock())
    assert refusal == Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)
    rules.release(3)  # the evicted ones closing later change nothing
    rules.release(2)
    assert len(rules) == 4


def test_a_swap_never_leaves_the_networks_less_even(clock: FakeClock) -> None:
    rules = admission(max_inbound=5)
    finished_from(
        rules, clock, {1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.3", 4: "10.1.0.1", 5: "10.1.0.2"}
    )
    # From the largest network itself, or one holding just one fewer: refused (a peer
    # of a crowded network can't push out its neighbour, to be pushed out in turn).
    assert isinstance(rules.admit(6, "10.0.0.9", clock()), Refusal)
    assert isinstance(rules.admit(7, "10.1.0.9", clock()), Refusal)
    assert rules.admit(8, "10.2.0.1", clock()) == Admitted()
    assert rules.finish(8, clock()) == Admitted(evicted=3, finished=True)


def test_of_networks_as_large_the_one_whose_newest_finished_last_gives_way(
    clock: FakeClock,
) -> None:
    rules = admission(max_inbound=4)
    for conn_id, host in ((1, "10.0.0.1"), (2, "10.1.0.1"), (3, "10.1.0.2"), (4, "10.0.0.2")):
        assert rules.admit(conn_id, host, clock()) == Admitted()
    for conn_id in (1, 2, 4, 3):  # 3 finishes last
        rules.finish(conn_id, clock())
    assert rules.admit(5, "10.2.0.1", clock()) == Admitted()
    assert rules.finish(5, clock()) == Admitted(evicted=3, finished=True)


def test_the_longest_connected_are_never_dropped_for_a_candidate(clock: FakeClock) -> None:
    rules = admission(max_inbound=8)  # a quarter: the first 2 to finish are protected
    hosts = {1: "10.0.0.1", 2: "10.0.0.2"} | {n: f"10.{n - 2}.0.1" for n in range(3, 9)}
    finished_from(rules, clock, hosts)
    # 10.0/16 holds the most, but both its connections are the longest connected.
    assert isinstance(rules.admit(9, "10.20.0.1", clock()), Refusal)
    rules.release(8)
    finished_from(rules, clock, {10: "10.0.0.3"})
    assert rules.admit(11, "10.20.0.1", clock()) == Admitted()
    assert rules.finish(11, clock()) == Admitted(evicted=10, finished=True)


def test_a_connection_that_never_finishes_its_handshake_drops_no_finished_one(
    clock: FakeClock,
) -> None:
    rules = admission(max_inbound=3, handshake_timeout=10.0)
    finished_from(rules, clock, {1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.3"})
    # Bare connects from other networks: candidates, four at most, the oldest giving
    # way to a fifth; they time out; every finished connection stays.
    for conn_id in range(10, 14):
        assert rules.admit(conn_id, f"203.{conn_id}.0.66", clock()) == Admitted()
    assert rules.admit(14, "203.14.0.66", clock()) == Admitted(evicted=10)
    assert len(rules) == 3 + MAX_CANDIDATES
    clock.advance(10.0)
    assert rules.expired(clock()) == [11, 12, 13, 14]
    for conn_id in range(11, 15):
        rules.release(conn_id)
    assert len(rules) == 3 and all(rules.finished(conn_id) for conn_id in (1, 2, 3))


def test_one_candidate_a_network_group(clock: FakeClock) -> None:
    rules = admission(max_inbound=4, rate=1e9, burst=10**9)
    finished_from(rules, clock, {n: f"10.0.0.{n}" for n in range(1, 5)})
    assert rules.admit(5, "198.51.0.1", clock()) == Admitted()  # an honest candidate
    # Bare connects from one other network replace each other, never the honest one.
    assert rules.admit(6, "203.0.113.66", clock()) == Admitted()
    for conn_id in range(7, 12):
        assert rules.admit(conn_id, "203.0.113.66", clock()) == Admitted(evicted=conn_id - 1)
    assert rules.finish(5, clock()) == Admitted(evicted=4, finished=True)
    # From the honest one's own network (once it may make room again), a newer
    # candidate takes the place of the one before it.
    rules.release(11)
    clock.advance(ROOM_HOLD)
    assert rules.admit(12, "198.51.0.2", clock()) == Admitted()
    assert rules.admit(13, "198.51.0.3", clock()) == Admitted(evicted=12)


def test_a_network_that_made_room_and_left_makes_none_for_a_while(clock: FakeClock) -> None:
    rules = admission(max_inbound=4, rate=1e9, burst=10**9)
    crowd = {n: f"10.0.0.{n}" for n in range(1, 5)}
    finished_from(rules, clock, crowd)
    # Connect, finish, leave: one peer of the crowded network closed, and its slot
    # taken back by the crowd.
    assert rules.admit(5, "203.0.113.9", clock()) == Admitted()
    assert rules.finish(5, clock()) == Admitted(evicted=4, finished=True)
    rules.release(5, clock())
    finished_from(rules, clock, {6: "10.0.0.4"})
    # Again, from the same network: refused for ROOM_HOLD, nobody closed.
    refusal = rules.admit(7, "203.0.113.9", clock())
    assert isinstance(refusal, Refusal) and refusal.code == CloseCode.TRY_AGAIN_LATER
    assert isinstance(rules.admit(8, "203.0.200.1", clock()), Refusal)  # its /16
    assert rules.admit(9, "198.51.0.1", clock()) == Admitted()  # another network may
    rules.release(9)
    clock.advance(ROOM_HOLD)
    assert rules.admit(10, "203.0.113.9", clock()) == Admitted()
    assert rules.finish(10, clock()) == Admitted(evicted=6, finished=True)


def test_a_network_that_made_room_makes_none_for_a_while_though_it_stays(
    clock: FakeClock,
) -> None:
    # Found in review: barred only once its room-makers closed, one IPv4 address made
    # room 8 times (within the +2 rule) before leaving: 8 honest peers closed each
    # ROOM_HOLD, where one was claimed.
    rules = admission(max_inbound=4, rate=1e9, burst=10**9)
    finished_from(rules, clock, {n: f"10.0.0.{n}" for n in range(1, 5)})
    assert rules.admit(5, "203.0.113.9", clock()) == Admitted()
    assert rules.finish(5, clock()) == Admitted(evicted=4, finished=True)
    # It stays; the same address again: refused, nobody closed.
    refusal = rules.admit(6, "203.0.113.9", clock())
    assert isinstance(refusal, Refusal) and refusal.code == CloseCode.TRY_AGAIN_LATER
    clock.advance(ROOM_HOLD)
    assert rules.admit(7, "203.0.113.9", clock()) == Admitted()
    assert rules.finish(7, clock()) == Admitted(evicted=3, finished=True)


def test_a_peer_dropped_by_the_rules_renews_no_bar(clock: FakeClock) -> None:
    rules = admission(max_inbound=4, rate=1e9, burst=10**9)
    finished_from(rules, clock, {n: f"10.0.0.{n}" for n in range(1, 5)})
    assert rules.admit(5, "203.0.113.9", clock()) == Admitted()
    assert rules.finish(5, clock()) == Admitted(evicted=4, finished=True)
    clock.advance(ROOM_HOLD / 2)
    rules.release(5)  # dropped by the rules, not its leaving: the bar stays as it was
    finished_from(rules, clock, {6: "10.0.0.4"})
    assert isinstance(rules.admit(7, "203.0.113.9", clock()), Refusal)
    clock.advance(ROOM_HOLD / 2)
    assert rules.admit(8, "203.0.113.9", clock()) == Admitted()


def test_a_freed_slot_taken_by_a_bare_connect_gives_way_first(clock: FakeClock) -> None:
    rules = admission(max_inbound=4)
    finished_from(rules, clock, {n: f"10.0.0.{n}" for n in range(1, 5)})
    assert rules.admit(5, "198.51.0.1", clock()) == Admitted()  # a candidate
    rules.release(2, clock())  # a peer leaves; a bare connect takes its slot
    assert rules.admit(6, "203.0.113.9", clock()) == Admitted()
    assert rules.finish(5, clock()) == Admitted(evicted=6)  # not a finished peer
    assert all(rules.finished(conn_id) for conn_id in (1, 3, 4, 5))


def test_the_first_to_finish_stay_when_the_newer_left(clock: FakeClock) -> None:
    rules = admission(max_inbound=12)  # the first 3 to finish are protected
    finished_from(rules, clock, {n: f"10.0.0.{n}" for n in range(1, 5)})
    finished_from(rules, clock, {n: f"10.{n}.0.1" for n in range(5, 13)})
    assert rules.admit(13, "198.51.0.1", clock()) == Admitted()  # a candidate
    for conn_id in range(3, 13):  # the newer leave; bare connects take their slots
        rules.release(conn_id, clock())
        assert rules.admit(conn_id + 20, f"10.{conn_id}.0.2", clock()) == Admitted()
    assert rules.finish(13, clock()) == Admitted(evicted=23)
    assert rules.finished(1) and rules.finished(2)


def test_a_candidate_is_judged_again_when_introduced(clock: FakeClock) -> None:
    rules = admission(max_inbound=3)
    finished_from(rules, clock, {1: "10.0.0.1", 2: "10.0.0.2", 3: "10.1.0.1"})
    assert rules.admit(4, "10.2.0.1", clock()) == Admitted()
    assert rules.admit(5, "10.3.0.1", clock()) == Admitted()
    assert rules.finish(4, clock()) == Admitted(evicted=2, finished=True)  # one slot a network now
    refusal = rules.finish(5, clock())
    assert refusal == Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)
    assert len(rules) == 3 and not rules.finished(5) and rules.open_from("10.3.0.1") == 0
    # A slot freed meanwhile: a candidate takes it, and nobody is dropped.
    assert rules.admit(6, "10.4.0.1", clock()) is not None
    rules.release(3)
    assert rules.admit(7, "10.4.0.2", clock()) == Admitted()  # a slot: not a candidate
    assert rules.finish(7, clock()) is None


def test_a_proxied_candidate_is_judged_by_its_real_address(clock: FakeClock) -> None:
    rules = admission(max_inbound=3)  # loopback not exempt (limit_loopback)
    finished_from(rules, clock, {1: "198.51.0.1", 2: "198.51.0.2", 3: "10.9.0.1"})
    assert rules.admit(4, "127.0.0.1", clock()) == Admitted()  # the proxy's address
    assert rules.readdress(4, "198.51.0.3", clock()) is None
    assert isinstance(rules.finish(4, clock()), Refusal)  # from the crowded network, after all
    assert rules.admit(5, "127.0.0.1", clock()) == Admitted()
    assert rules.readdress(5, "203.0.113.9", clock()) is None
    assert rules.finish(5, clock()) == Admitted(evicted=2, finished=True)


def test_behind_a_loopback_proxy_a_candidate_is_judged_by_its_real_address(
    clock: FakeClock,
) -> None:
    rules = Admission(
        max_inbound=4,
        limiter=AddressLimiter(exempt_loopback=True),  # the default: loopback exempt
        is_blocked=frozenset[str]().__contains__,
    )
    hosts = {1: "198.51.0.1", 2: "198.51.0.2", 3: "198.51.0.3", 4: "10.9.0.1"}
    finished_from(rules, clock, hosts)
    assert rules.admit(5, "127.0.0.1", clock()) == Admitted()  # the proxy: a candidate
    assert rules.readdress(5, "203.0.113.9", clock()) is None  # X-Real-IP
    assert rules.finish(5, clock()) == Admitted(evicted=3, finished=True)
    assert rules.admit(6, "127.0.0.1", clock()) == Admitted()
    assert isinstance(rules.finish(6, clock()), Refusal)  # a local peer after all: no slot
    assert len(rules) == 4


def behind_a_proxy(clock: FakeClock) -> Admission:
    """Rules with loopback exempt (a proxy's address), 4 slots taken by one network."""
    rules = Admission(
        max_inbound=4,
        limiter=AddressLimiter(exempt_loopback=True, rate=1e9, burst=10**9),
        is_blocked=frozenset[str]().__contains__,
    )
    finished_from(rules, clock, {n: f"198.51.0.{n}" for n in range(1, 5)})
    return rules


def test_behind_a_loopback_proxy_one_candidate_a_network_and_none_barred(
    clock: FakeClock,
) -> None:
    # Found in review: behind a proxy, candidates were keyed by connection, not by the
    # network the proxy names: one address pushed out an honest candidate with four
    # upgrades, and a network barred from making room was let in as a candidate.
    rules = behind_a_proxy(clock)
    assert rules.admit(5, "127.0.0.1", clock()) == Admitted()
    assert rules.readdress(5, "10.1.0.1", clock()) is None  # an honest candidate
    for conn_id in (6, 7):  # more from one other network: one candidate, no more
        assert rules.admit(conn_id, "127.0.0.1", clock()) == Admitted()
    assert rules.readdress(6, "203.0.113.9", clock()) is None
    refusal = rules.readdress(7, "203.0.113.9", clock())
    assert refusal == Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)
    rules.release(7, clock())
    assert rules.finish(6, clock()) == Admitted(evicted=4, finished=True)  # makes room
    assert rules.admit(8, "127.0.0.1", clock()) == Admitted()
    assert isinstance(rules.readdress(8, "203.0.113.10", clock()), Refusal)  # barred
    rules.release(8, clock())
    assert rules.finish(5, clock()) == Admitted(evicted=3, finished=True)  # still there


def test_behind_a_proxy_no_upgrade_pushes_out_a_readdressed_candidate(clock: FakeClock) -> None:
    # Found in review: refused candidates still closing kept their places, and upgrades
    # that had not named their address yet pushed out the oldest: an honest one.
    rules = behind_a_proxy(clock)
    assert rules.admit(10, "127.0.0.1", clock()) == Admitted()
    assert rules.readdress(10, "10.1.0.1", clock()) is None  # an honest candidate
    assert rules.admit(11, "127.0.0.1", clock()) == Admitted()
    assert rules.readdress(11, "203.0.113.9", clock()) is None
    for conn_id in (12, 13):  # refused, and still closing (not released)
        assert rules.admit(conn_id, "127.0.0.1", clock()) == Admitted()
        assert isinstance(rules.readdress(conn_id, "203.0.113.9", clock()), Refusal)
    # Upgrades not named yet: the places left, then only one another's.
    assert rules.admit(14, "127.0.0.1", clock()) == Admitted()
    assert rules.admit(15, "127.0.0.1", clock()) == Admitted()
    assert rules.admit(16, "127.0.0.1", clock()) == Admitted(evicted=14)
    rules.release(16, clock())
    rules.release(15, clock())
    assert rules.finish(10, clock()) == Admitted(evicted=4, finished=True)


def test_unfinished_handshakes_make_room_before_finished_connections(clock: FakeClock) -> None:
    rules = admission(max_inbound=3)
    finished_from(rules, clock, {1: "10.0.0.1", 2: "10.0.0.2"})
    assert rules.admit(3, "10.0.0.3", clock()) == Admitted()  # still in its handshake
    assert rules.admit(4, "10.2.0.1", clock()) == Admitted(evicted=3)
    assert rules.finish(4, clock()) is None  # it took 3's slot
    assert rules.admit(5, "10.3.0.1", clock()) == Admitted()
    assert rules.finish(5, clock()) == Admitted(evicted=2, finished=True)


def test_loopback_is_neither_grouped_nor_evicted_while_exempt(clock: FakeClock) -> None:
    rules = Admission(
        max_inbound=3,
        limiter=AddressLimiter(exempt_loopback=True),
        is_blocked=frozenset[str]().__contains__,
    )
    finished_from(rules, clock, {1: "127.0.0.1", 2: "127.0.0.1", 3: "10.0.0.1"})
    assert isinstance(rules.admit(4, "10.1.0.1", clock()), Refusal)  # no group of 2
    rules.release(3)
    finished_from(rules, clock, {5: "10.0.0.1"})
    # Nor a candidate while no group could give up a slot.
    assert isinstance(rules.admit(6, "127.0.0.1", clock()), Refusal)
    limited = admission(max_inbound=2)
    finished_from(limited, clock, {1: "127.0.0.1", 2: "127.0.0.2"})
    assert limited.admit(3, "::1", clock()) == Admitted()
    assert limited.finish(3, clock()) == Admitted(evicted=2, finished=True)


def test_an_ipv6_address_counts_as_its_slash_64(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, max_concurrent=2, rate=1.0, burst=2)
    assert rules.admit(1, "2001:db8::1", clock()) == Admitted()
    assert rules.admit(2, "2001:db8::ffff:2", clock()) == Admitted()
    refusal = rules.admit(3, "2001:db8::3", clock())
    assert refusal is not None and refusal.reason == (
        "too many connections from your address (limit 2)"
    )
    assert rules.open_from("2001:db8::1234") == 2
    assert rules.admit(4, "2001:db8:0:1::1", clock()) == Admitted()  # another /64
    rules.release(1)
    refusal = rules.admit(5, "2001:db8::5", clock())  # the /64's burst of 2 is spent
    assert refusal is not None and refusal.reason.startswith("connecting too often")
    assert rules.admit(6, "::ffff:10.0.0.1", clock()) == Admitted()
    assert rules.open_from("10.0.0.1") == 1  # an IPv4-mapped address is the IPv4 one
    # Link-local addresses share their /64 with every link: each counts as itself.
    for conn_id, host in enumerate(("fe80::1%eth0", "fe80::1%eth1", "fe80::2%eth0"), 7):
        assert rules.admit(conn_id, host, clock()) == Admitted()
        clock.advance(1.0)
    assert rules.open_from("fe80::1%eth0") == 1


def test_the_slash_64s_of_one_slash_48_share_sixteen_addresses_worth(clock: FakeClock) -> None:
    """An attacker's test: 500 /64s of one /48 opened 1,560 connections a second, each
    within its /64's limits, and kept a core busy refusing them."""
    rules = admission(max_inbound=None, max_concurrent=8, rate=0.2, burst=2)
    hosts = [f"2001:db8:0:{n:x}::1" for n in range(1, 2 * SITE_SHARE + 2)]
    answers = [rules.admit(conn_id, host, clock()) for conn_id, host in enumerate(hosts)]
    assert answers[: 2 * SITE_SHARE] == [Admitted()] * (2 * SITE_SHARE)  # 16 x burst 2
    refusal = answers[-1]
    assert isinstance(refusal, Refusal) and refusal.reason == (
        "connecting too often from your /48 (limit 3.2/s, burst 32)"
    )
    assert rules.admit(100, "2001:db8:1::1", clock()) == Admitted()  # another /48
    assert rules.admit(101, "192.0.2.1", clock()) == Admitted()  # IPv4: itself
    clock.advance(1 / (0.2 * SITE_SHARE))  # the /48 earns one more
    assert rules.admit(102, "2001:db8:0:ffff::1", clock()) == Admitted()


def test_an_ipv6_storm_counts_against_the_slash_64(clock: FakeClock) -> None:
    rules = storm_rules()
    for conn_id in range(4):
        assert rules.admit(conn_id, f"2001:db8::{conn_id + 1}", clock()) == Admitted()
        rules.release(conn_id)
    refusal = rules.admit(4, "2001:db8::99", clock())
    assert refusal is not None and refusal.reason.startswith("reconnecting too often")


_HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.1.0.1", "10.1.0.2", "10.2.0.1", "127.0.0.1"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["admit", "finish", "release"]), st.integers(0, 15)),
        max_size=80,
    ),
    st.lists(st.sampled_from(_HOSTS), min_size=16, max_size=16),
    st.booleans(),
)
def test_eviction_keeps_its_books(
    steps: list[tuple[str, int]], hosts: list[str], exempt: bool
) -> None:
    """Whatever the order of admissions, handshakes and closes: at most max_inbound
    finished connections, and MAX_CANDIDATES more in their handshake, one a network
    group; an admission drops no finished connection; one finishing drops an
    unfinished one if any holds a slot, else one only from the largest network group,
    for a connection whose group holds at least two fewer and made no room of late."""
    rules = Admission(
        max_inbound=8,
        limiter=AddressLimiter(max_concurrent=None, rate=1e9, burst=10**9, exempt_loopback=exempt),
        is_blocked=frozenset[str]().__contains__,
    )
    admitted: dict[int, str] = {}
    finished: dict[int, str] = {}  # in the order they finished
    room_makers: set[int] = set()
    barred: set[str] = set()  # (ROOM_HOLD outlasts the steps)
    now = 0.0

    def gone(conn_id: int) -> None:
        admitted.pop(conn_id)
        finished.pop(conn_id, None)
        room_makers.discard(conn_id)

    for action, conn_id in steps:
        now += 1.0
        if action == "admit" and conn_id not in admitted:
            decision = rules.admit(conn_id, hosts[conn_id], now)
            if isinstance(decision, Admitted):
                assert not decision.finished and decision.evicted not in finished
                if decision.evicted is not None:
                    gone(decision.evicted)
                admitted[conn_id] = hosts[conn_id]
        elif action == "finish" and conn_id in admitted and conn_id not in finished:
            host = admitted[conn_id]
            groups: dict[str, list[int]] = {}
            for other, other_host in finished.items():
                if not (exempt and other_host.startswith("127.")):
                    groups.setdefault(netgroup(other_host), []).append(other)
            # The first 2 to finish (8 // PROTECTED_SHARE) of those still open, grouped.
            protected = [c for members in groups.values() for c in members]
            protected = sorted(protected, key=list(finished).index)[: 8 // PROTECTED_SHARE]
            decision = rules.finish(conn_id, now)
            if isinstance(decision, Refusal):
                gone(conn_id)
                continue
            if decision is not None and not decision.finished:
                assert decision.evicted in admitted and decision.evicted not in finished
                gone(decision.evicted)
            elif decision is not None:
                assert decision.evicted in finished
                open_groups = [m for m in groups.values() if m[-1] not in protected]
                largest = max(len(members) for members in open_groups)
                victim_group = groups[netgroup(finished[decision.evicted])]
                assert len(victim_group) == largest
                assert victim_group[-1] == decision.evicted  # its newest
                assert decision.evicted not in protected
                assert len(groups.get(netgroup(host), [])) + 2 <= largest
                assert not (exempt and host.startswith("127."))
                assert netgroup(host) not in barred
                room_makers.add(conn_id)
                gone(decision.evicted)
            finished[conn_id] = host
        elif action == "release":
            rules.release(conn_id, now)
            if conn_id in room_makers:
                barred.add(netgroup(admitted[conn_id]))
            if conn_id in admitted:
                gone(conn_id)
        assert len(rules) == len(admitted) <= 8 + MAX_CANDIDATES
        assert len(finished) <= 8
        assert all(rules.finished(c) == (c in finished) for c in range(16))


def test_no_eviction_for_a_connection_over_its_address_limits(clock: FakeClock) -> None:
    rules = admission(max_inbound=2, max_concurrent=1)
    assert rules.admit(1, "10.0.0.1", clock()) == Admitted()
    assert rules.admit(2, "10.0.0.2", clock()) == Admitted()
    refusal = rules.admit(3, "10.0.0.1", clock())
    assert refusal is not None and refusal.reason == (
        "too many connections from your address (limit 1)"
    )
    assert rules.handshaking == 2  # nobody was evicted for it


def test_handshake_deadline_from_admission(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, handshake_timeout=10.0)
    assert rules.next_deadline() is None
    rules.admit(1, "10.0.0.1", clock())
    clock.advance(4.0)
    rules.admit(2, "10.0.0.2", clock())
    clock.advance(4.0)
    rules.admit(3, "10.0.0.3", clock())
    assert rules.next_deadline() == 1010.0
    assert rules.expired(1009.9) == []
    rules.finish(2, clock())  # in time: no deadline any more
    assert rules.expired(1014.0) == [1]
    assert rules.expired(1014.0) == []  # once
    assert rules.next_deadline() == 1018.0  # 2 finished: 3 is next
    assert len(rules) == 3  # expired connections count until they close
    rules.release(3)
    assert rules.next_deadline() is None
    assert rules.expired(2000.0) == []


def test_an_expired_connection_may_still_be_evicted(clock: FakeClock) -> None:
    rules = admission(max_inbound=1, handshake_timeout=1.0)
    rules.admit(1, "10.0.0.1", clock())
    clock.advance(2.0)
    assert rules.expired(clock()) == [1]  # being closed, slowly: it doesn't answer
    assert rules.admit(2, "10.0.0.2", clock()) == Admitted(evicted=1)


def test_a_connection_still_in_its_handshake_is_probed_before_its_deadline(
    clock: FakeClock,
) -> None:
    """Plain mode: the node pings a connection that said nothing (tester44: the
    original's client may send nothing at all); the deadline stays where it was."""
    rules = admission(max_inbound=None, handshake_timeout=10.0, probe_after=5.0)
    rules.admit(1, "10.0.0.1", clock())
    clock.advance(2.0)
    rules.admit(2, "10.0.0.2", clock())
    rules.admit(3, "10.0.0.3", clock())
    assert rules.next_deadline() == 1005.0  # the first probe, before any deadline
    assert rules.due_probes(1004.9) == []
    rules.finish(2, clock())  # introduced in time: not probed
    rules.release(3)  # closed: not probed
    assert rules.next_deadline() == 1005.0
    assert rules.due_probes(1007.0) == [1]
    assert rules.due_probes(1007.0) == []  # once
    assert rules.expired(1007.0) == []  # a probe is no deadline
    assert rules.next_deadline() == 1010.0
    assert rules.expired(1010.0) == [1]
    assert rules.next_deadline() is None


def test_no_probe_without_probe_after(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, handshake_timeout=10.0)
    rules.admit(1, "10.0.0.1", clock())
    assert rules.next_deadline() == 1010.0
    assert rules.due_probes(clock() + 1e9) == []


def test_no_deadline_without_handshake_timeout(clock: FakeClock) -> None:
    rules = admission(max_inbound=None)
    rules.admit(1, "10.0.0.1", clock())
    assert rules.next_deadline() is None
    assert rules.expired(clock() + 1e9) == []


def test_a_proxied_connection_counts_against_its_real_address(clock: FakeClock) -> None:
    rules = admission(max_inbound=10, max_concurrent=1, blocked=frozenset({"10.0.0.9"}))
    rules.admit(1, "10.0.0.1", clock())  # the proxy's address at accept
    assert rules.readdress(1, "10.0.0.1", clock()) is None  # the same: nothing to do
    assert rules.readdress(1, "203.0.113.7", clock()) is None
    assert (rules.open_from("10.0.0.1"), rules.open_from("203.0.113.7")) == (0, 1)
    rules.admit(2, "10.0.0.1", clock())
    refusal = rules.readdress(2, "203.0.113.7", clock())
    assert refusal is not None and refusal.reason == (
        "too many connections from your address (limit 1)"
    )
    rules.admit(3, "10.0.0.1", clock())
    assert rules.readdress(3, "10.0.0.9", clock()) == Refusal(
        CloseCode.POLICY_VIOLATION, "blocked", warn=False
    )
    assert len(rules) == 3  # refused ones hold their slot until they close
    for conn_id in (1, 2, 3):
        rules.release(conn_id)
    assert (len(rules), rules.open_from("203.0.113.7"), rules.open_from("10.0.0.1")) == (0, 0, 0)
    assert rules.readdress(4, "10.0.0.1", clock()) is None  # unknown: nothing happens


def storm_rules(*, exempt_loopback: bool = False) -> Admission:
    return Admission(
        max_inbound=None,
        limiter=AddressLimiter(
            max_concurrent=None, rate=1000.0, burst=1000, exempt_loopback=exempt_loopback
        ),
        is_blocked=frozenset[str]().__contains__,
        storms=ReconnectStorms(connections=5, window=10.0, cooldown=60.0),
    )


def test_an_address_reconnecting_in_a_storm_is_refused_for_the_cooldown(
    clock: FakeClock,
) -> None:
    rules = storm_rules()
    for conn_id in range(4):
        assert rules.admit(conn_id, "10.0.0.1", clock()) == Admitted()
        rules.release(conn_id)  # each closes at once and comes back
        clock.advance(0.1)
    refusal = rules.admit(4, "10.0.0.1", clock())
    assert refusal == Refusal(
        CloseCode.TRY_AGAIN_LATER, "reconnecting too often: try again in 60 s", warn=True
    )
    clock.advance(30.0)
    assert rules.admit(5, "10.0.0.1", clock()) == Refusal(
        CloseCode.TRY_AGAIN_LATER, "reconnecting too often: try again in 30 s", warn=False
    )
    assert rules.admit(6, "10.0.0.2", clock()) == Admitted()  # another address
    assert len(rules) == 1  # refused ones never took a slot
    clock.advance(30.0)
    assert rules.admit(7, "10.0.0.1", clock()) == Admitted()


def test_loopback_storms_count_by_peer_id_only_unless_limited(clock: FakeClock) -> None:
    rules = storm_rules(exempt_loopback=True)
    for conn_id in range(10):  # many local peers share 127.0.0.1
        assert rules.admit(conn_id, "127.0.0.1", clock()) == Admitted()
    for _ in range(4):
        assert rules.identified("tpa", clock()) is None
    refusal = rules.identified("tpa", clock())
    assert refusal is not None and refusal.warn
    assert rules.identified("tpb", clock()) is None
    limited = storm_rules(exempt_loopback=False)
    for conn_id in range(4):
        assert limited.admit(conn_id, "127.0.0.1", clock()) == Admitted()
    assert isinstance(limited.admit(4, "127.0.0.1", clock()), Refusal)


def test_a_proxied_storm_counts_against_the_real_address(clock: FakeClock) -> None:
    rules = storm_rules(exempt_loopback=True)
    for conn_id in range(4):
        rules.admit(conn_id, "127.0.0.1", clock())  # the proxy
        assert rules.readdress(conn_id, "203.0.113.7", clock()) is None
    rules.admit(4, "127.0.0.1", clock())
    refusal = rules.readdress(4, "203.0.113.7", clock())
    assert refusal is not None and refusal.reason.startswith("reconnecting too often")


def test_no_storm_rule_without_one(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, rate=1000.0, burst=1000, max_concurrent=None)
    for conn_id in range(100):
        assert rules.admit(conn_id, "10.0.0.1", clock()) == Admitted()
    assert rules.identified("tpa", clock()) is None


A, B, C = "tpa", "tpb", "tpc"


@pytest.mark.parametrize(
    ("our_id", "new", "existing", "keep"),
    [
        # We are A; peer B. Keep the connection dialled by the smaller id: ours.
        (A, (False, B), (True, B), True),
        (A, (True, B), (False, B), False),
        # We are C; peer B dialled us, we dialled it: keep B's.
        (C, (True, B), (False, B), True),
        (C, (False, B), (True, B), False),
        # Two dialled by the same side: keep the older.
        (A, (False, B), (False, B), False),
        (C, (True, B), (True, B), False),
    ],
)
def test_both_sides_keep_the_same_connection(
    our_id: str, new: tuple[bool, str], existing: tuple[bool, str], keep: bool
) -> None:
    assert new[1] == existing[1]  # two connections to one peer
    keep_new = keep_new_connection(our_id, new[1], new_inbound=new[0], existing_inbound=existing[0])
    assert keep_new is keep


def test_the_two_ends_agree() -> None:
    """A's view of the A-B pair and B's view pick the same physical connection."""
    # Connection 1: A dialled B; connection 2: B dialled A. At A, 1 is outbound.
    at_a = keep_new_connection(A, B, new_inbound=True, existing_inbound=False)
    at_b = keep_new_connection(B, A, new_inbound=False, existing_inbound=True)
    # A keeps connection 1 (drops the new one, 2); B, whose new one is 2, drops it too.
    assert at_a is False and at_b is False


def test_block_scope() -> None:
    assert block_scope("tpa", "10.0.0.1", limit_loopback=False) == BlockScope("tpa", "10.0.0.1")
    assert block_scope("tpa", "127.0.0.1", limit_loopback=False) == BlockScope("tpa", None)
    assert block_scope(None, "127.0.0.1", limit_loopback=False) is None
    assert block_scope(None, "::ffff:127.0.0.1", limit_loopback=False) is None
    assert block_scope(None, "127.0.0.1", limit_loopback=True) == BlockScope(None, "127.0.0.1")
    assert block_scope(None, None, limit_loopback=True) is None


# RefusalNotices: who is told why a connection was refused at accept (attacker33 F4)


def test_an_address_is_told_a_burst_then_at_the_rate() -> None:
    notices = RefusalNotices()
    assert [notices.tell("10.0.0.1", 100.0 + n * 0.01) for n in range(6)] == [True] * 4 + [
        False
    ] * 2
    assert notices.tell("10.0.0.2", 100.1)  # another address has its own
    step = NOTICE_INTERVAL / NOTICE_BURST  # one more told each
    assert not notices.tell("10.0.0.1", 100.0 + step - 0.1)
    assert notices.tell("10.0.0.1", 100.05 + step)
    assert not notices.tell("10.0.0.1", 100.05 + step)
    assert NOTICE_BURST == 4


def test_a_peer_that_backs_off_is_told_every_time() -> None:
    notices, now = RefusalNotices(), 0.0
    for delay in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0):  # a dialler's backoff
        now += delay
        assert notices.tell("192.0.2.7", now)


def test_the_64s_of_one_48_share_one_burst() -> None:
    notices = RefusalNotices()
    told = [notices.tell(f"2001:db8:0:{n:x}::1", 5.0) for n in range(1, 9)]
    assert told == [True] * NOTICE_BURST + [False] * (8 - NOTICE_BURST)
    assert notices.tell("2001:db9::1", 5.0)  # another /48


def test_loopback_is_always_told_unless_limited() -> None:
    exempt = RefusalNotices()
    assert all(exempt.tell("127.0.0.1", 1.0) for _ in range(20))
    assert all(exempt.tell("::1", 1.0) for _ in range(20))
    limited = RefusalNotices(exempt_loopback=False)
    assert [limited.tell("127.0.0.1", 1.0) for _ in range(5)] == [True] * 4 + [False]


def test_notices_remember_a_bounded_number_of_addresses() -> None:
    notices = RefusalNotices(size=3, burst=1)
    assert notices.tell("10.0.0.1", 1.0) and not notices.tell("10.0.0.1", 1.0)
    for n in range(2, 5):  # pushes 10.0.0.1 out: it is told again
        assert notices.tell(f"10.0.0.{n}", 1.0)
    assert notices.tell("10.0.0.1", 1.0)
    assert not notices.tell("10.0.0.4", 1.0)  # still remembered
