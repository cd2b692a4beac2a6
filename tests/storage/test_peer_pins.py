"""A URL's ``/p2p/<id>`` pin survives in the peer store: the pinned form of a URL wins
over the unpinned one of the same peer, which would be dialled accepting any key
(tester37 F2: a pin given with ``--connect`` was stored without it, and a later run
without ``--connect`` took another key at that address). No sockets: the store, and the
outbound policy's URLs."""

from __future__ import annotations

from tests.conftest import FakeClock
from tests.storage.conftest import url_owners
from trustp2p.identity import Identity
from trustp2p.protocol.outbound import OutboundPolicy
from trustp2p.storage.peerstore import PeerSource, PeerStore

A, B, C = (Identity.generate().peer_id for _ in range(3))
URL = "ws://10.0.0.1:1107"
PINNED = f"{URL}/p2p/{A}"


async def test_a_pinned_bootstrap_url_is_kept_as_given(store: PeerStore) -> None:
    await store.add_urls([PINNED], PeerSource.BOOTSTRAP)
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1")
    assert await url_owners(store) == {PINNED: A}
    assert store.verified_peer_id(PINNED) == A
    (record,) = await store.peers()
    assert record.source is PeerSource.BOOTSTRAP


async def test_the_pinned_form_takes_the_place_of_the_peers_unpinned_url(
    store: PeerStore, clock: FakeClock
) -> None:
    """A store written before the fix holds the unpinned URL of a bootstrap peer: given
    again with its pin, the pinned form replaces it, history and all."""
    await store.add_urls([URL], PeerSource.BOOTSTRAP)
    await store.record_connected(peer_id=A, url=URL, address="10.0.0.1")
    clock.advance(10.0)
    await store.add_urls([PINNED], PeerSource.BOOTSTRAP)
    assert await url_owners(store) == {PINNED: A}
    assert store.verified_peer_id(PINNED) == A  # it worked: it was the same endpoint
    assert not store.knows_url(URL)
    (record,) = await store.peers()
    assert record.successes == 1


async def test_the_peers_unpinned_url_is_not_added_beside_its_pinned_form(
    store: PeerStore,
) -> None:
    """The peer announces its URL (hello), or a dial of the unpinned URL reaches it: no
    unpinned entry, which a later run would dial taking any key."""
    await store.add_urls([PINNED], PeerSource.BOOTSTRAP)
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1")
    await store.add_urls([URL], PeerSource.EXCHANGE, peer_id=A)
    assert await url_owners(store) == {PINNED: A}
    await store.record_connected(peer_id=A, url=URL, address="10.0.0.1")
    assert await url_owners(store) == {PINNED: A}
    # Passed on without an id: a record of its own until a dial shows it is A's.
    await store.add_urls([URL], PeerSource.EXCHANGE)
    assert await url_owners(store) == {PINNED: A, URL: None}
    await store.record_connected(peer_id=A, url=URL, address="10.0.0.1")
    assert await url_owners(store) == {PINNED: A}
    assert len(await store.peers()) == 1


async def test_another_key_at_the_unpinned_url_leaves_the_pinned_entry(
    store: PeerStore,
) -> None:
    await store.add_urls([PINNED], PeerSource.BOOTSTRAP)
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1")
    await store.add_urls([URL], PeerSource.EXCHANGE)
    await store.record_connected(peer_id=B, url=URL, address="10.0.0.1")
    assert await url_owners(store) == {PINNED: A, URL: B}
    await store.add_urls([f"{URL}/p2p/{B}"], PeerSource.EXCHANGE)  # hearsay: no rename
    assert await url_owners(store) == {PINNED: A, URL: B}


def test_a_pinned_persistent_dial_is_recorded_under_its_pinned_url(clock: FakeClock) -> None:
    """The node reports the URL it dialled (without the pin): its success and failures
    are the pinned entry's, not an unpinned URL's added beside it."""
    policy = OutboundPolicy(clock=clock, target=0)
    policy.add_persistent(PINNED)
    assert policy.store_url(URL) == PINNED
    policy.add_persistent("ws://10.0.0.2:1107")
    assert policy.store_url("ws://10.0.0.2:1107") == "ws://10.0.0.2:1107"
    assert policy.store_url("ws://10.0.0.1:1108") == "ws://10.0.0.1:1108"


async def test_the_peers_hello_before_our_record_leaves_no_unpinned_url(
    store: PeerStore,
) -> None:
    """The peer's hello (its URL, as its own) is often stored before the record of the
    dial that reached it: the two records merge, and the unpinned URL goes."""
    await store.add_urls([PINNED], PeerSource.EXCHANGE)
    await store.add_urls([URL], PeerSource.EXCHANGE, peer_id=A)
    assert await url_owners(store) == {PINNED: None, URL: A}
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1")
    assert await url_owners(store) == {PINNED: A}
    await store.record_connected(peer_id=A, url=URL, address="10.0.0.2")  # ours: the pin's
    assert await url_owners(store) == {PINNED: A}


async def test_a_url_nobody_gave_is_stored_once_it_worked_as_a_bootstrap_peers(
    store: PeerStore,
) -> None:
    """A client's peers are stored once a dial to them worked (tester37 F1), as its
    bootstrap URLs, a peer the store knew from elsewhere too (review51 R1: left as it
    was, a pinned URL's peer could be forgotten); any other URL the store doesn't hold
    (it may have left while we dialled it) makes no bootstrap peer (review50 R1, review51
    R6: any peer could make itself an anchor so)."""
    await store.add_urls(["ws://10.0.0.9:1107"], PeerSource.INBOUND, peer_id=A)
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1", bootstrap=True)
    await store.record_connected(peer_id=B, url=f"{URL}2", address="10.0.0.1", bootstrap=True)
    await store.record_connected(peer_id=C, url=f"{URL}3", address="10.0.0.1")  # (not ours)
    records = {record.peer_id: record for record in await store.peers()}
    assert set(records[A].urls) == {"ws://10.0.0.9:1107", PINNED}
    sources = [records[key].source for key in (A, B, C)]
    assert sources == [PeerSource.BOOTSTRAP, PeerSource.BOOTSTRAP, PeerSource.EXCHANGE]


async def test_a_pin_given_for_a_url_known_from_a_peer_wins_its_source_kept(
    store: PeerStore,
) -> None:
    await store.add_urls([URL], PeerSource.EXCHANGE)
    await store.record_connected(peer_id=A, url=URL, address="10.0.0.1")
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1", bootstrap=True)
    (record,) = await store.peers()
    assert (record.urls, record.source) == ((PINNED,), PeerSource.BOOTSTRAP)


async def test_another_key_at_a_bootstrap_peers_announced_url_is_no_bootstrap_peer(
    store: PeerStore,
) -> None:
    """Found in review (review50 R8): whoever answered at a URL a bootstrap peer had
    announced took that peer's source, and was an anchor the operator never gave."""
    await store.record_connected(peer_id=A, url=PINNED, address="10.0.0.1", bootstrap=True)
    await store.add_urls(["tcp://10.0.0.1:1108"], PeerSource.EXCHANGE, peer_id=A)  # its hello
    await store.record_connected(peer_id=B, url="tcp://10.0.0.1:1108", address="10.0.0.1")
    sources = {record.peer_id: record.source for record in await store.peers()}
    assert sources == {A: PeerSource.BOOTSTRAP, B: PeerSource.EXCHANGE}
    assert not store.is_anchor(B)


async def test_a_pinned_peers_own_urls_are_stored_with_its_pin(store: PeerStore) -> None:
    """Found in review (review51 R7): a pin given on another spelling of a peer's
    address (a name) held there, but the address the peer announced was stored bare,
    and a later run took another key at it without a word."""
    named = f"ws://localhost:1107/p2p/{A}"
    await store.record_connected(peer_id=A, url=named, address="127.0.0.1", bootstrap=True)
    await store.add_urls(["ws://127.0.0.1:1107"], PeerSource.EXCHANGE, peer_id=A)  # its hello
    await store.add_urls(["ws://10.0.0.9:1107"], PeerSource.EXCHANGE, peer_id=B)  # not pinned
    assert await url_owners(store) == {
        named: A,
        f"ws://127.0.0.1:1107/p2p/{A}": A,
        "ws://10.0.0.9:1107": B,
    }
