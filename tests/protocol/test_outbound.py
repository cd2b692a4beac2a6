"""The outbound policy: whom a client dials, with a fake clock and a fake store."""

from __future__ import annotations

from collections.abc import Collection, Iterable

import pytest

from trustp2p.identity import Identity
from trustp2p.protocol.backoff import served
from trustp2p.protocol.close import CloseCode
from trustp2p.protocol.deliver import ConnId
from trustp2p.protocol.limits import UnprovenDials
from trustp2p.protocol.outbound import (
    RETRY_MEMORY,
    Dial,
    Gate,
    OutboundPolicy,
    Reconnect,
    netgroup_of,
    retry_delay,
)
from trustp2p.protocol.selection import Selection
from trustp2p.protocol.urls import split_peer_url

from ..conftest import FakeClock

A, B, C, D, E, OWN = sorted(Identity.generate().peer_id for _ in range(6))


class FakeStore:
    """
    The peer store as the policy sees it: candidates in rank order, each URL a record
    of its own, excluded as :meth:`PeerStore.candidates` does (the exact URL, or for a
    ``/p2p/`` URL its dial URL; the record's id or the claimed one).
    """

    def __init__(
        self,
        ranked: Iterable[str] = (),
        *,
        ids: dict[str, str] | None = None,
        anchors: Iterable[str] = (),
        proven: Iterable[str] | None = None,
    ) -> None:
        self.ranked = list(ranked)
        # URLs proven (bootstrap, or connected there); None: all of them.
        self.proven_urls = None if proven is None else set(proven)
        self.ids = ids or {}  # URL -> the id of the record holding it
        self.anchor_urls = list(anchors)
        self.anchor_ids: set[str] = set()
        self.blocked_ids: set[str] = set()
        self.blocked_addresses: set[str] = set()
        self.queries: list[int] = []

    def is_blocked(self, *, peer_id: str | None = None, address: str | None = None) -> bool:
        return peer_id in self.blocked_ids or address in self.blocked_addresses

    def peer_id_of(self, url: str) -> str | None:
        return self.ids.get(url)

    def is_anchor(self, peer_id: str) -> bool:
        return peer_id in self.anchor_ids

    def proven(self, url: str) -> bool:
        return self.proven_urls is None or url in self.proven_urls

    def candidates(
        self, limit: int, *, exclude_urls: Collection[str], exclude_ids: Collection[str]
    ) -> list[str]:
        return self._pick(self.ranked, limit, exclude_urls, exclude_ids)

    def anchor_candidates(
        self, limit: int, *, exclude_urls: Collection[str], exclude_ids: Collection[str]
    ) -> list[str]:
        return self._pick(self.anchor_urls, limit, exclude_urls, exclude_ids)

    def _pick(
        self,
        urls: list[str],
        limit: int,
        exclude_urls: Collection[str],
        exclude_ids: Collection[str],
    ) -> list[str]:
        self.queries.append(limit)
        picked = []
        for url in urls:
            dial_url, claimed = split_peer_url(url)
            if url in exclude_urls or (claimed is not None and dial_url in exclude_urls):
                continue
            if self.ids.get(url) in exclude_ids or claimed in exclude_ids:
                continue
            if self.ids.get(url) in self.blocked_ids:
                continue
            picked.append(url)
            if len(picked) == limit:
                break
        return picked


def run(selection: Selection | None, store: FakeStore) -> list[str]:
    """Carry a round out as the dialer does; the store URLs dialled."""
    if selection is None:
        return []
    while (query := selection.query()) is not None:
        fetch = store.anchor_candidates if query.anchors else store.candidates
        selection.offer(
            fetch(query.limit, exclude_urls=query.exclude_urls, exclude_ids=query.exclude_ids)
        )
    return [dial.url for dial in selection.dials]


def make_policy(clock: FakeClock, **options: object) -> OutboundPolicy:
    kwargs: dict[str, object] = {
        "target": 4,
        "max_per_netgroup": 2,
        "anchor_age": 600.0,
        "retry_initial": 1.0,
        "retry_max": 60.0,
        "retry_factor": 2.0,
        "shuffle": lambda urls: None,  # keep the store's order
        **options,
    }
    return OutboundPolicy(clock=clock, **kwargs)  # type: ignore[arg-type]


def round_(
    policy: OutboundPolicy,
    store: FakeStore,
    connected: Collection[str] = (),
    own: Iterable[str] = (),
) -> list[str]:
    return run(policy.selection({*connected, OWN}, own, store), store)


@pytest.fixture
def policy(clock: FakeClock) -> OutboundPolicy:
    return make_policy(clock)


def url(i: int, host: str = "127.0.0.1") -> str:
    return f"ws://{host}:{4000 + i}"


_conns = iter(range(1, 1_000_000))


def connect(policy: OutboundPolicy, dialled: str, peer_id: str | None = None) -> ConnId:
    conn = ConnId(next(_conns))
    policy.connection_opened(conn, dialled, peer_id)
    return conn


# Target arithmetic


def test_a_round_dials_what_is_missing(policy: OutboundPolicy) -> None:
    store = FakeStore(url(i) for i in range(10))
    connect(policy, url(99))
    assert round_(policy, store) == [url(0), url(1), url(2)]
    assert store.queries == [12]  # 4 candidates per connection missing


def test_dials_under_way_count_towards_the_target(policy: OutboundPolicy) -> None:
    store = FakeStore(url(i) for i in range(10))
    assert round_(policy, store) == [url(0), url(1), url(2), url(3)]
    assert policy.missing() == 0
    assert policy.selection({OWN}, (), store) is None


def test_a_connected_managed_dial_counts_once(policy: OutboundPolicy) -> None:
    store = FakeStore(url(i) for i in range(10))
    round_(policy, store)
    conn = connect(policy, url(0), A)  # the dial of url(0) connected
    assert policy.missing() == 0
    policy.connection_closed(conn)
    assert policy.missing() == 0  # its task has not ended yet
    policy.dial_ended(url(0))
    assert policy.missing() == 1
    assert round_(policy, store, connected=[A]) == [url(4)]


def test_persistent_connections_count_towards_the_target(policy: OutboundPolicy) -> None:
    for i in range(4):
        connect(policy, url(90 + i))
    assert policy.missing() == 0
    assert policy.selection(set(), (), FakeStore([url(1)])) is None


def test_target_zero_dials_nothing(clock: FakeClock) -> None:
    policy = make_policy(clock, target=0)
    assert policy.selection(set(), (), FakeStore([url(1)])) is None


def test_without_a_store_nothing_is_dialled_from_it(policy: OutboundPolicy) -> None:
    selection = policy.selection(set(), (), None)
    assert selection is not None
    assert selection.offer([url(1)]) == [Dial(url(1), url(1), None)]


# Netgroups


def test_at_most_two_per_netgroup_loopback_and_memory_exempt(clock: FakeClock) -> None:
    policy = make_policy(clock, target=30)
    urls = [
        *(f"ws://10.1.0.{i}:1107" for i in range(1, 5)),
        "ws://[::ffff:10.1.9.9]:1107",  # IPv4-mapped: 10.1.0.0/16 too
        *(f"ws://10.2.{i}.1:1107" for i in range(1, 4)),
        *(f"tcp://[2001:db8:{i}::1]:1107" for i in range(1, 4)),
        "ws://a.example:1107",
        "ws://b.example:1107",
        *(url(i) for i in range(4)),
        "ws://localhost:1107",
        "memory://127.0.0.1:1",
        "memory://127.0.0.1:2",
        "memory://memory:3",
    ]
    dialled = round_(policy, FakeStore(urls))
    groups: dict[str | None, int] = {}
    for dialled_url in dialled:
        group = netgroup_of(dialled_url)
        groups[group] = groups.get(group, 0) + 1
    assert groups == {
        "10.1.0.0/16": 2,
        "10.2.0.0/16": 2,
        "2001:db8::/32": 2,
        "a.example": 1,
        "b.example": 1,
        None: 8,
    }


def test_dials_under_way_and_connections_fill_a_netgroup(clock: FakeClock) -> None:
    policy = make_policy(clock, target=10)
    connect(policy, "ws://10.1.0.1:1107")
    store = FakeStore([f"ws://10.1.0.{i}:1107" for i in range(2, 9)])
    assert round_(policy, store) == ["ws://10.1.0.2:1107"]
    # Another round (peer exchange woke the manager): the dial under way counts.
    assert round_(policy, store) == []


def test_netgroup_of() -> None:
    assert netgroup_of("ws://10.1.2.3:1") == "10.1.0.0/16"
    assert netgroup_of("ws://[::ffff:10.1.2.3]:1") == "10.1.0.0/16"
    assert netgroup_of("tcp://[2001:db8:1:2::1]:1") == "2001:db8::/32"
    assert netgroup_of(f"ws://10.1.2.3:1/p2p/{A}") == "10.1.0.0/16"
    assert netgroup_of("ws://Name.Example:1") == "name.example"
    assert netgroup_of("ws://127.0.0.2:1") is None
    assert netgroup_of("ws://[::1]:1") is None
    assert netgroup_of("ws://localhost:1") is None
    assert netgroup_of("memory://memory:1") is None
    assert netgroup_of("memory://127.0.0.1:1") is None


# Retries and backoff


def test_a_failed_url_waits_longer_after_each_failure(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    store = FakeStore([url(1)])
    for delay in (1.0, 2.0, 4.0, 8.0):
        assert round_(policy, store) == [url(1)]
        assert policy.dial_failed(url(1)) == delay
        policy.dial_ended(url(1))
        clock.advance(delay - 0.001)
        assert round_(policy, store) == []
        clock.advance(0.001)
    assert policy.failures(url(1)) == 4


def test_a_lasting_failure_waits_the_longest_delay_at_once(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    """The peer there runs the other mode (secure vs plain): it can't work until a
    configuration changes. A new-user tester saw 4 dials of such a URL in 14 s."""
    store = FakeStore([url(1)])
    assert round_(policy, store) == [url(1)]
    assert policy.dial_failed(url(1), lasting=True) == 60.0
    policy.dial_ended(url(1))
    clock.advance(59.999)
    assert round_(policy, store) == []
    clock.advance(0.001)
    assert round_(policy, store) == [url(1)]


def test_retry_delay_is_capped_and_never_overflows() -> None:
    assert [retry_delay(n, 1.0, 60.0, 2.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000, 1.0, 60.0, 2.0) == 60.0
    assert retry_delay(10_000, 0.5, 5.0, 3.0) == 5.0
    assert retry_delay(10_000, 2.0, 10.0, 1.0) == 2.0


def test_retries_long_over_are_forgotten(clock: FakeClock, policy: OutboundPolicy) -> None:
    """Found in review: every URL that ever failed stayed for the node's life, and each
    round walked them all (3.6 ms a round with 100,000)."""
    dead = [url(i, f"10.0.{i // 250}.{i % 250}") for i in range(1000)]
    for dialled in dead:
        policy.dial_failed(dialled)
    policy.dial_failed(dead[0])  # two in a row: 2 s
    assert policy.failures(dead[0]) == 2 and len(policy.excluded(set())) == 1000
    clock.advance(2.0 + RETRY_MEMORY - 0.001)  # its retry came, not an hour ago yet
    assert policy.failures(dead[0]) == 2 and policy.excluded(set()) == set()
    assert policy.failing_urls == {dead[0]}  # the others' retries came at 1 s
    clock.advance(0.001)
    assert policy.excluded(set()) == set()
    assert policy.failing_urls == set() and policy.failures(dead[0]) == 0
    assert policy.dial_failed(dead[0]) == 1.0  # the delays start afresh
    assert policy.failures(dead[0]) == 1


def test_a_connection_forgets_the_failures(clock: FakeClock, policy: OutboundPolicy) -> None:
    store = FakeStore([url(1)])
    round_(policy, store)
    policy.dial_failed(url(1))
    policy.dial_ended(url(1))
    clock.advance(1.0)
    round_(policy, store)
    connect(policy, url(1), A)
    assert policy.failures(url(1)) == 0
    assert policy.failing_urls == set()


def test_a_connection_closed_at_once_waits_like_a_failed_dial(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    # A server that refuses us after the handshake (full, or a reconnect storm): the
    # connection opens and closes at once. It is not redialled at once (before: 450
    # dials a second), but after 1, 2, 4, ... s.
    store = FakeStore([url(1)])
    for delay in (1.0, 2.0, 4.0, 8.0):
        assert round_(policy, store) == [url(1)]
        conn = connect(policy, url(1))
        clock.advance(0.01)
        policy.connection_closed(conn)
        policy.dial_ended(url(1))
        clock.advance(delay - 0.001)  # from the close
        assert round_(policy, store) == []
        clock.advance(0.001)
    # One that stays up as long as the next delay starts the delays over.
    assert round_(policy, store) == [url(1)]
    conn = connect(policy, url(1))
    clock.advance(16.0)
    policy.connection_closed(conn)
    policy.dial_ended(url(1))
    assert round_(policy, store) == [url(1)]
    conn = connect(policy, url(1))
    policy.connection_closed(conn)
    policy.dial_ended(url(1))
    clock.advance(0.999)
    assert round_(policy, store) == []
    assert policy.failures(url(1)) == 0  # not failures: nothing counts in the store


def test_a_persistent_connection_closed_at_once_is_left_to_its_reconnect(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    policy.add_persistent(url(1))
    policy.connection_closed(connect(policy, url(1)))
    assert policy.excluded(()) == set()


def test_a_failure_counts_against_the_entry_being_dialled(policy: OutboundPolicy) -> None:
    entry = f"{url(1)}/p2p/{A}"
    assert round_(policy, FakeStore([entry])) == [entry]
    assert policy.store_url(url(1)) == entry
    policy.dial_failed(url(1))  # the node reports the URL it dialled
    assert policy.failing_urls == {entry}
    policy.dial_ended(entry)
    assert policy.store_url(url(1)) == url(1)
    policy.dial_failed(url(1))  # a persistent dial of the same address, say
    assert policy.failing_urls == {entry, url(1)}


def test_a_failed_address_waits_its_retry_under_any_spelling(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    """Found by a tester: a store holding a peer's URL with its /p2p/ id and without it
    dialled the down peer twice a round (the anchor round, then the regular one, the
    first dial failed by then), and counted two failures against it each time."""
    entry, bare = f"{url(1)}/p2p/{A}", url(1)
    assert round_(policy, FakeStore([entry])) == [entry]
    policy.dial_failed(url(1))
    policy.dial_ended(entry)
    assert round_(policy, FakeStore([bare])) == []  # the address waits its retry
    assert policy.failing_urls == {entry}  # one failure a round, not two
    clock.advance(1.0)
    assert round_(policy, FakeStore([bare])) == [bare]
    connect(policy, url(1), A)  # a connection there forgets the wait
    assert policy.excluded(()) == set()


def test_short_of_the_target_a_round_runs_when_a_proven_url_may_be_retried(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    """Found by a tester: a server known from the store that restarted in 2 s failed one
    dial and was dialled again only at the next exchange_interval, a minute later: the
    manager slept while the URL waited out its 1 s retry."""
    store = FakeStore([url(1), url(2)], proven=[url(1)])
    assert round_(policy, store) == [url(1), url(2)]
    for dialled in (url(1), url(2)):
        policy.dial_failed(dialled)
        policy.dial_ended(dialled)
    assert policy.wake_in(store) == 1.0  # url(1)'s retry (url(2) is paced as unproven)
    clock.advance(0.25)
    assert policy.wake_in(store) == 0.75
    clock.advance(0.75)
    assert policy.wake_in(store) is None  # nothing waits now: the round dials it
    assert round_(policy, store) == [url(1), url(2)]
    policy.dial_failed(url(1))
    policy.dial_ended(url(1))
    assert policy.wake_in(store) == 2.0  # its second failure: the next delay
    full = make_policy(clock, target=1)
    connect(full, url(3), A)
    full.dial_failed(url(1))  # (a persistent dial's, say)
    assert full.wake_in(store) is None  # at the target: nothing to dial it for


def test_a_url_naming_the_wrong_peer_id_does_not_hold_its_address(
    clock: FakeClock, policy: OutboundPolicy
) -> None:
    """Found by CI (a race since the address-wide wait): of two URLs listed for one
    address, one with the wrong /p2p/ id, the wrong one's failure held the address, and
    the right one waited its retry."""
    wrong, right = f"{url(1)}/p2p/{A}", f"{url(1)}/p2p/{B}"
    assert round_(policy, FakeStore([wrong])) == [wrong]
    policy.dial_failed(wrong, address=False)
    policy.dial_ended(wrong)
    assert round_(policy, FakeStore([wrong, right])) == [right]
    assert policy.failing_urls == {wrong}


# Busy and duplicate addresses


def test_one_dial_per_address_whatever_the_spelling(policy: OutboundPolicy) -> None:
    spellings = [f"ws://127.0.0.1:4001/p2p/{A}", "WS://127.0.0.1:4001/", url(1), url(2)]
    assert round_(policy, FakeStore(spellings)) == [spellings[0], url(2)]


def test_persistent_connected_and_own_addresses_are_not_dialled(
    policy: OutboundPolicy,
) -> None:
    assert policy.add_persistent("WS://127.0.0.1:4001/")
    connect(policy, url(2))
    store = FakeStore(url(i) for i in range(1, 6))
    assert round_(policy, store, own=[url(3)]) == [url(4), url(5)]


def test_a_persistent_address_is_added_once(policy: OutboundPolicy) -> None:
    assert policy.add_persistent(url(1))
    assert not policy.add_persistent(f"WS://127.0.0.1:4001/p2p/{A}")
    assert policy.persistent_urls == [url(1)]
    assert policy.remove_persistent("ws://127.0.0.1:4001/") == url(1)
    assert policy.remove_persistent(url(1)) is None


def test_a_round_dials_proven_candidates_before_others(clock: FakeClock) -> None:
    """An attacker's test: busy sybils that only ever dialled the node ranked among the
    best candidates, and the shuffle among the best gave them 6 of 8 slots after a
    restart. Proven URLs come first, in the store's order (another attacker's test:
    shuffled among the best, 40 sybils dialled once took 8 of 8 slots from 3 honest
    peers ranked first); the others are shuffled."""
    policy = make_policy(clock, target=3, shuffle=lambda urls: urls.reverse())
    hosts = [f"10.{i}.0.1" for i in range(1, 7)]  # one netgroup each
    ranked = [url(i, host) for i, host in enumerate(hosts)]
    store = FakeStore(ranked, proven=[ranked[3], ranked[4]])
    assert round_(policy, store) == [ranked[3], ranked[4], ranked[5]]


def test_a_persistent_address_is_pinned_in_place(policy: OutboundPolicy) -> None:
    pinned = f"ws://127.0.0.1:4001/p2p/{A}"
    assert policy.add_persistent(url(1)) and policy.add_persistent(url(2))
    policy.pin_persistent(pinned)  # connect() of it: the address's next dials
    assert policy.persistent_urls == [pinned, url(2)]
    assert policy.persistent_url("WS://127.0.0.1:4001/") == pinned
    policy.pin_persistent(f"ws://127.0.0.1:4009/p2p/{A}")  # not persistent: nothing
    assert policy.persistent_url(url(9)) is None
    assert policy.remove_persistent(url(1)) == pinned


def test_an_address_the_application_disconnected_from_is_not_dialled_again(
    policy: OutboundPolicy,
) -> None:
    # Before, the manager picked a disconnected bootstrap URL again from the store.
    store = FakeStore(url(i) for i in range(1, 4))
    policy.remove_persistent(f"WS://127.0.0.1:4001/p2p/{A}")  # any spelling
    assert round_(policy, store) == [url(2), url(3)]
    assert policy.add_persistent(url(1))  # connect() again: dialled for good...
    assert policy.remove_persistent(url(1)) == url(1)  # ...until disconnected again
    assert round_(policy, FakeStore([url(1), url(4)])) == [url(4)]


# Peer ids


def test_a_connected_peer_is_not_dialled_at_a_url_where_we_met_it(
    policy: OutboundPolicy,
) -> None:
    policy.remember_peer(url(1), A)  # a duplicate connection to A was refused there
    store = FakeStore([url(1), url(2)])
    assert round_(policy, store, connected=[A]) == [url(2)]
    assert round_(policy, FakeStore([url(1)])) == [url(1)]  # A is gone: dial it again


def test_a_connected_or_own_claimed_id_is_not_dialled(policy: OutboundPolicy) -> None:
    store = FakeStore([f"{url(1)}/p2p/{A}", f"{url(2)}/p2p/{OWN}", url(3)])
    assert round_(policy, store, connected=[A]) == [url(3)]


def test_the_id_the_store_knows_for_a_url_counts(policy: OutboundPolicy) -> None:
    selection = policy.selection({A, OWN}, (), FakeStore(ids={url(1): A, url(2): "address:x"}))
    assert selection is not None
    # Offered all the same (the store may not know who is connected): checked here.
    assert [dial.url for dial in selection.offer([url(1), url(2)])] == [url(2)]


# Blocked peers


def test_blocked_peers_and_addresses_are_not_dialled(policy: OutboundPolicy) -> None:
    store = FakeStore(ids={url(1): A})
    store.blocked_ids = {A, B}
    store.blocked_addresses = {"192.0.2.1", "127.0.0.1"}
    selection = policy.selection({OWN}, (), store)
    assert selection is not None
    offered = [url(1), f"{url(2)}/p2p/{B}", "ws://192.0.2.1:1107", url(3)]
    # Loopback addresses are never blocked: every local peer shares them.
    assert [dial.url for dial in selection.offer(offered)] == [url(3)]


# The stall: candidates that can't be dialled must not hide those that can


def test_a_round_looks_past_best_candidates_it_cannot_dial(policy: OutboundPolicy) -> None:
    # Seen in the 20-node discovery test: three of four outbound peers, and the store's
    # best four URLs (records without an id) lead to peers connected already (we met
    # them there; they dialled us too). Asking the store for 4 and dialling none of
    # them stalled the node at 3 of 4 for good.
    for i, peer in enumerate((A, B, C, D)):
        policy.remember_peer(url(i), peer)
    for i in range(3):
        connect(policy, url(10 + i))
    store = FakeStore([*(url(i) for i in range(4)), url(5)])
    assert round_(policy, store, connected=[A, B, C, D]) == [url(5)]


def test_a_round_looks_past_full_netgroups(clock: FakeClock) -> None:
    policy = make_policy(clock, target=3)
    connect(policy, "ws://10.1.0.1:1107")
    connect(policy, "ws://10.1.0.2:1107")
    store = FakeStore([*(f"ws://10.1.1.{i}:1107" for i in range(20)), "ws://10.2.0.1:1107"])
    assert round_(policy, store) == ["ws://10.2.0.1:1107"]
    assert store.queries == [4, 8, 16]  # each query leaves out what was offered before


def test_a_round_looks_past_other_spellings_of_busy_addresses(policy: OutboundPolicy) -> None:
    for i in range(4):
        policy.add_persistent(url(i))  # the fourth one is being dialled
    for i in range(3):
        connect(policy, url(i))
    # The store spells them its own way: it can't leave them out.
    store = FakeStore([*(f"WS://127.0.0.1:{4000 + i}/" for i in range(4)), "ws://[::1]:1", url(5)])
    assert round_(policy, store) == ["ws://[::1]:1"]


def test_a_round_ends_when_the_store_has_no_more(clock: FakeClock) -> None:
    policy = make_policy(clock, target=1)
    store = FakeStore(f"ws://10.1.{i}.1:1107" for i in range(100))
    for i in range(100):
        policy.dial_failed(f"ws://10.1.{i}.1:1107")  # all waiting for a retry
    policy.remember_peer(url(1), A)
    selection = policy.selection({A}, (), store)
    assert selection is not None
    query = selection.query()
    assert query is not None
    # What the policy knows it won't dial is left out of the first query already.
    assert {url(1), "ws://10.1.5.1:1107"} <= query.exclude_urls
    assert run(selection, store) == []
    assert store.queries == [4]


def test_a_store_that_repeats_itself_ends_the_round(policy: OutboundPolicy) -> None:
    selection = policy.selection({OWN}, [url(1)], None)
    assert selection is not None
    assert selection.query() is not None
    assert selection.offer([url(1)] * 16) == []  # our own URL: not dialled
    assert selection.query() is not None  # a full answer: there may be more
    assert selection.offer([url(1)] * 32) == []
    assert selection.query() is None  # nothing new: the round is over


# Anchors


def anchored(clock: FakeClock, target: int = 1) -> tuple[OutboundPolicy, FakeStore]:
    """A policy (at its target by default) with one outbound peer met through others
    (no anchor), and a store that knows a bootstrap peer."""
    policy = make_policy(clock, target=target, bootstrap=[f"{url(50)}/p2p/{E}"])
    connect(policy, url(1), A)
    store = FakeStore(anchors=[url(2), url(3), url(50)])
    return policy, store


def anchor_round(
    policy: OutboundPolicy, store: FakeStore, connected: Iterable[str] = ()
) -> list[str]:
    return run(policy.anchor_selection({A, OWN, *connected}, (), store), store)


def test_without_an_anchor_one_is_dialled_past_the_target(clock: FakeClock) -> None:
    policy, store = anchored(clock)
    assert policy.missing() == 0
    assert anchor_round(policy, store) == [url(2)]  # the store's order: no shuffle
    assert policy.dials[0].anchor


def test_one_anchor_dial_at_a_time(clock: FakeClock) -> None:
    policy, store = anchored(clock)
    anchor_round(policy, store)
    assert policy.anchor_selection({A}, (), store) is None
    policy.dial_ended(url(2))
    assert anchor_round(policy, store) == [url(2)]


def test_a_bootstrap_dial_under_way_is_the_anchor(clock: FakeClock) -> None:
    policy, store = anchored(clock, target=2)
    assert round_(policy, FakeStore([f"WS://127.0.0.1:4050/p2p/{E}"]), connected=[A]) != []
    assert policy.anchor_selection({A}, (), store) is None


def test_an_anchor_is_not_dialled_without_outbound_peers(clock: FakeClock) -> None:
    policy = make_policy(clock, target=1)
    assert policy.anchor_selection(set(), (), FakeStore(anchors=[url(2)])) is None


def test_a_bootstrap_connection_anchors(clock: FakeClock) -> None:
    policy, store = anchored(clock)
    connect(policy, "ws://127.0.0.1:4050/", E)
    assert policy.anchor_selection({A, E}, (), store) is None


def test_a_long_lived_connection_anchors(clock: FakeClock) -> None:
    policy, store = anchored(clock)
    clock.advance(599.9)
    assert policy.anchor_selection({A}, (), store) is not None
    clock.advance(0.1)
    assert policy.anchor_selection({A}, (), store) is None


def test_a_peer_known_before_this_run_anchors(clock: FakeClock) -> None:
    policy, store = anchored(clock)
    store.anchor_ids = {A}
    assert policy.anchor_selection({A}, (), store) is None


def test_anchor_candidates_follow_the_same_rules(clock: FakeClock) -> None:
    policy, store = anchored(clock)
    policy.remember_peer(url(2), B)
    policy.dial_failed(url(3))
    assert anchor_round(policy, store, connected=[B]) == [url(50)]


# Persistent URLs


def test_the_gate_of_a_persistent_url(policy: OutboundPolicy) -> None:
    store = FakeStore(ids={url(2): B})
    assert policy.gate(url(1), {OWN}, store) == (Gate.DIAL, None)
    assert policy.gate(f"{url(1)}/p2p/{A}", {A}, store) == (Gate.WAIT_FOR_PEER, A)
    assert policy.gate(url(2), {B}, store) == (Gate.WAIT_FOR_PEER, B)
    assert policy.gate(url(2), set(), store) == (Gate.DIAL, B)
    policy.remember_peer(url(3), C)
    assert policy.gate(url(3), {C}, None) == (Gate.WAIT_FOR_PEER, C)
    store.blocked_ids = {B}
    assert policy.gate(url(2), set(), store) == (Gate.BACK_OFF, B)
    store.blocked_addresses = {"192.0.2.1", "127.0.0.1"}
    assert policy.gate("ws://192.0.2.1:1", set(), store) == (Gate.BACK_OFF, None)
    assert policy.gate(url(1), set(), store) == (Gate.DIAL, None)  # loopback: never


def test_reconnect_delays_grow_and_start_over_after_staying_up(clock: FakeClock) -> None:
    reconnect = Reconnect(clock=clock, initial=1.0, maximum=8.0, jitter=0.0)
    assert [reconnect.failed() for _ in range(3)] == [1.0, 2.0, 4.0]
    reconnect.opened()
    clock.advance(7.9)
    assert reconnect.closed() == 8.0  # up for less than the next delay: it grows on
    reconnect.opened()
    clock.advance(8.0)
    assert reconnect.closed() == 1.0  # up at least that long: from the shortest again
    assert reconnect.failed() == 2.0


def test_reconnect_starts_over_after_a_connection_the_peer_spoke_on(clock: FakeClock) -> None:
    """tester38 F4: a 3 s connection, introduced, a request answered, was taken for one
    the server closed at once; clients came back 4-8 s after its second quick restart.
    One the peer spoke on for ``initial`` seconds at least starts the delays over."""
    reconnect = Reconnect(clock=clock, initial=1.0, maximum=8.0, jitter=0.0)
    assert [reconnect.failed() for _ in range(3)] == [1.0, 2.0, 4.0]
    reconnect.opened()
    clock.advance(0.9)
    assert reconnect.closed(worked=True) == 8.0  # under a second: as if closed at once
    reconnect.opened()
    clock.advance(3.0)
    assert reconnect.closed(worked=False) == 8.0  # nothing from the peer: grows on
    reconnect.opened()
    clock.advance(3.0)
    assert reconnect.closed(worked=True) == 1.0


def test_reconnect_checks_its_arguments_at_once(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match=r"^need 0 < initial <= maximum, not 2\.0 and 1\.0$"):
        Reconnect(clock=clock, initial=2.0, maximum=1.0)


def test_reconnect_jitter_shortens_delays(clock: FakeClock) -> None:
    reconnect = Reconnect(clock=clock, initial=1.0, maximum=8.0, jitter=0.5, rng=lambda: 0.5)
    assert [reconnect.failed() for _ in range(2)] == [0.75, 1.5]


# Dials to unproven addresses (learned from peers, never connected to) are bounded.


def test_unproven_dials_are_bounded_in_number_and_rate(clock: FakeClock) -> None:
    policy = make_policy(clock, target=100)
    store = FakeStore([url(i) for i in range(100)], proven=())
    first = round_(policy, store)
    assert first == [url(i) for i in range(8)]  # the burst: a full outbound set at once
    assert policy.wake_in() is None  # 8 under way: one must end first
    for dialled in first:  # all fail at once
        assert policy.dial_done(dialled)  # a round left some out: run one
        policy.dial_failed(dialled)
        policy.dial_ended(dialled)
    assert policy.wake_in() == 2.0  # the bucket is empty: 0.5/s
    assert round_(policy, store) == []
    clock.advance(2.0)
    assert len(round_(policy, store)) == 1
    clock.advance(10.0)
    assert len(round_(policy, store)) == 5


def test_dials_in_a_window_never_exceed_the_bound(clock: FakeClock) -> None:
    # Woken as often as it likes (every 0.1 s), each dial failing at once: at most the
    # burst plus 0.5/s, whatever the list.
    policy = make_policy(clock, target=100)
    store = FakeStore([url(i) for i in range(100)], proven=())
    dials = 0
    for _ in range(120):  # 12 s
        for dialled in round_(policy, store):
            dials += 1
            policy.dial_done(dialled)
            policy.dial_failed(dialled)
            policy.dial_ended(dialled)
        clock.advance(0.1)
    # 8 at once, then one per 2 s (before the bound: 300 dials in 12 s were measured).
    assert dials == 13


def test_proven_urls_are_not_bounded(clock: FakeClock) -> None:
    bootstrap = url(0)
    policy = make_policy(
        clock, target=20, bootstrap=[bootstrap], unproven=UnprovenDials(max_concurrent=1)
    )
    met = url(1)
    conn = connect(policy, met, A)  # a peer proved its id there in this run
    policy.connection_closed(conn)
    connected_before = url(2)
    store = FakeStore([bootstrap, met, connected_before, url(3), url(4)], proven=[connected_before])
    assert round_(policy, store) == [bootstrap, met, connected_before, url(3)]
    assert policy.is_proven(f"{url(2)}", store)
    assert not policy.is_proven(url(4), store)
    assert policy.wake_in() is None  # url(4) waits for url(3)'s dial to end
    assert policy.dial_done(url(3))
    assert policy.wake_in() == 0.0
    assert round_(policy, store) == [url(4)]


def test_a_url_claiming_an_id_is_not_proven_by_the_claim(clock: FakeClock) -> None:
    policy = make_policy(clock, unproven=UnprovenDials(max_concurrent=1))
    claimed = f"{url(1)}/p2p/{B}"
    store = FakeStore([f"{url(0)}/p2p/{A}", claimed], proven=())
    assert round_(policy, store) == [f"{url(0)}/p2p/{A}"]
    assert not policy.is_proven(claimed, store)


@pytest.mark.parametrize(
    ("messages_in", "close_code", "worked"),
    [
        (3, CloseCode.GOING_AWAY, True),  # the server stopped, or restarts
        (3, CloseCode.ABNORMAL_CLOSURE, True),  # killed, or the link dropped
        (3, CloseCode.NORMAL_CLOSURE, True),
        (3, 1005, True),  # a close frame without a code
        (0, CloseCode.GOING_AWAY, False),  # nothing from the peer
        (3, CloseCode.POLICY_VIOLATION, False),  # refused, once introduced
        (3, CloseCode.TRY_AGAIN_LATER, False),
        (3, CloseCode.PROTOCOL_ERROR, False),
        (3, None, False),
    ],
)
def test_a_connection_served_us_if_the_peer_spoke_and_did_not_refuse_us(
    messages_in: int, close_code: int | None, worked: bool
) -> None:
    """review55 R6: the peer's introduction comes first, so "it spoke" held for every
    connection, and a server refusing us a second after letting us in was redialled
    every ``reconnect_initial`` for ever."""
    assert served(messages_in, close_code) is worked
