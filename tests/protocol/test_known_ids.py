"""The ids an address showed with a clean record, and the addresses refusing new ids
(attacker37 N2): on a fake clock, as the node's penalties drive them."""

from __future__ import annotations

import pytest

from trustp2p.protocol.known_ids import KNOWN_ID_MEMORY, KnownIds
from trustp2p.protocol.scoring import HANDSHAKE_BLOCK, OFFENCE_WINDOW, Offences

NAT = "10.137.0.2"


def _offending_ids(known: KnownIds, offences: Offences, now: float, n: int) -> float | None:
    """``n`` throwaway ids from the NAT, each connecting, sending invalid packages and
    blocked by its id a second apart, as the kit's offend.py did; the first offence's
    time when the address earned a block (the penalties' verdict), else None."""
    earned = None
    for i in range(n):
        peer_id = f"off{now:g}-{i}"
        known.opened(NAT, peer_id, now + i)
        known.tainted(NAT, peer_id)  # its first invalid package
        first = offences.first(NAT, now + i)
        if offences.offended(NAT, now + i, peer_id):
            earned = now + i if first is None else first
        known.closed(NAT, peer_id, now + i)
    return earned


def test_an_address_with_honest_history_refuses_new_ids_and_lets_known_ones_in() -> None:
    """attacker37 N2's sequence: an honest id of the NAT connected, then nine throwaway
    ids offend from it. The address has honest history: it refuses new ids for the
    block's duration, and the honest id still comes in (it reconnects)."""
    known, offences = KnownIds(), Offences()
    known.opened(NAT, "honest", 0.0)
    earned = _offending_ids(known, offences, 5.0, 9)
    assert earned is not None
    now = 14.0
    assert known.honest(NAT, earned, now, "off5-8") == 1
    known.restrict(NAT, earned, now + HANDSHAKE_BLOCK)
    known.closed(NAT, "honest", now + 1)  # it reconnects: let in
    assert known.refused_for(NAT, "honest", now + 2) is None
    assert known.refused_for(NAT, "newcomer", now + 2) == HANDSHAKE_BLOCK - 2
    assert known.refusal(HANDSHAKE_BLOCK - 2.5) == (
        "too many new ids from your address: try again in 298 s"
    )
    assert known.refused_for(NAT, "off5-3", now + 2) is not None  # tainted: not known
    # Other addresses are not concerned; the restriction ends.
    assert known.refused_for("10.137.0.3", "newcomer", now + 2) is None
    assert known.refused_for(NAT, "newcomer", now + HANDSHAKE_BLOCK) is None


def test_throwaway_ids_give_their_address_no_honest_history() -> None:
    """Ids that connected after the first offence, or sent something invalid, are not
    honest history: with only those, the address is blocked as before."""
    known, offences = KnownIds(), Offences()
    earned = _offending_ids(known, offences, 0.0, 2)
    known.opened(NAT, "late", 3.0)  # clean, but after the first offence
    assert _offending_ids(known, offences, 4.0, 1) is not None
    assert earned is None
    assert known.honest(NAT, 0.0, 5.0) == 0


def test_an_id_is_known_while_connected_and_for_a_while_after() -> None:
    known = KnownIds()
    known.opened(NAT, "a", 0.0)
    known.restrict(NAT, 0.0, 1e9)
    assert known.honest(NAT, 0.0, 10 * KNOWN_ID_MEMORY) == 1  # connected
    known.closed(NAT, "a", 10 * KNOWN_ID_MEMORY)
    assert known.refused_for(NAT, "a", 11 * KNOWN_ID_MEMORY - 1) is None
    assert known.refused_for(NAT, "a", 11 * KNOWN_ID_MEMORY) is not None  # forgotten
    assert known.honest(NAT, 0.0, 11 * KNOWN_ID_MEMORY) == 0
    # Coming back after that, it starts afresh: not known from before the offences.
    known.opened(NAT, "a", 12 * KNOWN_ID_MEMORY)
    assert known.honest(NAT, 0.0, 12 * KNOWN_ID_MEMORY) == 0


def test_ipv6_addresses_count_as_their_64() -> None:
    known = KnownIds()
    known.opened("2001:db8:0:1::5", "a", 0.0)
    assert known.honest("2001:db8:0:1::9", 0.0, 1.0) == 1
    known.restrict("2001:db8:0:1::9", 0.0, 100.0)
    assert known.refused_for("2001:db8:0:1::7", "b", 1.0) is not None
    assert known.refused_for("2001:db8:0:1::7", "a", 1.0) is None


def test_a_restriction_extended_keeps_its_earlier_start() -> None:
    known = KnownIds()
    known.restrict(NAT, 10.0, 310.0)
    known.opened(NAT, "b", 20.0)  # (an id connected during the offences)
    known.restrict(NAT, 30.0, 330.0)
    assert known.refused_for(NAT, "b", 320.0) == 10.0


def test_the_least_recently_seen_ids_not_connected_are_forgotten_first() -> None:
    known = KnownIds(max_tracked=2)
    known.opened(NAT, "connected", 0.0)
    known.opened(NAT, "left", 1.0)
    known.closed(NAT, "left", 2.0)
    known.opened(NAT, "third", 3.0)
    assert known.honest(NAT, 3.0, 4.0) == 2
    known.restrict(NAT, 3.0, 100.0)
    assert known.refused_for(NAT, "connected", 4.0) is None
    assert known.refused_for(NAT, "left", 4.0) is not None


def test_an_address_is_restricted_until_its_restriction_ends() -> None:
    """review52 R1: each crossing of an address with ids connected clean in advance
    (the attacker's own), one after another while it was restricted, was a new
    restriction, and the address never blocked: a crossing while restricted blocks it.
    review55 R1: a crossing after the restriction ended blocked it too, within the
    offence window (600 s, the restriction 300 s), and a NAT's honest peers were
    refused again: then it is restricted again."""
    known = KnownIds()
    assert not known.restricted(NAT, 0.0)
    known.restrict(NAT, 0.0, 300.0)
    assert known.restricted("10.137.0.2", 299.0)
    assert not known.restricted("10.137.0.9", 6.0)
    assert not known.restricted(NAT, 300.0)
    assert 300.0 < OFFENCE_WINDOW  # (within the window, over: not restricted)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="need memory > 0"):
        KnownIds(memory=0)
