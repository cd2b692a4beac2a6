"""What feeler dials do for a full peer store (review62 F1, review59 R3): the honest URLs
they prove are kept through a flood of made-up URLs from servers of a few /16s, which
took them before (an honest server's 300 kept 44 with servers of two /16s, 0 with
three). No sockets: the store and the feeler rule on a fake clock, the dials' outcomes
given (a URL of ``live`` works, any other fails)."""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.conftest import FakeClock
from trustp2p.protocol.feelers import FeelerPolicy
from trustp2p.protocol.outbound import OutboundPolicy
from trustp2p.storage.peerstore import PeerSource, PeerStore

from .test_peer_tellers import CAP, LEARNED, PROVEN, fill, kept, made_up

INTERVAL = 120.0  # feeler_interval's default


async def feel(
    store: PeerStore, clock: FakeClock, hours: float, live: Callable[[str], bool]
) -> list[str]:
    """Run ``hours`` of feelers as the client does (one every INTERVAL, the dial's
    outcome recorded as the node records it); the URLs proven."""
    policy = OutboundPolicy(clock=clock)
    feelers = FeelerPolicy(clock=clock, interval=INTERVAL, shuffle=random.Random(1).shuffle)
    feelers.start()
    proven: list[str] = []
    for _ in range(int(hours * 3600 / INTERVAL)):
        clock.advance(INTERVAL)
        dial = feelers.choose(store.untried(), policy, set(), [], store)
        if dial is None:
            continue
        if live(dial.url):
            await store.record_connected(
                peer_id=f"tpf{len(proven)}", url=dial.url, address=dial.url[5:-5]
            )
            proven.append(dial.url)
        else:
            await store.record_failure(dial.url)
            policy.dial_failed(dial.url)
        policy.dial_ended(dial.url)
        feelers.ended()
    return proven


async def full_store(clock: FakeClock) -> tuple[PeerStore, list[str]]:
    """review59 R3's store at a cap of 1,000: the honest server's LEARNED (300,
    untried) and PROVEN (50), and 650 more URLs from 13 other honest servers."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    await fill(store, clock)
    other = [f"ws://172.{16 + j // 50}.{j % 50}.9:1107" for j in range(CAP - 350)]
    for t in range(13):
        batch = other[t * 50 : (t + 1) * 50]
        await store.add_urls(batch, PeerSource.EXCHANGE, teller=f"100.{64 + t}.0.1")
    assert store.size() == CAP
    return store, other


async def flood(store: PeerStore, clock: FakeClock, networks: int, start: int = 0) -> None:
    """Servers of ``networks`` /16s, a fresh address each answer, answer with 100
    made-up URLs each (``made_up(..., start)``), 3 answers a /16 (300 a teller: past
    its share of 128)."""
    attack = made_up(300 * networks, start)
    for k in range(0, len(attack), 100):
        answer = k // 100
        server = f"192.{answer % networks}.{answer // networks}.1"
        await store.add_urls(attack[k : k + 100], PeerSource.EXCHANGE, teller=server)
        clock.advance(1)


async def test_urls_feelers_proved_are_kept_through_a_flood_of_three_networks(
    clock: FakeClock,
) -> None:
    """A day of feelers (720, one every 2 minutes, the tellers taking turns) proves
    the other servers' 650 and 70 of the honest server's; a flood from servers of
    three /16s then forgets none of them. Without feelers the same flood leaves the
    honest server's 300 at 0 (review62 F1 at this cap), and the others' at 566."""
    honest = set(LEARNED)
    store, other = await full_store(clock)
    try:
        proven = await feel(store, clock, 24, (honest | set(other)).__contains__)
        learned = [url for url in proven if url in honest]
        assert len(proven) == 720
        assert len(learned) == 70
        await flood(store, clock, 3)
        assert all(store.knows_url(url) for url in proven)
        assert kept(store, LEARNED) == 70
        assert kept(store, other) == len(other)
        assert kept(store, PROVEN) == len(PROVEN)
    finally:
        await store.close()
    store, other = await full_store(clock)  # the control: no feelers
    try:
        await flood(store, clock, 3)
        assert kept(store, LEARNED) == 0
    finally:
        await store.close()


async def test_failed_feelers_put_made_up_urls_first(clock: FakeClock) -> None:
    """A flood that came first (into a store that filled): the feelers' turns go to
    its tellers too, fail, and count against those URLs (scored -2, forgotten first);
    the honest URLs they prove meanwhile outrank any number of untried ones."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        await fill(store, clock)
        await flood(store, clock, 3)
        attack = made_up(900)
        proven = await feel(store, clock, 6, set(LEARNED).__contains__)
        failed = [r for r in await store.peers() if r.failures and r.urls[0] in attack]
        assert len(failed) + len(proven) == 180  # 6 h of feelers, one in 2 minutes
        assert len(failed) >= 90  # (three tellers of four)
        assert proven
        await flood(store, clock, 30, start=900)  # then servers of 30 /16s: 9,000 more
        assert all(store.knows_url(url) for url in proven)
        assert kept(store, PROVEN) == len(PROVEN)
        assert not any(store.knows_url(r.urls[0]) for r in failed)
    finally:
        await store.close()


async def test_untried_lists_each_tellers_first_in_the_feelers_order(clock: FakeClock) -> None:
    """PeerStore.untried(): never proven, not bootstrap, not blocked or excluded peers;
    each teller's first FEELER_CANDIDATES (fewest failures, then named by several
    groups, then the oldest); a URL no server told takes its host's group's turn."""
    store = await PeerStore.open(None, clock=clock, max_peers=CAP)
    try:
        told = [f"ws://10.{i}.0.1:1107" for i in range(12)]
        for url in told:  # (the first the oldest)
            await store.add_urls([url], PeerSource.EXCHANGE, teller="198.51.100.7")
            clock.advance(1)
        await store.add_urls(["ws://10.11.0.1:1107"], PeerSource.EXCHANGE, teller="203.0.113.9")
        await store.record_failure("ws://10.0.0.1:1107")
        await store.record_connected(peer_id="tpa", url="ws://10.1.0.1:1107", address=None)
        await store.add_urls(["ws://20.1.0.1:1107"], PeerSource.INBOUND, peer_id="tpclaim")
        await store.add_urls(["ws://20.2.0.1:1107"], PeerSource.INBOUND, peer_id="tpblocked")
        await store.block(peer_id="tpblocked", reason="test")
        await store.add_urls(["ws://30.1.0.1:1107"], PeerSource.BOOTSTRAP)
        found = {u.url: u for u in store.untried()}
        assert [u.url for u in store.untried() if u.teller == "198.51.0.0/16"] == [
            "ws://10.11.0.1:1107",  # named by two groups
            *(f"ws://10.{i}.0.1:1107" for i in range(2, 9)),  # then the oldest
        ]
        assert found["ws://10.11.0.1:1107"].seconded
        assert found["ws://20.1.0.1:1107"].teller == "host 20.1.0.0/16"
        assert "ws://20.2.0.1:1107" not in found  # blocked
        assert "ws://30.1.0.1:1107" not in found  # bootstrap
        assert "ws://10.1.0.1:1107" not in found  # proven
        assert "ws://20.1.0.1:1107" not in {u.url for u in store.untried(exclude_ids={"tpclaim"})}
    finally:
        await store.close()
