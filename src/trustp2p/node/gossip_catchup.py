"""
Catch-up on a node: what :mod:`trustp2p.protocol.gossip.catchup` decides to fetch, asked
of the node's peers: ``node.gossip``'s (:mod:`.gossip`) :class:`Fetcher`.

- A *round* with one peer: its per-stream high-water marks (``gossip/hwm``) for our topics,
  then the streams we miss, shuffled, fetched in batches (``gossip/fetch``) until the
  round's :class:`~trustp2p.protocol.gossip.RoundBudget` (``log_max_bytes`` of messages) is
  spent or a fetch goes unanswered; the rest waits for a later round. A round runs when a
  peer introduces itself, when a topic is new, after a held peer is let go, every
  ``catchup_interval`` with a random peer that carries one of our topics. A stream a
  round was refused (another fetch held it) is fetched from that peer when the fetch
  ends, up to the mark the peer gave, without asking it again.
- A *gap* in a live stream is fetched from the peer that revealed it, within its share
  (:class:`~trustp2p.protocol.gossip.PeerBudgets`: ``log_max_bytes`` a ``catchup_interval``).

Each batch asked for is booked first (:meth:`~.gossip_delivery.TopicQueues.batch`), so
that what is fetched never outgrows what the handlers can take.

"""

from __future__ import annotations

__all__ = [
    "BUSY_RETRIES",
    "HELD_ROOM",
    "JITTER",
    "MAX_EMPTY_FETCHES",
    "OWN_MARK_PEERS",
    "OWN_MARK_WAIT",
    "START_WITNESSES",
    "TOPIC_GATHER",
    "Fetcher",
    "jittered",
]

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..exceptions import ConnectionClosed, GossipError, PackageTooLarge, RemoteError, RequestTimeout
from ..protocol.gossip import (
    FETCH,
    HWM,
    MAX_SEQ,
    Fetch,
    FetchRange,
    GossipMessage,
    PeerBudgets,
    PeerKey,
    RelaySources,
    ReleaseMarks,
    RoundBudget,
    Streams,
    answer_size_limit,
    decode_hwm_answer,
    gap_fetch,
    order_fetches,
    plan_fetches,
    retry_after,
    stream_key,
)
from ..protocol.package import Body
from .gossip_delivery import MAX_WAITING_BYTES
from .gossip_log import ANCHOR, anchor_of, carriers_of, log_source, witness_of

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..storage.msglog import MessageLog
    from .gossip import Gossip
    from .gossip_delivery import TopicQueues

logger = logging.getLogger(__name__)

TOPIC_GATHER = 0.5
"""Seconds the topics subscribed to while running are gathered before they are caught
up together (found in review: 300 subscribes awaited one by one made 300 requests)."""

BUSY_RETRIES = 3
"""Times a catch-up request answered busy (the peer's ``catchup_serve_rate`` shared among
more askers) is asked again, when the answer says, before the round gives it up."""

JITTER = 0.1
"""Heartbeats and rounds come every interval, give or take 10 %: nodes not in step."""

HELD_ROOM = MAX_WAITING_BYTES // 2
"""Bytes held behind gaps (``Streams.held_bytes``) past which a fetch whose answers wait
behind a gap (they start past the first number asked for, or that is past the stream's
next: a round's range after the messages held) stops, and its round with it; the rest
is fetched in a later round, in order, once the gap is filled or skipped. Found in
review: a node down for longer than its peers' logs keep fetched a whole log (up to
``log_max_bytes``) behind the gap its first messages left; the booking with the
delivery queues never saw it, and at the gap's skip all of it went to the queues at
once (26.6 MiB against their 16 MiB, every peer held meanwhile)."""


def jittered(rng: random.Random, interval: float) -> float:
    """``interval`` give or take :data:`JITTER`."""
    return interval * rng.uniform(1 - JITTER, 1 + JITTER)


OWN_MARK_PEERS = 3
"""Peers asked for this node's own highest number on a topic before it first publishes
there (:meth:`Fetcher.own_numbers`)..."""

OWN_MARK_WAIT = 1.0
"""...and seconds their answers are waited for, at most."""

START_WITNESSES = 3
"""Addresses (of the peers that carry the topic, all if fewer) that must answer without
a stream's history before it is given up as its start (see
:meth:`~trustp2p.protocol.gossip.Streams.answered`): found by an attacker, one peer that
answered first it lacked a history the hub kept made a subscriber give up all of it."""

MAX_EMPTY_FETCHES = 16
"""Fetches in a row of streams of origins we never had a message of, that a peer's marks
claimed and that brought nothing, after which a round stops (found by an attacker: marks
of 2,000 made-up origins, each fetch answered with nothing, cost the node 2,000 requests
a connection, 5,300 a second from fresh identities). An honest peer's marks are what its
log holds (review20: one whose log let go of some meanwhile doesn't stop the round for
the origins we know)."""


class Fetcher:
    """
    Catch-up rounds and gap fills for ``gossip``, in tasks of ``gossip.tasks``.

    Args:
        gossip: The service it fetches for (its node, router, ``catchup`` and tasks).
        streams: The order of delivery, which says what is missing.
        marks: What was released to the handlers, per stream.
        log: The message log, whose high-water marks say what we hold.
        queues: The delivery queues, which book each batch before it is asked for.
        rng: Whom to ask, and in which order to fetch.
        take: Called with the messages of each valid answer, and the peer that sent them.
        held_back: Whether a topic's messages wait for a validator before they are logged.
        clock: Monotonic seconds, for the peers' shares of gap fills.

    """

    __slots__ = (
        "_added",
        "_after",
        "_asked_of",
        "_budgets",
        "_clock",
        "_gossip",
        "_held_back",
        "_late",
        "_log",
        "_looked",
        "_looking",
        "_marks",
        "_queues",
        "_rng",
        "_sources",
        "_streams",
        "_take",
    )

    def __init__(
        self,
        gossip: Gossip,
        *,
        streams: Streams[Socket | None],
        marks: ReleaseMarks,
        log: MessageLog,
        queues: TopicQueues,
        rng: random.Random,
        take: Callable[[Socket, list[GossipMessage]], float],
        held_back: Callable[[str], bool],
        clock: Callable[[], float],
    ) -> None:
        self._gossip = gossip
        self._looking: dict[str, asyncio.Future[None]] = {}  # own_numbers(), by topic
        self._looked: set[str] = set()  # topics own_numbers() looked at in this run
        self._streams = streams
        self._marks = marks
        self._log = log
        self._queues = queues
        self._rng = rng
        self._take = take
        self._held_back = held_back
        self._clock = clock
        self._added: dict[str, None] = {}  # topics subscribed to, to catch up together
        self._asked_of: set[PeerKey] = set()  # the peers introduced when they began
        self._late: dict[PeerKey, set[str]] = {}  # introduced since: the topics asked then
        # refused: stream -> peer -> its mark, and the budget of the round refused
        self._after: dict[str, dict[Socket, tuple[int, RoundBudget]]] = {}
        options = gossip.node.options
        self._budgets = PeerBudgets(options.log_max_bytes, options.catchup_interval or 30)
        # address groups (log_source()) -> their credit as relays
        self._sources = RelaySources[str](options.catchup_interval or 30)

    def forget(self, peer: PeerKey) -> None:
        """A connection closed: its share of gap fills goes with it."""
        self._budgets.forget(peer)

    def relayed_first(self, socket: Socket, origin: str) -> None:
        """``socket``'s peer was the first to bring a new message of ``origin``, live
        and accepted: its address group (:func:`.log_source`) earns credit as a source
        for the rounds, if the peer is authenticated, not the origin (review71 F3) and
        still connected (a validator may take longer than the connection: review75)."""
        if socket.peer_id is not None and socket.peer_id != origin and not socket.closed:
            self._sources.relayed(log_source(self._gossip.node, socket), self._clock())

    def refill(self, socket: Socket, stream: str) -> None:
        """Fetch, in a task, what is missing before ``stream``'s last held message (a
        wide first gap as a range: :func:`~trustp2p.protocol.gossip.gap_fetch`)."""
        catchup = self._gossip.catchup
        budget = self._budgets.get(socket.id, self._clock())
        gap = self._streams.missing(stream)
        if budget.spent or gap is None or not catchup.may_begin(stream, socket.id):
            return
        missing = functools.partial(self._streams.missing_seqs, stream)
        fetch = catchup.begin(gap_fetch(stream, gap, missing), socket.id)
        if fetch is not None:
            self._gossip.tasks.spawn(self._fill(socket, fetch, budget), f"fill {stream}")

    async def run_forever(self) -> None:
        """
        Every ``catchup_interval``, a round with a random peer that carries one of our
        topics, or is the origin of messages of ours (every other one, at random, with
        one of those that relayed new messages first lately, if any, by their credit),
        and one with their anchor (:func:`.anchor_of`), if that is another.

        The anchor is one that peers arriving later can't displace: found by an
        attacker (a43 F1, review79), four servers relaying their own
        throwaway identities' messages took 81-84 % of the draws, whatever they answered
        (empty marks, ours echoed, made-up ones, errors), and an origin's last messages,
        which no later message shows missing, stayed missing 90 s after the end.
        """
        gossip = self._gossip
        while True:
            interval = gossip.node.options.catchup_interval
            await asyncio.sleep(jittered(self._rng, interval))
            peers = self._round_peers()
            groups = {s: log_source(gossip.node, s) for s in peers}
            socket = gossip.catchup.choose(peers, self._sources.weigh(groups, self._clock()))
            # (in tasks: a peer whose messages never end stopped every later round,
            # found by a tester)
            if socket is not None:
                self.spawn_round(socket)
            if (anchor := anchor_of(peers)) is not None and anchor is not socket:
                self.spawn_round(anchor)

    def _round_peers(self) -> list[Socket]:
        """Peers sharing a topic (an original, without gossip, let each ask time out),
        and the origins of our topics' messages: a publisher that doesn't carry its
        topic was never asked, and the last messages of a burst dropped for a slow
        subscriber stayed missing (found in review)."""
        gossip = self._gossip
        topics, peer_topics = gossip.router.topics, gossip.router.peer_topics
        delivered = self._marks.delivered
        return [
            s
            for s in gossip.node.sockets
            if not topics.isdisjoint(peer_topics(s.id))
            or (s.peer_id is not None and any(delivered(stream_key(t, s.peer_id)) for t in topics))
        ]

    def topic_added(self, topic: str) -> None:
        """A topic new to the running node: caught up from a few peers, with the other
        topics added within :data:`TOPIC_GATHER` (1,000 subscribes in a row, awaited
        one by one or not: a request a peer, not 1,000; see :meth:`_ask_added`)."""
        if not self._added:
            self._asked_of = set(self._gossip.router.peers)
            asyncio.get_running_loop().call_later(TOPIC_GATHER, self._ask_added)
        self._added[topic] = None

    def introduced(self, socket: Socket) -> None:
        """A peer introduced itself: a round about all our topics; those added later in
        a gathering under way are asked of it too (found in review: a topic subscribed
        just after a peer's introduction was asked of nobody)."""
        topics = set(self._gossip.router.topics)  # (read now: review29 found one asked twice)
        if self._added:
            self._late[socket.id] = topics
        if topics:  # (none: nothing to ask, and no task per connection for it)
            self.spawn_round(socket, topics)

    def _ask_added(self, count: int = 3) -> None:
        """Ask ``count`` peers about each topic added: those that carry it first, then
        others. A peer that publishes to a topic without carrying it serves it too
        (found by a new user: a node that subscribed once connected got none of such a
        peer's messages until it published again). One round a peer, its topics all."""
        router = self._gossip.router
        (added, self._added), (late, self._late) = (list(self._added), {}), (self._late, {})
        if self._gossip.tasks.closed:
            return  # (stopped meanwhile)
        introduced = set(router.peers)
        sockets = [s for s in self._gossip.node.sockets if s.id in introduced]
        asked: dict[Socket, set[str]] = {}
        for topic in added:
            # Peers introduced before the gathering, or since but not asked it then.
            known = [
                s
                for s in sockets
                if s.id in self._asked_of or topic not in late.get(s.id, (topic,))
            ]
            carrying = [s for s in known if topic in router.peer_topics(s.id)]
            others = [s for s in known if topic not in router.peer_topics(s.id)]
            # The anchor besides (a44 F2: identities serving nothing held it back).
            anchor = anchor_of(carrying)
            rest = [s for s in carrying if s is not anchor]
            picked = self._rng.sample(rest, min(len(rest), count))
            chosen = ([anchor] if anchor is not None else []) + picked
            chosen += self._rng.sample(others, min(len(others), count - len(picked)))
            for socket in chosen:
                asked.setdefault(socket, set()).add(topic)
        for socket, topics in asked.items():
            self.spawn_round(socket, topics & router.topics)

    def spawn_round(self, socket: Socket, topics: set[str] | None = None) -> None:
        """Run :meth:`round` in a task."""
        self._gossip.tasks.spawn(self.round(socket, topics), f"catch-up {socket.peer}")

    async def round(self, socket: Socket, topics: set[str] | None = None) -> None:
        """Ask a peer what it has of our topics (or ``topics``), and fetch what we miss."""
        gossip = self._gossip
        topics = gossip.router.topics if topics is None else topics
        if not topics:
            return
        asked = gossip.catchup.hwm_request(topics)
        asked["max_bytes"] = answer_size_limit(gossip.node.options.max_package_size)
        if (answer := await self.ask(socket, HWM, asked)) is None:
            return
        try:
            marks = decode_hwm_answer(answer)
        except GossipError as exc:
            gossip.node.penalize(socket, f"invalid gossip/hwm answer: {exc}")
            return
        await self._fetch_all(socket, marks)

    async def _fetch_all(
        self, socket: Socket, marks: dict[str, dict[str, int]], budget: RoundBudget | None = None
    ) -> None:
        """Fetch from a peer what we miss of what its ``marks`` say it has, within
        ``budget`` (a new round's by default)."""
        gossip = self._gossip
        high_water, delivered, held = self._log.high_water, self._marks.delivered, self._streams
        planned = plan_fetches(marks, gossip.router.topics, high_water, delivered, held)
        self._rng.shuffle(planned)  # the same streams aren't always left for later
        order_fetches(planned, delivered, held)  # what held messages wait for first
        if budget is None:
            budget = RoundBudget(gossip.node.options.log_max_bytes)
        empty = 0  # fetches of streams the peer claimed that brought nothing
        for wanted in planned:
            if (fetch := gossip.catchup.begin(wanted, socket.id)) is None:
                if wait := gossip.catchup.held_for(wanted.stream):  # asked again later
                    mark = marks[wanted.topic][wanted.origin]  # (all it has of it)
                    self._wait_for(wanted, wait)[socket] = (mark, budget)
                continue
            await self._fill(socket, fetch, budget)
            if not fetch.done:  # the budget spent, or no answer: the rest waits till later
                logger.info("= catch-up from %s stopped after %d bytes", socket.peer,
                            budget.size - budget.left)  # fmt: skip
                return
            if fetch.first_received:
                empty = 0
            elif not self._marks.delivered(wanted.stream):  # (an origin we never had)
                empty += 1
            if empty == MAX_EMPTY_FETCHES:  # its marks are not to be trusted this round
                logger.info("= catch-up from %s stopped: %d streams it claimed brought "
                            "nothing", socket.peer, empty)  # fmt: skip
                return

    async def _fill(self, socket: Socket, fetch: Fetch, budget: RoundBudget) -> None:
        """Carry out a fetch begun with ``catchup.begin()``, until ``budget`` is spent."""
        options = self._gossip.node.options
        size = answer_size_limit(options.max_package_size)
        topic = fetch.wanted.topic
        held_back = self._held_back(topic)
        try:
            while not fetch.done and not budget.spent:
                if self._started_behind(fetch) and self._held_full():
                    return  # (not done: a round ends here)
                async with self._queues.batch(topic, size, socket.id):
                    ask = not budget.spent  # (another fetch may have spent it meanwhile)
                    answer = await self.ask(socket, FETCH, self._request(fetch)) if ask else None
                if answer is None:
                    return
                try:
                    messages = fetch.receive(answer, max_data=options.max_package_size)
                except GossipError as exc:
                    self._gossip.node.penalize(socket, f"invalid gossip/fetch answer: {exc}")
                    return
                wait = self._take(socket, messages)  # (its share of fetched checks)
                budget.spend(messages)
                if messages and messages[0].seq == fetch.first_received and not held_back:
                    if to := fetch.lacking_before:  # (at once: not after the whole fetch)
                        self._lacking(socket, fetch.wanted, to)
                if wait > 0 and not fetch.done:
                    logger.debug("= catch-up from %s waits %.2f s: its share of "
                                 "gossip_node_rate fetched", socket.peer, wait)  # fmt: skip
                    await asyncio.sleep(wait)
            if (to := fetch.lacking_to(held_back=held_back)) or fetch.waiting:
                self._lacking(socket, fetch.wanted, to)  # (waiting: its origin is asked)
        finally:
            self._gossip.catchup.end(fetch)
            self._round_after(fetch.wanted)

    def _wait_for(self, wanted: FetchRange, held: float) -> dict[Socket, tuple[int, RoundBudget]]:
        """The rounds waiting for the stream of ``wanted``: they go on when its fetch
        ends, or in ``held`` seconds, once it no longer holds the stream
        (:data:`FETCH_ALONE`; attacker37 N4: a peer answering each fetch with one
        message just in time held an origin's history from a new subscriber 30 s)."""
        waiting = self._after.get(wanted.stream)
        if waiting is None:
            waiting = self._after[wanted.stream] = {}
            asyncio.get_running_loop().call_later(held, self._round_after, wanted)
        return waiting

    def _round_after(self, wanted: FetchRange) -> None:
        """Rounds refused the stream of ``wanted`` while it was fetched: what each of
        those peers has of it (its mark then) is fetched now, without a round. Found by
        an attacker: a liar pushed an origin's 186th message and said it lacks those
        before; the hub's round meanwhile was refused the stream, and once the hub
        filled the gap, what it kept after the pushed message waited for the next
        round (28 s). Found in review: a whole round again per stream refused asked
        each of 10 peers introduced together for its marks 10 times; a new budget per
        stream refused let a round fetch more than its budget (review47 C1)."""
        waiting, router = self._after.pop(wanted.stream, None), self._gossip.router
        topic, origin = wanted.topic, wanted.origin
        if waiting and topic in router.topics and not self._gossip.tasks.closed:
            for socket, (mark, budget) in waiting.items():
                if socket.id in router.peers and not budget.spent:  # (still connected)
                    more = self._fetch_all(socket, {topic: {origin: mark}}, budget)
                    self._gossip.tasks.spawn(more, f"catch-up {socket.peer}")

    def _lacking(self, socket: Socket, wanted: FetchRange, to: int) -> None:
        """``socket``'s peer lacks what is still missing of ``wanted``'s stream up to
        ``to``: its word counts, and another peer is asked while a start needs more
        witnesses: the anchor carrier's own word is needed, asked until it answers
        (a44 F1; review80: its group's was any peer's in it). While the stream's
        origin is connected, only its word counts: the gap is asked of it (t45 F2: a
        slow publisher's messages were given up on the word of peers that never had
        them, while it kept them); gone lately, it is waited for (review84 H1)."""
        node, stream, witness, carriers = self._gossip.node, wanted.stream, None, {}
        if self._streams.is_start(stream, wanted.first, to):  # (else no need)
            witness = witness_of(node, socket)
            carriers = carriers_of(node, self._gossip.router.peer_topics, wanted.topic)
        else:
            origin = next((s for s in node.sockets if s.peer_id == wanted.origin), socket)
            if origin is not socket:
                asyncio.get_running_loop().call_soon(self.refill, origin, stream)
                return
            if socket.peer_id != wanted.origin and self._gossip.origins.lately(wanted.origin):
                return  # (it redials: its own word, when it is back)
        needed = min(START_WITNESSES, len({*carriers.values(), witness}))
        anchor = anchor_of(carriers)
        required = None if anchor is None else (ANCHOR, anchor.id)  # its own word
        by_anchor = socket is anchor
        if self._streams.answered(stream, wanted.first, to, witness, needed, required, by_anchor):
            lacking = self._streams.lacking(stream)
            others = [s for s, key in carriers.items() if key not in lacking]
            next_ = anchor if required not in lacking else None  # (asked until it answers)
            if next_ is not None or others:  # (once this fetch ended: one at a time)
                next_ = next_ or self._rng.choice(others)
                asyncio.get_running_loop().call_soon(self.refill, next_, stream)

    def _behind_gap(self, wanted: FetchRange) -> bool:
        """Whether ``wanted`` starts past its stream's next number: what it brings waits
        behind a gap (a round's range after the messages held)."""
        return wanted.first > self._marks.delivered(wanted.stream) + 1

    def _started_behind(self, fetch: Fetch) -> bool:
        """Whether what ``fetch`` brings waits behind a gap: its answers start past the
        first number asked for, or that is past the stream's next."""
        return fetch.first_received > fetch.wanted.first or self._behind_gap(fetch.wanted)

    def _held_full(self) -> bool:
        if self._streams.held_bytes <= HELD_ROOM:
            return False
        logger.info("= catch-up: %d bytes wait behind gaps; the rest later",
                    self._streams.held_bytes)  # fmt: skip
        return True

    def _request(self, fetch: Fetch) -> Body:
        """The next request of ``fetch``, with the most the answer may hold: half our
        package limit, and ``catchup_batch`` messages (peers of earlier versions
        answer at most their own; more is a malformed answer)."""
        options = self._gossip.node.options
        body = fetch.request()
        body["max_bytes"] = answer_size_limit(options.max_package_size)
        body["limit"] = fetch.limit
        return body

    async def own_numbers(self, topic: str) -> None:
        """
        Before this node's first publish on ``topic`` since it started, ask up to
        :data:`OWN_MARK_PEERS` gossip peers (those that carry it first, at random) for
        the highest number of ours they keep there, and number past the highest one a
        peer proves with our message of that number (a claim alone could push our
        counter to its end). Each step waits :data:`OWN_MARK_WAIT` at most; the
        publishes on a topic share one look; with no peer connected there is none
        (the next publish looks). Found by testers: a publisher whose message log was
        lost (deleted, or corrupt and moved aside) numbered its messages from 1 again,
        and every peer dropped them as seen; so did one whose data was restored from
        an older backup, its log knowing the topic.
        """
        if self._gossip.node.identity is None or topic in self._looked:
            return
        looking = self._looking.get(topic)
        if looking is None:
            if not (sockets := self._askable(topic)):
                return  # (nothing to wait for: the publish signs at once)
            looking = self._looking[topic] = asyncio.ensure_future(self._look(topic, sockets))
            looking.add_done_callback(lambda _: self._looked_at(topic))
        await asyncio.shield(looking)

    def _looked_at(self, topic: str) -> None:
        self._looking.pop(topic, None)
        self._looked.add(topic)

    def _askable(self, topic: str) -> list[Socket]:
        """Up to :data:`OWN_MARK_PEERS` peers to ask about ``topic``: those introduced
        (for gossip) first, then those that carry it, at random; none writing slowly."""
        router = self._gossip.router
        introduced = set(router.peers)
        sockets = [s for s in self._gossip.node.sockets if not s.write_paused]
        self._rng.shuffle(sockets)
        sockets.sort(key=lambda s: (s.id not in introduced, topic not in router.peer_topics(s.id)))
        return sockets[:OWN_MARK_PEERS]

    async def _look(self, topic: str, sockets: list[Socket]) -> None:
        identity = self._gossip.node.identity
        assert identity is not None
        origin = identity.peer_id
        claims = await self._ask_all(sockets, {"topic": topic, "origin": origin,
                                               "from": MAX_SEQ, "to": MAX_SEQ})  # fmt: skip
        stream = stream_key(topic, origin)
        claims = [(last, s) for last, s in claims if last > self._log.last_used(stream)]
        # The claims proven side by side, within OWN_MARK_WAIT (found by an attacker:
        # three peers claiming, never proving, held a first publish 3.9 s in turn).
        proofs = [self._proves(socket, topic, origin, last) for last, socket in claims]
        results = await asyncio.gather(*proofs)
        proven = [last for (last, _), ok in zip(claims, results, strict=True) if ok]
        if proven and self._log.seq_used(stream, max(proven)):
            logger.warning("! peers keep this node's messages on %r up to seq %d, which "
                           "its message log didn't know (lost, or restored from an older "
                           "copy?): it numbers on from there", topic, max(proven))  # fmt: skip

    async def _ask_all(self, sockets: list[Socket], body: Body) -> list[tuple[int, Socket]]:
        """The highest numbers (``last``) the peers at ``sockets`` answered a fetch with
        ``body``, within :data:`OWN_MARK_WAIT`."""
        asked = {asyncio.ensure_future(self.ask(s, FETCH, body)): s for s in sockets}
        try:
            if asked:  # a peer that doesn't answer holds the look OWN_MARK_WAIT at most
                await asyncio.wait(asked, timeout=OWN_MARK_WAIT)
        finally:
            for task in asked:
                task.cancel()
        claims = []
        for task, socket in asked.items():
            answer = task.result() if task.done() and not task.cancelled() else None
            last = None if answer is None else answer.get("last")
            if type(last) is int and 0 < last <= MAX_SEQ:
                claims.append((last, socket))
        return claims

    async def _proves(self, socket: Socket, topic: str, origin: str, seq: int) -> bool:
        """Whether the peer at ``socket`` has ``origin``'s message ``seq`` on ``topic``,
        signed (asked within :data:`OWN_MARK_WAIT`)."""
        body = {"topic": topic, "origin": origin, "from": seq, "to": seq}
        try:
            async with asyncio.timeout(OWN_MARK_WAIT):
                answer = await self.ask(socket, FETCH, body)
        except TimeoutError:
            return False
        items = None if answer is None else answer.get("messages")
        if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
            return False
        limit = self._gossip.node.options.max_package_size
        try:
            message = GossipMessage.from_body(topic, items[0], max_data=limit)
        except GossipError:
            return False
        return message.origin == origin and message.seq == seq

    async def ask(self, socket: Socket, event: str, body: Body) -> Body | None:
        """A catch-up request's answer; None if there is none, or it is a refusal."""
        node = self._gossip.node
        role = node.server if socket.inbound else node.client
        assert role is not None
        for attempt in range(BUSY_RETRIES + 1):
            try:
                await socket.drain()  # room first: the timeout is the answer's (review82 R4)
                return await role.request(socket, event, body, timeout=node.options.open_timeout)
            except (ConnectionClosed, RequestTimeout, PackageTooLarge):
                return None  # (too large: a peer that says it takes less than our request)
            except RemoteError as exc:
                wait = retry_after(exc.body) if attempt < BUSY_RETRIES else None
                if wait is None:  # It may run without gossip: we ask another peer later.
                    logger.debug("! %s answered %s: %.200s", socket.peer, event, exc.error)
                    return None
            await asyncio.sleep(wait)  # busy: it said when to ask again
        return None
