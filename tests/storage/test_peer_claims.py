"""URLs a peer only claimed (announced as its own, never proven by a dial of ours) give
way when another source names them; proven URLs keep their peer (attacker36 F3: a peer
announced other ports of its host, and a server that later ran there, passed on by an
honest peer, was never dialled). No sockets: the store, and the outbound policy reading
it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FakeClock
from tests.storage.conftest import url_owners
from trustp2p.identity import Identity
from trustp2p.protocol.outbound import OutboundPolicy
from trustp2p.protocol.urls import MAX_URLS_PER_PEER
from trustp2p.storage.peerstore import STORE_PATH, PeerSource, PeerStore

A, G, H = (Identity.generate().peer_id for _ in range(3))


async def test_a_claim_another_source_names_is_no_longer_the_claimants(
    store: PeerStore,
) -> None:
    await store.add_urls(["ws://h:1", "ws://h:2"], PeerSource.INBOUND, peer_id=A)
    await store.record_connected(peer_id=A, url="ws://h:1", address="10.0.0.1")
    # An honest peer passes both on (get_peers carries no id it didn't check itself).
    await store.add_urls(["ws://h:1", "ws://h:2"], PeerSource.EXCHANGE)
    assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": None}
    records = {r.urls: r for r in await store.peers()}
    assert records[("ws://h:2",)].source is PeerSource.EXCHANGE
    assert records[("ws://h:1",)].successes == 1  # the claimant keeps its history
    # The claimant can't take it back by announcing it again (a known URL is never
    # given to the peer announcing it); a dial proves who answers there.
    await store.add_urls(["ws://h:2"], PeerSource.INBOUND, peer_id=A)
    assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": None}
    await store.record_connected(peer_id=H, url="ws://h:2", address="10.0.0.1")
    assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": H}
    # Proven now: hearsay and others' claims leave it with H.
    await store.add_urls(["ws://h:2"], PeerSource.EXCHANGE)
    await store.add_urls(["ws://h:2"], PeerSource.INBOUND, peer_id=A)
    await store.add_urls([f"ws://h:2/p2p/{G}"], PeerSource.EXCHANGE)
    assert (await url_owners(store))["ws://h:2"] == H
    assert len(await store.peers()) == 3  # A, H, and the /p2p/ entry of its own


async def test_another_peers_claim_of_a_claimed_url_makes_it_nobodys(
    store: PeerStore,
) -> None:
    await store.add_urls(["ws://h:1"], PeerSource.INBOUND, peer_id=A)
    await store.add_urls(["ws://h:1"], PeerSource.INBOUND, peer_id=A)  # said again: A's
    assert await url_owners(store) == {"ws://h:1": A}
    await store.add_urls(["ws://h:1"], PeerSource.INBOUND, peer_id=H)
    assert await url_owners(store) == {"ws://h:1": None}  # not H's either: no dial proved it
    assert {r.peer_id for r in await store.peers()} == {A, H, None}


async def test_a_p2p_url_naming_another_peer_disputes_its_dial_urls_claim(
    store: PeerStore,
) -> None:
    await store.add_urls(["ws://h:1", "ws://h:2"], PeerSource.INBOUND, peer_id=A)
    # Naming the claimant agrees with the claim: not stored twice (only the operator's
    # pin renames an entry: review50 R2).
    await store.add_urls([f"ws://h:1/p2p/{A}"], PeerSource.EXCHANGE)
    assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": A}
    await store.add_urls([f"ws://h:2/p2p/{H}"], PeerSource.EXCHANGE)
    assert await url_owners(store) == {
        "ws://h:1": A,
        "ws://h:2": None,
        f"ws://h:2/p2p/{H}": None,
    }


async def test_a_claimed_url_names_no_peer_to_the_dialler(store: PeerStore) -> None:
    await store.add_urls(["ws://h:1"], PeerSource.INBOUND, peer_id=A)
    assert store.peer_id_of("ws://h:1") is None  # announced, never met there
    assert store.verified_peer_id("ws://h:1") is None
    await store.record_connected(peer_id=A, url="ws://h:1", address="10.0.0.1")
    assert store.peer_id_of("ws://h:1") == A
    assert store.verified_peer_id("ws://h:1") == A


async def test_a_bootstrap_url_a_peer_claimed_makes_no_bootstrap_peer_of_it(
    store: PeerStore,
) -> None:
    # (Before: the claimant became a bootstrap peer, an anchor, when the operator
    # configured a URL it had claimed in an earlier run.)
    await store.add_urls(["ws://h:1"], PeerSource.INBOUND, peer_id=A)
    await store.add_urls(["ws://h:1"], PeerSource.BOOTSTRAP)
    sources = {r.peer_id: r.source for r in await store.peers()}
    assert sources == {A: PeerSource.INBOUND, None: PeerSource.BOOTSTRAP}
    assert store.proven("ws://h:1")  # a bootstrap URL, as before


async def test_a_claimant_keeps_at_most_its_url_limit(store: PeerStore, clock: FakeClock) -> None:
    urls = [f"ws://h:{port}" for port in range(1, MAX_URLS_PER_PEER + 3)]
    for url in urls:
        await store.add_urls([url], PeerSource.INBOUND, peer_id=A)
        clock.advance(1)
    await store.add_urls(urls, PeerSource.EXCHANGE)  # its two oldest went: new ones
    (claimant,) = [r for r in await store.peers() if r.peer_id == A]
    assert claimant.urls == ()
    assert sorted(await url_owners(store)) == sorted(urls)


async def test_the_rule_holds_across_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / STORE_PATH
    store = await PeerStore.open(path, clock=clock)
    await store.add_urls(["ws://h:1", "ws://h:2"], PeerSource.INBOUND, peer_id=A)
    await store.record_connected(peer_id=A, url="ws://h:1", address="10.0.0.1")
    await store.close()
    store = await PeerStore.open(path, clock=clock)  # proven or not: written down
    await store.add_urls(["ws://h:1", "ws://h:2"], PeerSource.EXCHANGE)
    assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": None}
    await store.close()
    store = await PeerStore.open(path, clock=clock)
    try:
        assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": None}
        await store.add_urls(["ws://h:2"], PeerSource.INBOUND, peer_id=A)
        assert await url_owners(store) == {"ws://h:1": A, "ws://h:2": None}
    finally:
        await store.close()


# The outbound policy, reading the store.


async def dialled(store: PeerStore, clock: FakeClock, connected: set[str]) -> list[str]:
    """What one managed round dials, with ``connected`` peers connected."""
    policy = OutboundPolicy(clock=clock, shuffle=lambda urls: urls.sort())
    selection = policy.selection(connected, (), store)
    assert selection is not None
    urls: list[str] = []
    while (query := selection.query()) is not None:
        offered = await store.candidates(
            query.limit, exclude_urls=query.exclude_urls, exclude_ids=query.exclude_ids
        )
        urls += [dial.url for dial in selection.offer(offered)]
    return urls


async def test_a_url_a_connected_peer_claimed_is_dialled_once_another_names_it(
    store: PeerStore, clock: FakeClock
) -> None:
    await store.add_urls(["ws://a:1"], PeerSource.BOOTSTRAP)
    await store.record_connected(peer_id=A, url="ws://a:1", address="10.0.0.1")
    await store.add_urls(["ws://a:2"], PeerSource.EXCHANGE, peer_id=A)  # H's port, later
    # A is connected: its URLs, proven or claimed, are not dialled (a peer's other
    # URLs aren't dialled while it is connected: see docs/protocol.md).
    assert await dialled(store, clock, {A}) == []
    await store.add_urls(["ws://a:2"], PeerSource.EXCHANGE)  # G passes H's URL on
    assert await dialled(store, clock, {A}) == ["ws://a:2"]


async def test_a_claim_hides_no_p2p_url_of_its_address(store: PeerStore, clock: FakeClock) -> None:
    # The /p2p/ entry learned first, then the claim of its dial URL: the claim is a new
    # URL, A's; the /p2p/ entry is still dialled (a claim proves nobody is there).
    await store.add_urls([f"ws://a:2/p2p/{H}"], PeerSource.EXCHANGE)
    await store.add_urls(["ws://a:2"], PeerSource.INBOUND, peer_id=A)
    assert await url_owners(store) == {f"ws://a:2/p2p/{H}": None, "ws://a:2": A}
    assert await dialled(store, clock, {A, G}) == [f"ws://a:2/p2p/{H}"]
    # Proven at that address, A's id does hide it while A is connected.
    await store.record_connected(peer_id=A, url="ws://a:2", address="10.0.0.1")
    assert await dialled(store, clock, {A, G}) == []
