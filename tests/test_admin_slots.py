"""The admin listener's connection slots (AdminSlots), without I/O: the caps, which
connection gives way for a new one, and when a new one is refused."""

from __future__ import annotations

import pytest

from trustp2p.admin.slots import MAX_CONNECTIONS, MAX_PER_ADDRESS, AdminSlots, Decision


def fill(slots: AdminSlots, host: str, first: int, count: int) -> list[int]:
    """Admit ``count`` connections from ``host``, ids from ``first``; all must stay."""
    conns = list(range(first, first + count))
    for conn in conns:
        assert slots.admit(conn, host) == Decision(admitted=True)
    return conns


def test_defaults() -> None:
    slots = AdminSlots()
    assert (slots.limit, slots.per_address) == (MAX_CONNECTIONS, MAX_PER_ADDRESS) == (32, 8)


def test_the_default_case_a_slowloris_and_a_scraper_both_on_loopback() -> None:
    """A scraper's new connection gets in; the slow ones give way, oldest first, and
    once its head is in, slow ones connecting again drop one another, never it."""
    slots = AdminSlots()
    slow = fill(slots, "127.0.0.1", 0, MAX_CONNECTIONS)
    assert slots.admit(100, "127.0.0.1") == Decision(admitted=True, evicted=slow[0])
    slots.head_read(100)
    again = range(101, 101 + 2 * MAX_CONNECTIONS)
    evicted = [slots.admit(conn, "127.0.0.1").evicted for conn in again]
    assert evicted == slow[1:] + list(again[: MAX_CONNECTIONS + 1])
    assert (len(slots), slots.reading) == (MAX_CONNECTIONS, MAX_CONNECTIONS - 1)


def test_past_its_address_cap_a_new_connection_drops_that_address_oldest_reading() -> None:
    slots = AdminSlots()
    other = fill(slots, "10.0.0.2", 0, 2)
    slow = fill(slots, "10.0.0.1", 10, MAX_PER_ADDRESS)
    assert slots.admit(100, "10.0.0.1") == Decision(admitted=True, evicted=slow[0])
    assert slots.admit(101, "10.0.0.1") == Decision(admitted=True, evicted=slow[1])
    assert (slots.open_from("10.0.0.1"), slots.open_from("10.0.0.2")) == (MAX_PER_ADDRESS, 2)
    assert slots.admit(102, "10.0.0.2") == Decision(admitted=True)
    assert other == [0, 1]


def test_connections_being_answered_are_never_dropped() -> None:
    slots = AdminSlots()
    conns = fill(slots, "10.0.0.1", 0, MAX_PER_ADDRESS)
    for conn in conns[:-1]:
        slots.head_read(conn)
    assert slots.admit(100, "10.0.0.1") == Decision(admitted=True, evicted=conns[-1])
    slots.head_read(100)
    assert slots.admit(101, "10.0.0.1") == Decision(admitted=False)
    assert len(slots) == MAX_PER_ADDRESS
    slots.release(conns[0])
    assert slots.admit(101, "10.0.0.1") == Decision(admitted=True)


def test_all_of_loopback_is_one_address_without_a_cap_of_its_own() -> None:
    slots = AdminSlots(limit=8, per_address=2)
    for conn, host in enumerate(["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] * 2):
        assert slots.admit(conn, host) == Decision(admitted=True)
    assert slots.open_from("127.9.9.9") == 8
    assert slots.admit(8, "localhost") == Decision(admitted=True, evicted=0)  # the total cap


def test_an_ipv6_address_counts_as_its_64() -> None:
    slots = AdminSlots(limit=8, per_address=2)
    fill(slots, "2001:db8::1", 0, 1)
    fill(slots, "2001:db8::2", 1, 1)
    assert slots.admit(2, "2001:db8::ffff") == Decision(admitted=True, evicted=0)
    assert slots.admit(3, "2001:db8:0:1::1") == Decision(admitted=True)


def test_at_the_total_cap_the_address_holding_the_most_gives_way() -> None:
    """A new address takes a slot from the address holding the most, its oldest still
    reading, not from whoever connected first."""
    slots = AdminSlots(limit=8, per_address=4)
    first = fill(slots, "10.0.0.1", 0, 2)  # the oldest, holding 2
    crowd = fill(slots, "10.0.0.2", 2, 4)  # holding 4, the first answering
    slots.head_read(crowd[0])
    fill(slots, "10.0.0.3", 6, 2)
    assert slots.admit(8, "10.0.0.4") == Decision(admitted=True, evicted=crowd[1])
    assert slots.admit(9, "10.0.0.5") == Decision(admitted=True, evicted=crowd[2])
    # Now 10.0.0.1 and .3 hold 2 each, .2 holds 2 (one answering): the oldest reading.
    assert slots.admit(10, "10.0.0.6") == Decision(admitted=True, evicted=first[0])
    assert len(slots) == 8


def test_at_the_total_cap_with_every_connection_answered_a_new_one_is_refused() -> None:
    slots = AdminSlots(limit=4, per_address=2)
    for conn in fill(slots, "10.0.0.1", 0, 2) + fill(slots, "10.0.0.2", 2, 2):
        slots.head_read(conn)
    assert slots.admit(4, "10.0.0.3") == Decision(admitted=False)
    assert slots.open_from("10.0.0.3") == 0


def test_release_is_idempotent_and_counts_go_back_to_zero() -> None:
    slots = AdminSlots()
    fill(slots, "10.0.0.1", 0, 2)
    evicted = [slots.admit(conn, "10.0.0.1").evicted for conn in range(2, 10)]
    assert evicted == [None] * 6 + [0, 1]
    for conn in range(10):
        slots.release(conn)
        slots.release(conn)
    assert (len(slots), slots.reading, slots.open_from("10.0.0.1")) == (0, 0, 0)


@pytest.mark.parametrize(("limit", "per_address"), [(4, 0), (4, 5)])
def test_a_per_address_cap_outside_the_total_is_refused(limit: int, per_address: int) -> None:
    with pytest.raises(ValueError, match=rf"^per_address {per_address} is not within 1\.\.4$"):
        AdminSlots(limit=limit, per_address=per_address)
