"""The peer store's credit for a peer that works: a success an hour at most, counted from
the last success counted, and for the time a link we dialled stays open (review38: a
link held for months earned one point, an hourly churner one an hour, and a reconnect
within the hour moved the spacing on without counting)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import trustp2p
import trustp2p.node.dialer
import trustp2p.storage._peer_table
from tests.conftest import FakeClock
from tests.nodes import wait_for
from trustp2p.protocol.peers import PeerKey
from trustp2p.protocol.scoring import SUCCESS_SPACING
from trustp2p.storage._peer_queries import TIE_PERIOD
from trustp2p.storage._peer_table import PeerTable
from trustp2p.storage.peerstore import STORE_PATH, PeerSource, PeerStore

DAY = 86_400.0
MINUTE = 60.0


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[PeerStore]:
    store = await PeerStore.open(None, clock=clock, max_peers=10)
    yield store
    await store.close()


async def hold(store: PeerStore, clock: FakeClock, peer_id: str, url: str, seconds: float) -> None:
    """A link dialled to ``url`` stays open ``seconds``, reported every minute."""
    for _ in range(int(seconds // MINUTE)):
        clock.advance(MINUTE)
        await store.record_held(peer_id=peer_id, url=url)


async def test_the_spacing_runs_from_the_last_success_counted(
    store: PeerStore, clock: FakeClock
) -> None:
    # Connections 50 minutes apart: each one less than an hour after the last but one
    # that counted counts (0, 100, 200... minutes), not only the first.
    for _ in range(12):
        await store.record_connected(peer_id="tpflaky", url="ws://flaky:1", address=None)
        clock.advance(3000)
    assert store.score_of("tpflaky") == 6


async def test_a_link_held_earns_what_an_hourly_churner_does(
    store: PeerStore, clock: FakeClock
) -> None:
    await store.record_connected(peer_id="tpstays", url="ws://stays:1", address=None)
    for _ in range(24):  # the churner closes its link each hour to be dialled again
        await store.record_connected(peer_id="tpchurn", url="ws://churn:1", address=None)
        await hold(store, clock, "tpstays", "ws://stays:1", SUCCESS_SPACING)
    # One a connection or an hour held: the churner's last hour isn't over.
    assert (store.score_of("tpstays"), store.score_of("tpchurn")) == (25, 24)
    assert await store.candidates(2) == ["ws://stays:1", "ws://churn:1"]  # known longer


async def test_a_long_lived_peer_with_an_old_failure_outranks_one_dialled_once(
    store: PeerStore, clock: FakeClock
) -> None:
    await store.record_connected(peer_id="tphonest", url="ws://honest:1", address=None)
    await hold(store, clock, "tphonest", "ws://honest:1", 2 * DAY)
    await store.record_failure("ws://honest:1")  # it restarted: one failed redial
    clock.advance(10)
    await store.record_connected(peer_id="tphonest", url="ws://honest:1", address=None)
    await hold(store, clock, "tphonest", "ws://honest:1", 2 * DAY)
    for i in range(11):  # more peers dialled once than the store keeps (and a tenth)
        await store.record_connected(peer_id=f"tpsyb{i}", url=f"ws://syb{i}:1", address=None)
    assert store.score_of("tphonest") == 4 * 24 + 1 - 2
    assert (await store.candidates(1), await store.good_urls(1)) == (["ws://honest:1"],) * 2
    forgotten = [i for i in range(11) if store.score_of(f"tpsyb{i}") is None]
    assert forgotten and store.size() == 12 - len(forgotten)  # not the long-lived one


async def test_busy_sybils_dialled_once_rank_after_honest_peers_known_longer(
    clock: FakeClock,
) -> None:
    """Found by an attacker: 40 ids dialled once, each sending 100 valid packages (the
    point packages could add), outranked 3 quiet honest peers; a restarted node gave
    them all 8 managed slots. Packages add nothing; ties go to the longest known, by
    the hour (TIE_PERIOD)."""
    store = await PeerStore.open(None, clock=clock)
    try:
        honest = [f"ws://honest{i}:1" for i in range(3)]
        for i, url in enumerate(honest):
            await store.record_connected(peer_id=f"tphonest{i}", url=url, address=None)
            store.record_packages(PeerKey(f"tphonest{i}"), good=3)
        clock.advance(TIE_PERIOD)
        for i in range(40):
            await store.record_connected(peer_id=f"tpsyb{i}", url=f"ws://syb{i}:1", address=None)
            store.record_packages(PeerKey(f"tpsyb{i}"), good=100)
        assert sorted((await store.candidates(32))[:3]) == honest
    finally:
        await store.close()


async def test_a_held_link_counts_for_the_peer_that_holds_the_url(
    store: PeerStore, clock: FakeClock
) -> None:
    await store.record_connected(peer_id="tpold", url="ws://moved:1", address=None)
    await store.record_connected(peer_id="tpnew", url="ws://moved:1", address=None)
    await hold(store, clock, "tpold", "ws://moved:1", 2 * SUCCESS_SPACING)  # not its URL
    await hold(store, clock, "tpold", "ws://unknown:1", 2 * SUCCESS_SPACING)
    assert (store.score_of("tpold"), store.score_of("tpnew")) == (1, 1)
    await hold(store, clock, "tpnew", "ws://moved:1", SUCCESS_SPACING)
    assert store.score_of("tpnew") == 2
    plain = "address:10.0.0.7"  # a plain peer: the URL keeps a record of its own
    await store.record_connected(peer_id=plain, url="ws://10.0.0.7:1", address="10.0.0.7")
    await hold(store, clock, plain, "ws://10.0.0.7:1", SUCCESS_SPACING)
    assert [r.successes for r in await store.peers() if "ws://10.0.0.7:1" in r.urls] == [2]


async def test_the_spacing_holds_across_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / STORE_PATH
    store = await PeerStore.open(path, clock=clock)
    await store.record_connected(peer_id="tpa", url="ws://a:1", address=None)
    await store.close()
    clock.advance(10 * MINUTE)
    store = await PeerStore.open(path, clock=clock)
    try:
        await store.record_connected(peer_id="tpa", url="ws://a:1", address=None)
        assert store.score_of("tpa") == 1
        await hold(store, clock, "tpa", "ws://a:1", SUCCESS_SPACING)
        assert store.score_of("tpa") == 2
    finally:
        await store.close()


@pytest.mark.parametrize("schema", [1, 2])
async def test_a_store_from_before_the_column_keeps_the_spacing(
    tmp_path: Path, clock: FakeClock, schema: int
) -> None:
    """review41: a store upgraded to schema 2 had no time of the last success counted,
    and the first connection after the upgrade counted one more within the hour; one
    upgraded to 2 before that was mended is mended too (review42)."""
    import sqlite3

    path = tmp_path / STORE_PATH
    store = await PeerStore.open(path, clock=clock)
    await store.record_connected(peer_id="tpa", url="ws://a:1", address=None)
    await store.close()
    with sqlite3.connect(path) as conn:  # as schema 1 left it, or 2 as it was first
        conn.execute("ALTER TABLE urls DROP COLUMN teller")  # (schema 4)
        if schema == 1:
            conn.execute("ALTER TABLE peers DROP COLUMN counted_at")
        else:
            conn.execute("UPDATE peers SET counted_at = NULL")
        conn.execute(f"PRAGMA user_version = {schema}")
    conn.close()
    clock.advance(10 * MINUTE)
    store = await PeerStore.open(path, clock=clock)
    try:
        await store.record_connected(peer_id="tpa", url="ws://a:1", address=None)
        assert store.score_of("tpa") == 1
    finally:
        await store.close()


async def test_a_restart_keeps_the_spacing_from_the_last_success_counted(
    tmp_path: Path, clock: FakeClock
) -> None:
    """review39: the time of the last success counted was taken from last_connected at
    each start, which the held reports moved: a node restarted more often than hourly
    never credited the links it held. It is stored now."""
    path = tmp_path / STORE_PATH
    for _ in range(6):  # runs of 50 minutes, 10 s apart, the link held all along
        store = await PeerStore.open(path, clock=clock)
        await store.record_connected(peer_id="tpa", url="ws://a:1", address=None)
        await hold(store, clock, "tpa", "ws://a:1", 50 * MINUTE)
        await store.close()
        clock.advance(10)
    store = await PeerStore.open(path, clock=clock)
    try:
        assert store.score_of("tpa") == 6  # at 0, 60, 120, 180, 240 and 300 minutes
        (record,) = await store.peers()
        assert record.last_connected == clock.now - 10 - 50 * MINUTE  # the last opened
    finally:
        await store.close()


def test_merged_records_keep_the_latest_success_counted() -> None:
    table = PeerTable(max_peers=None)
    keeper, other = (
        table.new_peer("tpa", PeerSource.EXCHANGE, 0.0),
        table.new_peer(None, PeerSource.EXCHANGE, 0.0),
    )
    keeper.counted_at, other.counted_at = 100.0, 200.0
    table.merge(keeper, other)
    assert keeper.counted_at == 200.0
    other = table.new_peer(None, PeerSource.EXCHANGE, 0.0)  # never counted
    table.merge(keeper, other)
    assert keeper.counted_at == 200.0


async def test_a_node_reports_the_links_it_dialled_as_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wired: the dialler reports each open link it dialled every HELD_INTERVAL, and
    the store counts one per SUCCESS_SPACING (both shortened here); a peer that
    dialled us earns nothing (inbound links are the peers' choice, not ours): the
    server here dials too, and reports its own outbound links."""
    monkeypatch.setattr(trustp2p.node.dialer, "HELD_INTERVAL", 0.02)
    monkeypatch.setattr(trustp2p.storage._peer_table, "SUCCESS_SPACING", 0.1)
    for name in ("s", "c"):
        (tmp_path / name).mkdir()
    server = await trustp2p.create_node(port=0, cwd=tmp_path / "s")
    client = await trustp2p.create_client(peers=[server.url], cwd=tmp_path / "c")
    try:
        assert client.store is not None and server.store is not None
        server_id, client_id = str(server.peer_id), str(client.peer_id)
        await wait_for(lambda: (client.store.score_of(server_id) or 0) >= 4)
        assert (server.store.score_of(client_id) or 0) < 1  # (its packages only)
    finally:
        await client.stop()
        await server.stop()
