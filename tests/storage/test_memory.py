"""The stores on a MemoryShelf: no file, no worker thread, and what they held at close
comes back at the next open with the same shelf, as from their SQLite files."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.conftest import FakeClock
from trustp2p.protocol.peers import peer_key
from trustp2p.storage.memory import MemoryShelf
from trustp2p.storage.msglog import MessageLog
from trustp2p.storage.peerstore import PeerSource, PeerStore

from .adapters import MessageLogAdapter, PeerStoreAdapter, StoreAdapter, message


@pytest.fixture(params=[PeerStoreAdapter, MessageLogAdapter], ids=["peerstore", "msglog"])
def adapter(request: pytest.FixtureRequest) -> StoreAdapter:
    cls: type[StoreAdapter] = request.param
    return cls()


def store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("trustp2p-")]


async def test_changes_come_back_from_the_shelf(adapter: StoreAdapter) -> None:
    shelf = MemoryShelf()
    store = await adapter.open(None, shelf=shelf)
    for i in range(1, 6):
        await adapter.change(store, i)
    assert store_threads() == []
    await store.close()
    assert adapter.name in shelf

    store = await adapter.open(None, shelf=shelf)
    try:
        assert adapter.name not in shelf  # taken off while the store is open
        assert await adapter.changes(store) == [1, 2, 3, 4, 5]
        await adapter.change(store, 6)
    finally:
        await store.close()
    store = await adapter.open(None, shelf=shelf)
    try:
        assert await adapter.changes(store) == [1, 2, 3, 4, 5, 6]
    finally:
        await store.close()


async def test_without_a_shelf_a_store_in_memory_starts_empty(adapter: StoreAdapter) -> None:
    store = await adapter.open(None)
    await adapter.change(store, 1)
    await store.close()
    store = await adapter.open(None)
    try:
        assert await adapter.changes(store) == []
    finally:
        await store.close()


async def test_a_store_with_a_file_leaves_the_shelf_alone(
    adapter: StoreAdapter, tmp_path: Path
) -> None:
    shelf = MemoryShelf()
    store = await adapter.open(tmp_path / adapter.file, shelf=shelf)
    await adapter.change(store, 1)
    await store.close()
    assert adapter.name not in shelf
    assert adapter.stored(tmp_path / adapter.file) == [1]


async def test_the_log_keeps_marks_counters_and_positions(clock: FakeClock) -> None:
    shelf = MemoryShelf()
    log = await MessageLog.open(None, clock=clock, max_age=100, shelf=shelf)
    for seq in (1, 2, 4):
        log.add(message(seq))
    clock.advance(50)
    log.add(message(1, origin="tpb", topic="news"))
    log.mark_delivered("tpa", 2)
    assert [log.next_seq("tpme") for _ in range(3)] == [1, 2, 3]
    await log.close()

    log = await MessageLog.open(None, clock=clock, max_age=100, shelf=shelf)
    try:
        assert len(log) == 4
        assert log.high_water() == {"tpa": 2, "tpb": 1}
        assert log.delivered("tpa") == 2
        assert log.next_seq("tpme") == 4
        # The receive times were kept: tpa's messages are dropped first, then tpb's.
        clock.advance(51)
        assert await log.flush() is True
        assert log.high_water() == {"tpb": 1}
        assert log.add(message(5)) is True
    finally:
        await log.close()


async def test_the_peer_store_keeps_blocks_and_who_it_met(clock: FakeClock) -> None:
    shelf = MemoryShelf()
    store = await PeerStore.open(None, clock=clock, shelf=shelf)
    await store.add_urls(["ws://h1:1"], PeerSource.BOOTSTRAP)
    await store.record_connected(peer_id="tpa", url="ws://h1:1", address="10.0.0.1")
    await store.block(peer_id="tpbad", reason="test", duration=60)
    store.record_packages(peer_key("tpa", "10.0.0.1"), good=3)
    await store.close()

    store = await PeerStore.open(None, clock=clock, shelf=shelf)
    try:
        assert store.is_blocked(peer_id="tpbad")
        assert store.verified_peer_id("ws://h1:1") == "tpa"
        assert store.is_anchor("tpa")  # met before this run
        clock.advance(61)
        assert not store.is_blocked(peer_id="tpbad")
    finally:
        await store.close()
