"""Whom a full peer store forgets first, by who told it (attacker39 E1: servers answering
``get_peers`` with 10,000 made-up URLs over many /16s flushed every untried URL learned
from honest servers; each fresh server id had a fresh budget). No sockets: the store on
a fake clock, at a small ``max_peers``."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import FakeClock
from trustp2p.storage._peer_eviction import GROUP_SHARE, TELLER_SHARE, teller_group
from trustp2p.storage.peerstore import PeerKey, PeerSource, PeerStore

CAP = 1000
HONEST = "198.51.100.7"  # an honest server's address
# Learned from the honest server's answer, never dialled, a /16 each.
LEARNED = [f"ws://{i // 200 + 1}.{i % 200}.0.1:1107" for i in range(300)]
PROVEN = [f"ws://203.0.113.{i + 1}:1107" for i in range(50)]


def made_up(count: int, start: int = 0) -> list[str]:
    """URLs of no server, 40 a /16 (under GROUP_SHARE): no network group is crowded."""
    assert GROUP_SHARE > 40
    return [
        f"ws://{11 + j // 40 // 250}.{j // 40 % 250}.{j % 40}.7:1107"
        for j in range(start, start + count)
    ]


def kept(store: PeerStore, urls: list[str]) -> int:
    return sum(store.knows_url(url) for url in urls)


async def fill(store: PeerStore, clock: FakeClock) -> None:
    """LEARNED (untried) and PROVEN (dialled and met), an hour before the attack."""
    await store.add_urls(LEARNED, PeerSource.EXCHANGE, teller=HONEST)
    for i, url in enumerate(PROVEN):
        await store.add_urls([url], PeerSource.EXCHANGE, teller=HONEST)
        await store.record_connected(peer_id=f"tpp{i}", url=url, address=url[5:-5])
    clock.advance(3600)


async def test_one_networks_servers_flush_nothing_learned_from_others(clock: FakeClock) -> None:
    """attacker39's storefill_exchange.py at a cap of 1,000: answers of 100 made-up URLs
    from servers of one /16, a fresh address (and id) each. They ranked as the honest
    server's URLs and won by being newer: none of those was left."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        await fill(store, clock)
        attack = made_up(3 * CAP)
        for k in range(0, len(attack), 100):
            server = f"192.0.{k // 100 // 250}.{k // 100 % 250 + 1}"
            await store.add_urls(attack[k : k + 100], PeerSource.EXCHANGE, teller=server)
            clock.advance(1)
        assert store.size() <= CAP + CAP // 10  # (a tenth more between passes)
        assert kept(store, LEARNED) == len(LEARNED)
        assert kept(store, PROVEN) == len(PROVEN)
        assert store.knows_url(attack[-1])  # the newest: room left, as its share
        assert kept(store, attack) >= TELLER_SHARE
    finally:
        await store.close()


async def test_a_store_full_before_the_flood_keeps_each_tellers_share(clock: FakeClock) -> None:
    """review59 R3: the same flood into a store already full of URLs learned from
    honest servers (13 more tellers, 50 each): its first answer made room down to 900,
    the oldest first, and the honest server's LEARNED kept 72 of 300. The store makes
    room once a tenth more is kept: by then the flood is past its teller's share, and
    goes first; the honest server keeps its 128 (the 172 it told past its share go
    as the flood's do) and the other tellers all theirs."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        await fill(store, clock)
        other = [f"ws://172.{16 + j // 50}.{j % 50}.9:1107" for j in range(CAP - 350)]
        for t in range(13):
            batch = other[t * 50 : (t + 1) * 50]
            await store.add_urls(batch, PeerSource.EXCHANGE, teller=f"100.{64 + t}.0.1")
        clock.advance(3600)
        assert store.size() == CAP
        attack = made_up(3 * CAP)
        for k in range(0, len(attack), 100):
            server = f"192.0.{k // 100 // 250}.{k // 100 % 250 + 1}"
            await store.add_urls(attack[k : k + 100], PeerSource.EXCHANGE, teller=server)
            clock.advance(1)
        assert kept(store, LEARNED) == TELLER_SHARE  # (before: 72)
        assert kept(store, other) == len(other) and kept(store, PROVEN) == len(PROVEN)
    finally:
        await store.close()


async def test_an_inbound_peer_is_counted_in_a_store_full_of_learned_urls(
    clock: FakeClock,
) -> None:
    """review60 F1 (of a first mend of R3 that made room one for one): each count of a
    new inbound peer made a pass that forgot that peer, and its counts never added up
    (never blocked for invalid packages). Its counts add up."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        for t in range(10):  # 100 URLs a teller (within its share), none crowded
            urls = [f"ws://{t * 100 + i + 1}.1.0.1:1107" for i in range(100)]
            await store.add_urls(urls, PeerSource.EXCHANGE, teller=f"100.{t}.0.1")
        assert store.size() == CAP
        for _ in range(20):
            counts = store.record_packages(PeerKey("tpattacker"), invalid=1)
        assert counts == (0, 20)
    finally:
        await store.close()


async def test_many_tellers_share_the_room(clock: FakeClock) -> None:
    """The same flood from servers of as many /16s as it takes to fill the store
    without crowding any: the oldest go first, as before (the cost of a flush is
    network groups, as for claims)."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        await fill(store, clock)
        attack = made_up(3 * CAP)
        for k in range(0, len(attack), 100):
            await store.add_urls(
                attack[k : k + 100], PeerSource.EXCHANGE, teller=f"10.{k // 100}.0.1"
            )
            clock.advance(1)
        assert kept(store, PROVEN) == len(PROVEN)
        assert kept(store, LEARNED) == 0
    finally:
        await store.close()


async def test_a_url_several_networks_named_outlasts_one_only_one_did(clock: FakeClock) -> None:
    """Past its teller's share, a URL a server of another network named too is kept
    before one its teller alone named, however old."""
    store = await PeerStore.open(None, clock=clock, max_peers=300)
    try:
        told = [f"ws://{i // 40 + 1}.5.{i % 40}.1:1107" for i in range(300)]
        for url in told:
            await store.add_urls([url], PeerSource.EXCHANGE, teller=HONEST)
            clock.advance(1)
        await store.add_urls(told[:10], PeerSource.EXCHANGE, teller="192.0.2.1")
        others = [f"ws://10.{9 + i}.0.1:1107" for i in range(31)]  # a tenth more in all
        for url in others:
            await store.add_urls([url], PeerSource.EXCHANGE, teller=url[5:-5])
        # 31 forgotten: the oldest of those past the share, named by HONEST alone.
        assert kept(store, told[:10]) == 10
        assert kept(store, told[10:41]) == 0
        assert kept(store, told[41:]) == len(told) - 41
    finally:
        await store.close()


async def test_a_restart_ranks_stored_urls_by_their_teller(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The flood is on disk when the node restarts: the store still knows who told it
    each URL, and the store opened at its cap keeps the URLs learned from others."""
    path = tmp_path / "peers.sqlite"
    store = await PeerStore.open(path, clock=clock, max_peers=None)
    await fill(store, clock)
    attack = made_up(2 * CAP)
    await store.add_urls(attack, PeerSource.EXCHANGE, teller="192.0.2.1")
    await store.close()
    store = await PeerStore.open(path, clock=clock, max_peers=CAP)
    try:
        assert store.size() <= CAP + CAP // 10  # (a tenth more between passes)
        assert kept(store, LEARNED) == len(LEARNED)
        assert kept(store, PROVEN) == len(PROVEN)
    finally:
        await store.close()


async def test_a_store_from_before_tellers_is_upgraded(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A schema-3 store (no tellers) opens with its URLs, told by nobody; what it learns
    next is kept with its teller."""
    path = tmp_path / "peers.sqlite"
    store = await PeerStore.open(path, clock=clock)
    await store.add_urls(LEARNED[:2], PeerSource.EXCHANGE)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE urls DROP COLUMN teller")
        conn.execute("PRAGMA user_version = 3")
    store = await PeerStore.open(path, clock=clock)
    await store.add_urls(LEARNED[2:4], PeerSource.EXCHANGE, teller=HONEST)
    await store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT url, teller FROM urls").fetchall())
    assert rows == {
        LEARNED[0]: None,
        LEARNED[1]: None,
        LEARNED[2]: "198.51.0.0/16",
        LEARNED[3]: "198.51.0.0/16",
    }


def test_a_teller_counts_by_its_network_group() -> None:
    """Ids are free, addresses are not: one /16's servers tell as one; local servers
    (tests, ``trustp2p simulate``) as none, as for GROUP_SHARE."""
    assert teller_group("192.0.2.1") == teller_group("192.0.77.9") == "192.0.0.0/16"
    assert teller_group("2001:db8:1::1") == teller_group("2001:db8:ffff::1")
    assert teller_group("127.0.0.1") is None
    assert teller_group("::1") is None
