"""
What a catch-up round asks for while messages are held behind a stream's gap, with no
sockets: a :class:`Fetcher` whose requests a fake peer answers from its log, on a fake
clock (the decisions are the sans-I/O core's: ``plan_fetches``, ``Fetch``, ``Streams``).

- review19 F4: the messages held are not fetched again in each round while the gap
  waits (20,000 to 22,000 served for the 2,000 needed);
- attacker30 F1: the gap itself is still asked for as a range, which a peer answers from
  its first kept message (the first fix asked only past the last message held, and a
  restarted node lost 9,000 of 12,000 messages its peers kept).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trustp2p.identity import Identity
from trustp2p.node import gossip_catchup
from trustp2p.node.gossip_catchup import Fetcher
from trustp2p.protocol.gossip import (
    FETCH,
    HWM,
    ORIGIN_GRACE,
    CatchUp,
    Deliver,
    FetchRange,
    GapSkipped,
    GossipMessage,
    OriginsGone,
    ReleaseMarks,
    RoundBudget,
    Streams,
    decode_fetch_request,
    fetch_answer,
    gap_fetch,
    sign_message,
    stream_key,
)
from trustp2p.protocol.package import Body

from .conftest import FakeClock

TOPIC = "chat"
ORIGIN = Identity(Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32))
STREAM = stream_key(TOPIC, ORIGIN.peer_id)
BATCH = 100


def _message(seq: int) -> GossipMessage:
    return sign_message(ORIGIN, TOPIC, seq, 1_700_000_000_000, {"n": seq})


class Marks:
    """Delivered marks in a dict (the message log's)."""

    forgotten_before = 0.0

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}

    def delivered(self, stream: str) -> int:
        return self.marks.get(stream, 0)

    def mark_delivered(self, stream: str, seq: int) -> None:
        self.marks[stream] = max(seq, self.marks.get(stream, 0))


class Peer:
    """A peer whose log keeps ``seqs`` of the stream: answers ``gossip/hwm`` and
    ``gossip/fetch`` as ``GossipThread`` does, and counts what it serves."""

    def __init__(self, seqs: range) -> None:
        self.log = {seq: _message(seq) for seq in seqs}
        self.served = 0
        self.asked: list[Body] = []
        self.hwm_asked = 0
        self.takes_a_turn = False
        self.waiting = False  # it says it waits for what it lacks, from their origin

    def answer(self, event: str, body: Body) -> Body:
        last = max(self.log)
        if event == HWM:
            self.hwm_asked += 1
            return {"hwm": {TOPIC: {ORIGIN.peer_id: last}}}
        assert event == FETCH
        self.asked.append(body)
        wanted = decode_fetch_request(body)
        numbers = range(wanted.first, wanted.last + 1) if wanted.seqs is None else wanted.seqs
        kept = [self.log[seq] for seq in numbers if seq in self.log][: body["limit"]]
        self.served += len(kept)
        answer = fetch_answer(kept, body["max_bytes"], last)
        if self.waiting:
            answer["waiting"] = True
        return answer


class Node:
    """What :class:`Fetcher` uses of a node's gossip, with its order (``streams``)."""

    def __init__(
        self, clock: FakeClock, wall: float = 1_700_000_000.0, *, local: bool = True
    ) -> None:
        self.marks = ReleaseMarks(Marks())
        self.streams: Streams[Any] = Streams(
            self.marks, clock=clock, wall_clock=lambda: wall,
            gap_timeout=30.0, max_age=None,
        )  # fmt: skip
        self.logged: dict[int, GossipMessage] = {}  # what the node's log keeps
        self.delivered: list[int] = []
        options = SimpleNamespace(
            log_max_bytes=64 * 2**20, catchup_interval=30.0, max_package_size=2**20,
            open_timeout=10.0,
        )  # fmt: skip
        self.tasks: list[Coroutine[Any, Any, None]] = []  # refills, to await
        self.sockets: list[Any] = []  # none unless a test connects some...
        self.peers: dict[str, None] = {}  # ...and introduces them, by id
        self.catchup = CatchUp(batch=BATCH, clock=clock)
        self.origins = OriginsGone(clock, 30.0)  # (none gone unless a test says so)
        gossip = SimpleNamespace(
            node=SimpleNamespace(
                options=options,
                penalize=self._penalize,
                sockets=self.sockets,  # (the carriers asked for a stream's start)
                connections=SimpleNamespace(
                    share_group=lambda socket: None if local else socket.host,
                    budget_key=lambda socket: str(socket.id),
                ),
            ),
            router=SimpleNamespace(
                topics={TOPIC}, peer_topics=lambda conn_id: {TOPIC}, peers=self.peers
            ),
            catchup=self.catchup,
            origins=self.origins,
            tasks=SimpleNamespace(
                spawn=lambda coroutine, name: self.tasks.append(coroutine), closed=False
            ),
        )
        self.gossip = gossip  # (a test may give its node roles)
        self.fetcher = FakeFetcher(
            gossip,  # type: ignore[arg-type]
            streams=self.streams,
            marks=self.marks,
            log=SimpleNamespace(high_water=self._high_water),  # type: ignore[arg-type]
            queues=SimpleNamespace(batch=_room),  # type: ignore[arg-type]
            rng=random.Random(1),
            take=self._take,
            held_back=lambda topic: False,
            clock=clock,
        )

    def add(self, seq: int) -> None:
        """A message arrives (live, or pushed): logged, then in order."""
        self._take(None, [_message(seq)])

    def _take(self, socket: object, messages: list[GossipMessage]) -> float:
        for message in messages:
            if self.streams.is_stale(message) or message.seq in self.logged:
                continue  # (the node drops a copy by id)
            self.logged[message.seq] = message
            for event in self.streams.add(message, socket):
                if isinstance(event, Deliver):
                    self.delivered.append(event.message.seq)
        return 0.0  # (within the node's checks)

    def _high_water(self, topic: str) -> dict[str, int]:
        """The log's contiguous mark from the first message it keeps."""
        if not self.logged:
            return {}
        mark = min(self.logged)
        while mark + 1 in self.logged:
            mark += 1
        return {STREAM: mark}

    @staticmethod
    def _penalize(socket: object, reason: str) -> None:
        raise AssertionError(reason)


class FakeFetcher(Fetcher):
    """Asks the fake peer of a fake socket (:func:`_socket`)."""

    async def ask(self, socket: Any, event: str, body: Body) -> Body | None:
        peer: Peer = socket.fake
        if peer.takes_a_turn:
            await asyncio.sleep(0)  # (an answer comes later: other rounds run meanwhile)
        return peer.answer(event, body)


class _Socket:
    """What the fetcher reads of a socket (hashable, as sockets are), with the peer
    that answers it."""

    def __init__(self, peer: Peer, name: str, peer_id: str | None = None) -> None:
        self.peer, self.id, self.fake, self.peer_id = name, name, peer, peer_id
        self.inbound = True  # (they dialled us: the first connected is the anchor)


def _socket(peer: Peer, name: str = "p", peer_id: str | None = None) -> Any:
    return _Socket(peer, name, peer_id)


@asynccontextmanager
async def _room(topic: str, size: int, peer: object = None) -> AsyncIterator[None]:
    yield  # (the delivery queues always have room)


def _restarted(delivered: int, held: range) -> tuple[Node, FakeClock]:
    clock = FakeClock()
    node = Node(clock)
    for seq in range(1, delivered + 1):
        node.add(seq)
    for seq in held:
        node.add(seq)
    return node, clock


async def test_a_round_fetches_nothing_held_behind_the_gap_again() -> None:
    """review19 F4: a restarted node whose log kept the stream's first messages (its
    high-water mark stays below the gap) was served everything it held behind the gap
    again in every round while the gap waited."""
    peer = Peer(range(1504, 1704))  # its log keeps the last 200 of 1,703
    node, clock = _restarted(3, range(1504, 1704))  # held behind 4..1503
    for _ in range(3):  # rounds, every catchup_interval
        await node.fetcher.round(_socket(peer))
        clock.advance(1.0)
    assert peer.served == 0
    # The gap itself was asked for as a range, each round: the peer lacks it.
    assert [(a["from"], a["to"], "seqs" in a) for a in peer.asked] == [(4, 1503, False)] * 3
    assert node.streams.missing(STREAM) == (4, 1503)


async def test_a_message_held_at_plan_time_leaves_the_gap_asked_as_a_range() -> None:
    """attacker30 F1: one message held behind the gap when a round plans (a pushed
    copy of the origin's latest, or a relay's recent ones pulled by ihave) must not
    leave the gap to the refills, which ask for its first 1,000 numbers (that the peers
    lack) until it is given up whole: the round asks for the gap as a range, and the
    peer answers from its first kept message."""
    peer = Peer(range(2004, 3004))  # its log keeps the last 1,000 of 3,003
    node, _ = _restarted(3, range(3003, 3004))  # 3,003 pushed: held behind 4..
    await node.fetcher.round(_socket(peer))
    first = peer.asked[0]
    assert (first["from"], "seqs" in first) == (4, False) and first["to"] >= 3002
    # Everything the peer keeps came, held behind 4..2003 (no peer has those).
    assert node.streams.missing(STREAM) == (4, 2003)
    assert sorted(node.logged) == [1, 2, 3, *range(2004, 3004)]


async def test_a_gap_refill_asks_a_wide_gap_as_a_range() -> None:
    """Found measuring attacker30's rolling restart on 852e29d (2 runs of 3): the first
    peer back keeps only the last 1,000 messages, and its round's answer covers the
    gap as lacked; when the peers that keep more come back, their rounds find the
    stream being fetched by a gap refill (begin refused), and the refills asked for the
    gap's first 1,000 numbers by ``seqs``, which every peer lacks: at gap_timeout the
    gap was given up whole, with the 9,000 messages the other peers kept. A refill
    asks a gap this wide as a range, which a peer answers from its first kept."""
    short, full = Peer(range(2504, 3004)), Peer(range(2004, 3004))
    node, clock = _restarted(3, range(0))
    await node.fetcher.round(_socket(short, "short"))  # 2,504.. held behind 4..2503
    assert node.streams.missing(STREAM) == (4, 2503)
    catchup = node.catchup  # a refill from another peer runs meanwhile
    other = catchup.begin(FetchRange.of_seqs(TOPIC, ORIGIN.peer_id, [4, 5]), "other")
    await node.fetcher.round(_socket(full, "full"))
    assert not full.asked  # refused: the stream is being fetched
    assert other is not None
    catchup.end(other)
    node.fetcher.refill(_socket(full, "full"), STREAM)  # (at a heartbeat)
    for task in node.tasks:
        await task
    assert [(a["from"], a["to"], "seqs" in a) for a in full.asked][:1] == [(4, 2503, False)]
    clock.advance(30.0)
    events, _ = node.streams.tick()
    assert [(e.first, e.last) for e in events if isinstance(e, GapSkipped)] == [(4, 2003)]
    released = [e.message.seq for e in events if isinstance(e, Deliver)]
    assert released == list(range(2004, 3004))  # all the peers kept


async def test_a_round_refused_by_another_peers_fetch_runs_again_when_it_ends() -> None:
    """attacker35 F1's residue: a liar pushed an origin's 186th message and answered
    that it lacks the 185 before; a round with the hub meanwhile found the stream being
    fetched (refused), and once the hub filled the gap (the start's second witness),
    the 4 messages the hub kept after the pushed one waited for the next round (about
    28 s, measured). The round refused runs again when the fetch that held it ends."""
    hub, liar = Peer(range(1, 191)), Peer(range(186, 187))
    node = Node(FakeClock(), wall=1_700_000_000.0 + 3600)  # the messages are history
    node.add(186)  # pushed by the liar: held behind 1..185, the stream's start
    hubs, liars = _socket(hub, "hub"), _socket(liar, "liar")
    node.sockets[:] = [hubs, liars]  # both carry the topic
    node.peers.update({hubs.id: None, liars.id: None})
    node.fetcher.refill(liars, STREAM)  # the gap asked of the peer that revealed it
    await node.fetcher.round(hubs)  # meanwhile: the stream is being fetched
    assert len(hub.asked) == 0
    while node.tasks:  # the liar's fill, then what it leaves to do
        await node.tasks.pop(0)
        for _ in range(3):
            await asyncio.sleep(0)  # (a refill from the next witness is called soon)
    assert node.delivered == list(range(1, 191))


async def test_a_fetch_deferred_from_a_round_spends_that_rounds_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """review47 C1: what a round refused was fetched later with a new round budget
    (64 MiB by default) per stream refused. It spends the round's: a round whose budget
    is spent by then leaves the stream to the next round."""
    made: list[RoundBudget] = []

    class Made(RoundBudget):
        __slots__ = ()

        def __init__(self, size: int, began: float = 0.0) -> None:
            super().__init__(size, began)
            made.append(self)

    monkeypatch.setattr(gossip_catchup, "RoundBudget", Made)
    hub, liar = Peer(range(1, 191)), Peer(range(186, 187))
    node = Node(FakeClock(), wall=1_700_000_000.0 + 3600)  # (as the test above)
    node.add(186)
    hubs, liars = _socket(hub, "hub"), _socket(liar, "liar")
    node.sockets[:] = [hubs, liars]
    node.peers.update({hubs.id: None, liars.id: None})
    node.fetcher.refill(liars, STREAM)
    await node.fetcher.round(hubs)  # refused: deferred
    assert len(hub.asked) == 0 and len(made) == 1
    made[0].left = 0  # (spent on the round's other streams)
    while node.tasks:
        await node.tasks.pop(0)
        for _ in range(3):
            await asyncio.sleep(0)
    assert len(made) == 1
    assert max(node.delivered) < 187  # left to the next round, which brings them
    await node.fetcher.round(hubs)
    assert node.delivered == list(range(1, 191))


async def test_peers_refused_a_stream_are_not_asked_for_their_marks_again() -> None:
    """Found in review (review46 C1): the first version ran a whole round again per
    stream refused, each asking the peer's marks (10 peers introduced together: 99-104
    ``gossip/hwm`` asks for 10). What a refused peer has of the stream (its mark then)
    is fetched without asking again, and only what is still missing."""
    peers = [Peer(range(1, 51)) for _ in range(5)]
    for peer in peers:
        peer.takes_a_turn = True
    node = Node(FakeClock())
    sockets = [_socket(peer, f"p{n}") for n, peer in enumerate(peers)]
    node.sockets[:] = sockets
    node.peers.update(dict.fromkeys(s.id for s in sockets))
    await asyncio.gather(*(node.fetcher.round(s) for s in sockets))  # introduced together
    while node.tasks:
        await node.tasks.pop(0)
    assert node.delivered == list(range(1, 51))
    assert sum(peer.hwm_asked for peer in peers) == 5
    assert sum(peer.served for peer in peers) == 50  # nothing fetched twice


async def test_a_round_asks_for_the_gaps_between_held_messages() -> None:
    """Found measuring the first version of this change (attacker30's rolling restart,
    1 run of 3): messages pulled by ihave from the first peer back were held apart
    from those its round brought, and the round of a peer keeping more asked for the
    first gap and past the last held message only: the 463 numbers between were asked
    of nobody else, and given up with the first gap (the first peer's answer covered
    them). A round asks for them too, by ``seqs``, without the messages held."""
    short, full = Peer(range(2904, 3004)), Peer(range(2004, 3004))
    node, clock = _restarted(3, range(2600, 2701))  # pulled: 2,600..2,700
    await node.fetcher.round(_socket(short, "short"))  # 2,904.. and a gap before it
    assert node.streams.missing(STREAM) == (4, 2599)
    assert 2701 not in node.logged and 2903 not in node.logged  # and a gap between
    await node.fetcher.round(_socket(full, "full"))
    assert sorted(node.logged) == [1, 2, 3, *range(2004, 3004)]  # all the peers keep
    clock.advance(30.0)
    events, _ = node.streams.tick()
    assert [(e.first, e.last) for e in events if isinstance(e, GapSkipped)] == [(4, 2003)]
    released = [e.message.seq for e in events if isinstance(e, Deliver)]
    assert released == list(range(2004, 3004))  # all the peers kept


async def test_a_seqs_fetch_does_not_span_a_wide_gap_it_does_not_ask() -> None:
    """review33 R2: a round asked a stream's narrow gaps in one fetch by number that
    spanned a wide gap asked apart; its answer counted every number up to its last as
    lacked, so with the wide gap's own fetch refused (a refill held the stream), the
    wide gap was given up at the first gap's timeout: 9,996 messages the peer kept."""
    full = Peer(range(2004, 12501))  # keeps the last 10,497 of 12,500
    held = [8, 12000, 12002]  # gaps 4..7 (nobody keeps), 9..11999 (wide), 12001
    node, clock = _restarted(3, range(0))
    for seq in held:
        node.add(seq)
    catchup = node.catchup
    refills: list = []
    real_end = catchup.end

    def end(fetch):  # a heartbeat refill begins as the seqs fetch ends
        real_end(fetch)
        if fetch.wanted.seqs is not None and not refills:
            gap = node.streams.missing(STREAM)
            wanted = gap_fetch(STREAM, gap, lambda n: node.streams.missing_seqs(STREAM, n))
            refills.append(catchup.begin(wanted, "other"))

    catchup.end = end  # type: ignore[method-assign]
    await node.fetcher.round(_socket(full, "full"))
    catchup.end = real_end  # type: ignore[method-assign]
    real_end(refills[0])
    # Heartbeats until gap_timeout: a refill of the first gap from the full peer each.
    for _ in range(29):
        clock.advance(1.0)
        node.fetcher.refill(_socket(full, "full"), STREAM)
        for task in node.tasks:
            await task
        node.tasks.clear()
    clock.advance(1.0)
    events, _ = node.streams.tick()
    skipped = [(e.first, e.last) for e in events if isinstance(e, GapSkipped)]
    lost = [s for a, b in skipped for s in range(a, b + 1) if s in full.log]
    assert not lost, f"{len(lost)} messages the peer keeps given up unasked"


async def test_a_start_is_not_given_up_before_the_longest_connected_carrier_answers() -> None:
    """Found by an attacker (a44 F1): identities that keep nothing pushed a new
    subscriber an origin's last message, long sent, and answered that they lacked the
    ones before; three such words made it a stream's start, given up, though the hub,
    asked at random among the carriers, kept them all: 304 of 840 messages lost. The
    longest connected carrier's word is needed too, and it is asked first."""
    hub, liars = Peer(range(1, 21)), [Peer(range(20, 21)) for _ in range(6)]
    node = Node(FakeClock(), wall=1_700_000_000.0 + 3600)  # the messages are history
    node.add(20)  # pushed by a liar: held behind 1..19, the stream's start
    sockets = [_socket(hub, "hub"), *(_socket(p, f"liar{n}") for n, p in enumerate(liars))]
    node.sockets[:] = sockets  # the hub connected first
    node.peers.update({s.id: None for s in sockets})
    node.fetcher.refill(sockets[1], STREAM)  # the gap asked of the peer that revealed it
    while node.tasks:
        await node.tasks.pop(0)
        for _ in range(3):
            await asyncio.sleep(0)  # (a refill from the next witness is called soon)
    events, _ = node.streams.tick()  # (a start given up would go now)
    assert not [e for e in events if isinstance(e, GapSkipped)]
    assert node.delivered == list(range(1, 21))
    assert sum(len(p.asked) for p in liars) == 1  # the one that revealed it, then the hub


async def test_the_witnesses_of_a_start_are_network_groups() -> None:
    """Found by an attacker (a44 F1): three addresses of one /24 were three witnesses.
    Here they connected first (the longest connected's word is theirs): one group's
    word, and the hub's is needed too."""
    hub, liars = Peer(range(1, 21)), [Peer(range(20, 21)) for _ in range(3)]
    node = Node(FakeClock(), wall=1_700_000_000.0 + 3600, local=False)
    node.add(20)
    sockets = [_socket(p, f"liar{n}") for n, p in enumerate(liars)] + [_socket(hub, "hub")]
    for n, socket in enumerate(sockets[:3]):
        socket.host = f"10.44.0.{11 + n}"
    sockets[3].host = "192.0.2.1"
    node.sockets[:] = sockets
    node.peers.update({s.id: None for s in sockets})
    for socket in sockets[:3]:  # each says it lacks them
        node.fetcher.refill(socket, STREAM)
        while node.tasks:
            await node.tasks.pop(0)
    events, _ = node.streams.tick()
    assert not [e for e in events if isinstance(e, GapSkipped)]
    for _ in range(20):  # the hub is asked next (a refill called soon)
        while node.tasks:
            await node.tasks.pop(0)
        await asyncio.sleep(0)
    assert hub.asked
    assert node.delivered == list(range(1, 21))


async def test_a_topic_added_is_asked_of_the_longest_connected_carrier() -> None:
    """Found by an attacker (a44 F2): identities that subscribed and served nothing
    were the three carriers asked about a topic added while running, and a quiet
    topic's history, which the hub kept, came minutes later or not at all."""
    hub, liars = Peer(range(1, 21)), [Peer(range(20, 21)) for _ in range(6)]
    node = Node(FakeClock())
    sockets = [_socket(hub, "hub"), *(_socket(p, f"liar{n}") for n, p in enumerate(liars))]
    node.sockets[:] = sockets  # the hub connected first
    node.peers.update({s.id: None for s in sockets})
    for gathering in range(1, 11):
        node.fetcher.topic_added(TOPIC)
        async with asyncio.timeout(5):
            while not node.tasks:  # noqa: ASYNC110 - gathered for TOPIC_GATHER (a timer)
                await asyncio.sleep(0.01)
        assert len(node.tasks) == 4  # the anchor besides 3 at random
        while node.tasks:
            await node.tasks.pop(0)
        assert hub.hwm_asked == gathering


async def test_a_gap_of_a_connected_origin_is_not_given_up_on_anothers_word() -> None:
    """Found by a tester (t45 F2): a slow publisher's messages, cut with its upload,
    were given up at every node 30 s later on the word of peers that never had them,
    while the publisher, connected, kept them. While the origin is connected, another
    peer's "lacking" doesn't count: the gap is asked of the origin."""
    clock = FakeClock()
    relay, origin = Peer(range(1, 2)), Peer(range(1, 13))
    relay.log[12] = _message(12)  # (it has what we have: 2..11 missing there too)
    node = Node(clock)
    node.add(1)
    node.add(12)  # 2..11 missing: cut with the origin's upload
    relays = _socket(relay, "relay", "tprelayaaaaaaaaaaaaaaaaaaaaaaaaaaa")  # (authenticated too)
    origins = _socket(origin, "origin", ORIGIN.peer_id)
    node.sockets[:] = [relays, origins]
    node.peers.update({relays.id: None, origins.id: None})
    origin.takes_a_turn = True  # (slow: it answers later)
    node.fetcher.refill(relays, STREAM)  # the relay never had them: it says so
    await node.tasks.pop(0)
    clock.advance(30.0)  # gap_timeout
    events, _ = node.streams.tick()
    assert not [e for e in events if isinstance(e, GapSkipped)]  # not on its word
    for _ in range(3):
        await asyncio.sleep(0)  # (the origin's refill is called soon)
    while node.tasks:
        await node.tasks.pop(0)
    assert origin.asked and node.delivered == list(range(1, 13))


async def test_a_start_waits_for_the_anchors_own_word_in_one_network() -> None:
    """review80 F1: the anchor's word was its network group's, so with every carrier in
    one /16 (a LAN, a cloud network) the liar that revealed the gap answered for the
    hub, which was never asked: 6 of 6 topics lost their history. Its own word."""
    hub, liar = Peer(range(1, 21)), Peer(range(20, 21))
    node = Node(FakeClock(), wall=1_700_000_000.0 + 3600, local=False)
    node.add(20)
    hubs, liars = _socket(hub, "hub"), _socket(liar, "liar")
    hubs.host, liars.host = "10.80.0.1", "10.80.0.11"
    node.sockets[:] = [hubs, liars]
    node.peers.update({hubs.id: None, liars.id: None})
    node.fetcher.refill(liars, STREAM)
    for _ in range(20):
        while node.tasks:
            await node.tasks.pop(0)
        await asyncio.sleep(0)
    events, _ = node.streams.tick()
    assert not [e for e in events if isinstance(e, GapSkipped)]
    assert hub.asked and node.delivered == list(range(1, 21))


def _lacking_relay(name: str) -> tuple[Peer, Any]:
    """A relay that has 1 and 12 of the stream, and lacks 2..11 too; its socket."""
    relay = Peer(range(1, 2))
    relay.log[12] = _message(12)
    return relay, _socket(relay, name)


def _behind_a_gap(clock: FakeClock, *sockets: Any) -> Node:
    """A node that delivered 1 and holds 12 (2..11 missing), connected to ``sockets``."""
    node = Node(clock)
    node.add(1)
    node.add(12)
    node.sockets[:] = sockets
    node.peers.update({s.id: None for s in sockets})
    return node


async def test_a_gap_a_peer_waits_for_from_its_origin_is_not_given_up_on_its_word() -> None:
    """tester45 F2's rest: a node not connected to a slow origin gave its gap up on the
    word of a hub that lacked the messages too, while the hub, connected to the origin,
    waited for them: 30 s later the hub had them and the node had lost them. A peer that
    says it waits for them (``"waiting": true``) doesn't answer for them: the gap waits,
    is asked again, and fills from that peer once it has them."""
    clock = FakeClock()
    hub, hubs = _lacking_relay("hub")  # 2..11 missing there too...
    hub.waiting = True  # ...and it waits for them from the origin
    node = _behind_a_gap(clock, hubs)
    node.fetcher.refill(hubs, STREAM)
    await node.tasks.pop(0)
    assert hub.asked  # asked, and answered "waiting"
    clock.advance(30.0)  # gap_timeout
    events, waiting = node.streams.tick()
    assert not [e for e in events if isinstance(e, GapSkipped)] and waiting == [STREAM]
    hub.log.update({seq: _message(seq) for seq in range(2, 12)})  # the origin's came
    hub.waiting = False
    node.fetcher.refill(hubs, STREAM)  # (asked again at a heartbeat)
    await node.tasks.pop(0)
    assert node.delivered == list(range(1, 13))


async def test_a_gap_a_peer_waits_for_for_good_is_given_up_when_unanswered() -> None:
    """The bound of "waiting": a peer that says it forever (an attacker, or a hub whose
    origin never answers) holds a gap as long as a peer that never answers does,
    ``gap_timeout`` x 10, then the gap is given up whole."""
    clock = FakeClock()
    hub, hubs = _lacking_relay("hub")
    hub.waiting = True
    node = _behind_a_gap(clock, hubs)
    for _ in range(9):  # asked at each of 9 gap timeouts: it waits still
        node.fetcher.refill(hubs, STREAM)
        await node.tasks.pop(0)
        clock.advance(30.0)
        events, _ = node.streams.tick()
        assert not [e for e in events if isinstance(e, GapSkipped)]
    clock.advance(30.0)
    events, _ = node.streams.tick()
    skipped = [(e.first, e.last) for e in events if isinstance(e, GapSkipped)]
    released = [e.message.seq for e in events if isinstance(e, Deliver)]
    assert skipped == [(2, 11)] and released == [12]


async def test_a_gap_of_an_origin_gone_lately_waits_for_it_to_come_back() -> None:
    """review84 H1: a hub whose link to a slow publisher dropped for 10 s took the word
    of the peers behind it that they lacked its missing messages, and gave them up,
    while another hub that kept its link got them 13 s later. For ``ORIGIN_GRACE``
    after the origin's connection closed, another peer's word doesn't count; past it,
    it does again."""
    clock = FakeClock()
    _, relays = _lacking_relay("relay")  # 2..11 missing there too
    node = _behind_a_gap(clock, relays)
    node.origins.gone(ORIGIN.peer_id)  # its link dropped just now
    node.fetcher.refill(relays, STREAM)
    await node.tasks.pop(0)
    clock.advance(30.0)  # gap_timeout
    events, _ = node.streams.tick()
    assert not [e for e in events if isinstance(e, GapSkipped)]  # not on the relay's word
    clock.advance(ORIGIN_GRACE * 30.0)  # it didn't come back (2 x gap_timeout)
    node.fetcher.refill(relays, STREAM)
    await node.tasks.pop(0)
    events, _ = node.streams.tick()
    assert [(e.first, e.last) for e in events if isinstance(e, GapSkipped)] == [(2, 11)]


async def test_the_nodes_own_catch_up_request_waits_for_room_before_it_is_timed() -> None:
    """review82 R4, review83 F4: a request's timeout counts its wait for room to send
    (tester45 F3), but catch-up's own requests wait for room first, as before, and their
    timeout is the answer's: on a saturated link they were cut before being sent."""
    calls: list[tuple[bool, float | None]] = []

    class FullLink:
        inbound, peer, write_paused = True, "full", True

        async def drain(self) -> None:
            await asyncio.sleep(0)
            self.write_paused = False  # room, after a while

    class Role:
        async def request(
            self, socket: FullLink, event: str, body: Body, *, timeout: float | None
        ) -> Body:
            calls.append((socket.write_paused, timeout))
            return {"hwm": {}}

    node = Node(FakeClock())
    node.gossip.node.server = Role()
    answer = await Fetcher.ask(node.fetcher, FullLink(), HWM, {"topics": [TOPIC]})  # type: ignore[arg-type]
    assert answer == {"hwm": {}} and calls == [(False, 10.0)]  # room first, then timed


async def test_a_waiting_answer_sends_the_asker_to_the_origin_it_is_connected_to() -> None:
    """review84 L3: a relay's "waiting" answer no longer sent a node connected to the
    origin on to it (a "lacking" one did): a message truly lost took up to 77 s among
    20 hubs. The origin is asked."""
    clock = FakeClock()
    (relay, relays), origin = _lacking_relay("relay"), Peer(range(1, 13))
    relay.waiting = True
    origins = _socket(origin, "origin", ORIGIN.peer_id)
    node = _behind_a_gap(clock, relays, origins)
    node.fetcher.refill(relays, STREAM)
    await node.tasks.pop(0)
    for _ in range(3):
        await asyncio.sleep(0)  # (the origin's refill is called soon)
    while node.tasks:
        await node.tasks.pop(0)
    assert origin.asked and node.delivered == list(range(1, 13))
