"""Whom a full peer store forgets first (attacker38 A2: throwaway ids that each announced
8 URLs of their own host flushed every untried URL learned from honest peers). No
sockets: the store on a fake clock, at a small ``max_peers``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import FakeClock
from trustp2p.identity import Identity
from trustp2p.storage._peer_eviction import GROUP_SHARE
from trustp2p.storage.peerstore import PeerSource, PeerStore

CAP = 200
# Learned from honest get_peers answers, never dialled: in one /16, as in the attack's
# measurement (past GROUP_SHARE: crowded themselves), and in a /16 each.
LEARNED = [f"ws://198.51.{i}.1:1107" for i in range(100)]
SPREAD = [f"ws://{i + 1}.77.0.1:1107" for i in range(30)]
PROVEN = [f"ws://203.0.113.{i + 1}:1107" for i in range(5)]
PIN = Identity.generate().peer_id
PINNED = f"ws://203.0.113.99:1107/p2p/{PIN}"


@pytest.fixture
async def full(clock: FakeClock) -> AsyncIterator[PeerStore]:
    """A store of CAP peers holding LEARNED and SPREAD (untried), PROVEN (dialled and
    met) and PINNED (the operator's, never reached), an hour before the attack."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    await store.add_urls([*LEARNED, *SPREAD], PeerSource.EXCHANGE)
    for i, url in enumerate(PROVEN):
        await store.add_urls([url], PeerSource.EXCHANGE)
        await store.record_connected(peer_id=f"tpp{i}", url=url, address=url[5:-5])
    await store.add_urls([PINNED], PeerSource.BOOTSTRAP)
    clock.advance(3600)
    yield store
    await store.close()


def kept(store: PeerStore, urls: list[str]) -> int:
    return sum(store.knows_url(url) for url in urls)


async def test_throwaway_ids_announcing_their_host_flush_nothing_learned(
    full: PeerStore, clock: FakeClock
) -> None:
    """attacker38's storefill.py at a small cap: each id connects once and announces 8
    URLs of its host (what the hello and ``my_url`` store for an inbound peer). They
    outranked the older learned URLs: none of them was left."""
    port = 20000
    for i in range(2 * CAP):
        urls = [f"ws://192.0.2.66:{port + k}" for k in range(8)]
        port += 8
        await full.add_urls(urls, PeerSource.INBOUND, peer_id=f"tpx{i}")
        clock.advance(1)
    assert full.size() <= CAP + CAP // 10  # (a tenth more between passes)
    assert kept(full, LEARNED) == len(LEARNED)
    assert kept(full, SPREAD) == len(SPREAD)
    assert kept(full, PROVEN) == len(PROVEN)
    assert full.knows_url(PINNED)
    assert full.knows_url(f"ws://192.0.2.66:{port - 1}")  # the newest claim: room left


async def test_one_network_competes_with_itself_first(full: PeerStore, clock: FakeClock) -> None:
    """URLs learned from a peer's answers, all of one /16 (a claim costs an id; a list
    of 100 URLs, one answer): past GROUP_SHARE they go before anyone else's untried
    URLs, which they outranked by being newer."""
    for i in range(2 * CAP):
        await full.add_urls([f"ws://192.0.{i // 200}.{i % 200 + 1}:1107"], PeerSource.EXCHANGE)
        clock.advance(1)
    assert kept(full, SPREAD) == len(SPREAD)
    assert kept(full, PROVEN) == len(PROVEN)
    assert full.knows_url(PINNED)
    # LEARNED's own /16 is past its share too: its oldest went first, down to its share.
    assert kept(full, LEARNED) == GROUP_SHARE


async def test_a_crowded_network_keeps_its_newest(clock: FakeClock) -> None:
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        older = [f"ws://{i + 1}.88.0.1:1107" for i in range(150)]
        await store.add_urls(older, PeerSource.EXCHANGE)
        crowd = [f"ws://192.0.{i // 200}.{i % 200 + 1}:1107" for i in range(CAP)]
        for url in crowd:
            clock.advance(1)
            await store.add_urls([url], PeerSource.EXCHANGE)
        # Past its share, the crowd's oldest went; its newest stay, then as anyone's.
        left = [url for url in crowd if store.knows_url(url)]
        assert left == crowd[-len(left) :]
        assert len(left) < 2 * GROUP_SHARE
    finally:
        await store.close()


async def test_loopback_is_in_no_group(clock: FakeClock) -> None:
    """Every local peer shares 127.0.0.1 (tests, ``trustp2p simulate``): past
    GROUP_SHARE of them, they are ranked as before, the oldest untried first."""
    store = await PeerStore.open(None, clock=clock, max_peers=100)
    try:
        public = [f"ws://{i + 1}.99.0.1:1107" for i in range(20)]
        await store.add_urls(public, PeerSource.EXCHANGE)
        clock.advance(1)
        local = [f"ws://127.0.0.1:{27000 + i}" for i in range(91)]
        for url in local:
            await store.add_urls([url], PeerSource.EXCHANGE)
            clock.advance(1)
        assert kept(store, local) == len(local)
        assert kept(store, public) == 9  # the 111th made room down to 100: 11 oldest
    finally:
        await store.close()


async def test_a_claim_on_loopback_goes_before_learned_urls(clock: FakeClock) -> None:
    """attacker38's live run: throwaway ids on loopback (exempt from the address
    limits) announcing 127.0.0.1 ports; the learned URLs stay."""
    store = await PeerStore.open(None, clock=clock, max_peers=100)
    try:
        learned = [f"ws://127.0.0.1:{27000 + i}" for i in range(50)]
        await store.add_urls(learned, PeerSource.EXCHANGE)
        clock.advance(1)
        for i in range(200):
            urls = [f"ws://127.0.0.1:{40000 + 8 * i + k}" for k in range(8)]
            await store.add_urls(urls, PeerSource.INBOUND, peer_id=f"tpx{i}")
            clock.advance(1)
        assert kept(store, learned) == len(learned)
    finally:
        await store.close()


async def test_a_failed_url_goes_before_a_crowded_one(clock: FakeClock) -> None:
    store = await PeerStore.open(None, clock=clock, max_peers=100)
    try:
        await store.add_urls(["ws://10.1.0.1:1107"], PeerSource.EXCHANGE)
        await store.record_failure("ws://10.1.0.1:1107")
        crowd = [f"ws://192.0.2.{i + 1}:1107" for i in range(110)]
        await store.add_urls(crowd, PeerSource.EXCHANGE)
        assert not store.knows_url("ws://10.1.0.1:1107")
        assert kept(store, crowd) == 100
    finally:
        await store.close()
