"""BudgetTable: request budgets that outlive connections, in bounded memory."""

from __future__ import annotations

import pytest

from trustp2p.protocol.limits import BudgetTable


def test_a_peer_that_reconnects_finds_its_budget_as_it_left_it() -> None:
    table = BudgetTable(rate=1.0, burst=10)
    bucket = table.get("peer", 0.0)
    for _ in range(10):
        bucket.spend(0.0)
    again = table.get("peer", 2.0)  # a new connection, 2 s later
    assert again is bucket
    assert again.level(2.0) == pytest.approx(2.0)


def test_refilled_buckets_are_forgotten_first_when_the_table_is_full() -> None:
    table = BudgetTable(rate=1.0, burst=10, max_tracked=3)
    table.get("spent", 0.0).spend(0.0)
    table.get("idle-1", 0.0)
    table.get("idle-2", 0.0)
    spent = table.get("spent", 0.0)  # now the most recently used
    table.get("new", 0.5)  # full: the two full buckets make room
    assert len(table) == 2
    assert table.get("spent", 0.5) is spent


def test_churn_faster_than_refill_stays_within_the_bound() -> None:
    # Every new identity spends its whole burst at once: no bucket is ever full.
    table = BudgetTable(rate=1.0, burst=5, max_tracked=100)
    honest = table.get("honest", 0.0)
    honest.spend(0.0)
    for n in range(1000):
        now = n * 0.001
        if n % 50 == 0:
            assert table.get("honest", now) is honest  # used now and then: kept
        bucket = table.get(f"churn-{n}", now)
        for _ in range(5):
            bucket.spend(now)
        assert len(table) <= 100
    assert table.get("honest", 1.0) is honest


def test_room_is_made_a_tenth_at_a_time() -> None:
    table = BudgetTable(rate=1.0, burst=1, max_tracked=100)
    for n in range(100):
        table.get(f"k{n}", 0.0).spend(0.0)
    table.get("one more", 0.0)
    assert len(table) == 91  # 90 kept, then the new one: the next 9 need no scan
    assert table.get("k10", 0.0).level(0.0) == 0  # the most recent were kept, spent
    assert table.get("k9", 0.0).level(0.0) == 1  # the oldest forgotten: a full one


def test_max_tracked_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tracked must be at least 1, not 0"):
        BudgetTable(rate=1.0, burst=1, max_tracked=0)
