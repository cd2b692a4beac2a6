"""
Gossip delivery, topic by topic: the messages waiting for their validator or their
handlers, and while a topic has some, a task that works through them in order. A slow
validator, thread handler or subscriber holds up its own topic, no other.

The messages waiting are bounded (:data:`MAX_WAITING_BYTES`) by holding peers: the node
stops reading from a peer that sends one more message of a topic over its share, until
that topic is within its share of half the bound. Past the bound, a topic's share is
the max-min fair level: the level ``L`` where the topics' waiting bytes, each counted up
to ``L``, add up to the bound; so the topics that hold the most are held first and a
topic that waits for little goes on. Past twice the bound every peer that sends a
message is held: slow topics one after another each fill to a smaller level, so
together they may hold up to twice the bound (and a message for each peer held).
Catch-up batches, which come from no peer to hold, are asked for only while the topic
is within its share and all that waits, with the batches asked for, is within one and a
half times the bound; a batch asked for counts for catch-up only, never to hold a peer.
Found by a tester and in review: one shared bound let a stuck topic, or catch-up of a
slow one, hold every peer that sent gossip of any topic; an even split let slow topics
grow the backlog to 16 MiB times the harmonic number of their count; and batches asked
of silent peers, counted as waiting, held honest peers while nothing waited.

A peer is held ``max_hold`` seconds at most (half the smaller of ``send_stall_timeout``
and ``heartbeat_response_timeout``): a held peer sends nothing else meanwhile (its
requests, pongs, other topics), and one held past its own stall or heartbeat timeout
closes the connection (found by a tester). Then the node reads from it again and *sheds*
what it sends of the topics it was held for, and of any topic over its share
(:meth:`TopicQueues.shed`: dropped unseen, before any check), until a catch-up round with
that peer, begun once those topics have room, has ended: the peer logged what it sent,
and the round fetches it at the handlers' pace. (Shedding until the topic had room, and
no longer, was tried first: the messages after the dropped ones came faster than the gap
was fetched, and waited behind it past ``DEFAULT_MAX_HELD_BYTES``.)

"""

from __future__ import annotations

__all__ = ["MAX_WAITING_BYTES", "Item", "TopicQueues", "Work"]

import asyncio
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..protocol.gossip import HELD_MESSAGE_OVERHEAD
from .dispatch import cancelled

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..protocol.gossip import GossipMessage
    from ..tasks import TaskOwner
    from .peer import PeerConnection

logger = logging.getLogger(__name__)

MAX_WAITING_BYTES = 16 * 2**20
"""Messages waiting for validators and handlers, in all topics, each counted as its
payload (``len(data)``) plus :data:`~trustp2p.protocol.gossip.HELD_MESSAGE_OVERHEAD`
(what it takes in memory besides), past which reading pauses from the peers that send
more of a topic over its share (see the module)."""

_CATCH_UP_ROOM = 3
"""Catch-up batches are asked for while what waits and what is asked for is within
this many halves of the bound: a stuck topic at the bound leaves the others half of it."""

_ALL_HELD = 2
"""Past this many times the bound, every peer that sends a message is held."""

_ASKED_PER_PEER = 2
"""Catch-up batches asked of one peer at once: a peer that answers each just inside
``open_timeout`` holds no more room than this (found by a tester: five such peers held
16 MiB of room, and the catch-up of honest peers waited)."""


def _weight(message: GossipMessage) -> int:
    return len(message.data) + HELD_MESSAGE_OVERHEAD


Item = tuple[str, "GossipMessage", "Socket | None"]
"""``(kind, message, source)``: ``"validate"`` or ``"deliver"``, the message, and the
peer it came from (``None``: the node's own, or caught up)."""

Work = Callable[[str, "GossipMessage", "Socket | None"], Awaitable[None]]
"""``work(kind, message, source)``: validate (``"validate"``) or deliver a message."""


class TopicQueues:
    """
    Per topic, the messages waiting, each an :data:`Item`; ``work`` is
    called on each in turn, in a task of ``tasks`` per topic with messages waiting. When
    no topic has any left, ``idle()`` is called (not when the tasks are cancelled).
    ``connection(source)`` finds the peer to hold (see the module), for ``max_hold``
    seconds at most (``None``: until its topic has room); once it is let go,
    ``catch_up(source)`` runs in a task: what that peer sent while it was held may have
    been dropped (its send queue full), and nothing after it may come to reveal the gap.

    Attributes:
        waiting: What waits in all topics, in bytes (see :data:`MAX_WAITING_BYTES`).
        shed_count: Messages shed (:meth:`shed`).

    """

    __slots__ = (
        "_asked",
        "_asking",
        "_bytes",
        "_catch_up",
        "_coming",
        "_connection",
        "_held",
        "_idle",
        "_max_bytes",
        "_max_hold",
        "_queues",
        "_room",
        "_rounds",
        "_shedding",
        "_tasks",
        "_timers",
        "_work",
        "shed_count",
        "waiting",
    )

    def __init__(
        self,
        tasks: TaskOwner,
        work: Work,
        idle: Callable[[], None],
        connection: Callable[[Socket], PeerConnection | None],
        catch_up: Callable[[Socket], Coroutine[Any, Any, None]] | None = None,
        max_bytes: int = MAX_WAITING_BYTES,
        max_hold: float | None = None,
    ) -> None:
        self._tasks = tasks
        self._work = work
        self._idle = idle
        self._connection = connection
        self._catch_up = catch_up
        self._max_bytes = max_bytes
        self._queues: dict[str, deque[Item]] = {}
        self._bytes: dict[str, int] = {}  # per topic with messages waiting
        self._coming: Counter[str] = Counter()  # per topic, catch-up batches asked for
        self._asked = 0  # all of those
        self._asking: Counter[object] = Counter()  # per peer, the batches asked of it
        self._held: dict[str, dict[Socket, None]] = {}  # topic -> peers held for it
        self._max_hold = max_hold
        self._timers: dict[Socket, asyncio.TimerHandle] = {}  # the held peers' deadlines
        self._shedding: dict[Socket, set[str]] = {}  # peers held past max_hold: the topics
        # shed from each
        self._rounds: set[Socket] = set()  # shedding peers being caught up with
        self.shed_count = 0
        self._room = asyncio.Event()
        self.waiting = 0

    def __len__(self) -> int:
        """How many messages wait, every topic's."""
        return sum(len(queue) for queue in self._queues.values())

    def share(self, topic: str) -> int:
        """What ``topic`` waits for, in bytes."""
        return self._bytes.get(topic, 0)

    def over(self, topic: str, bound: int | None = None) -> bool:
        """Whether a peer that sends a message of ``topic`` is held: more than ``bound``
        (:data:`MAX_WAITING_BYTES`) waits and ``topic`` is over its share (see the
        module), or more than twice ``bound`` waits."""
        bound = self._max_bytes if bound is None else bound
        if self.waiting <= bound:
            return False
        return self.waiting > _ALL_HELD * bound or _over_level(self._bytes, topic, bound)

    def put(self, kind: str, message: GossipMessage, source: Socket | None) -> None:
        """Queue ``message`` behind its topic's; nothing once the tasks are closed."""
        topic = message.topic
        queue = self._queues.get(topic)
        if queue is not None:
            queue.append((kind, message, source))
        elif not self._tasks.closed:  # (stopping: what wasn't delivered is in the log)
            queue = self._queues[topic] = deque([(kind, message, source)])
            self._bytes[topic] = 0
            self._tasks.spawn(self._drain(topic, queue), f"gossip delivery of {topic!r}")
        else:
            return
        size = _weight(message)
        self.waiting += size
        self._bytes[topic] += size
        if source is None or source in self._shedding or not self.over(topic):
            return
        if not self._holds(source) and (conn := self._connection(source)) is not None:
            if topic not in self._held:  # once a round: an operator's business
                logger.info("! %d bytes of gossip of %r wait for its handlers: reading "
                            "paused from the peers that send more", self.share(topic),
                            topic)  # fmt: skip
            self._held.setdefault(topic, {})[source] = None
            conn.hold(True)
            logger.debug("= reading from %s paused (%r)", source.peer, topic)
            if self._max_hold is not None:
                loop = asyncio.get_running_loop()
                self._timers[source] = loop.call_later(self._max_hold, self._overdue, source)

    def _holds(self, source: Socket) -> bool:
        return any(source in held for held in self._held.values())

    def shed(self, source: Socket, topic: str) -> bool:
        """Whether to drop a message of ``topic`` that ``source`` sends: the peer was
        held past ``max_hold``, and the topic is one it was held for, or is over its
        share, until a catch-up round with the peer has ended (see the module)."""
        topics = self._shedding.get(source)
        if topics is None or (topic not in topics and not self.over(topic)):
            return False
        topics.add(topic)
        self.shed_count += 1
        return True

    def _overdue(self, source: Socket) -> None:
        """``source`` was held ``max_hold``: read from it again, shedding (see the module)."""
        del self._timers[source]
        if self._tasks.closed:
            return
        topics = [topic for topic, held in self._held.items() if source in held]
        for topic in topics:
            del self._held[topic][source]
            if not self._held[topic]:
                del self._held[topic]
        self._shedding[source] = set(topics)
        if (conn := self._connection(source)) is not None:
            conn.hold(False)
            logger.info("! reading from %s again after %g s paused: its gossip of %s is "
                        "dropped, then fetched from it as the handlers take it",
                        source.peer, self._max_hold, ", ".join(map(repr, topics)))  # fmt: skip
        self._let_go()

    @asynccontextmanager
    async def batch(self, topic: str, size: int, peer: object = None) -> AsyncIterator[None]:
        """
        Wait for room to ask ``peer`` for a catch-up batch of ``topic`` of at most
        ``size`` bytes, counted as asked for until the block ends (queue the batch after
        it): while the topic is over its share of what waits and is asked for, or that is
        over one and a half times the bound (see the module), or
        :data:`_ASKED_PER_PEER` batches are asked of ``peer``.
        """
        busy = peer is not None and self._asking[peer] >= _ASKED_PER_PEER
        while busy or self._no_room(topic, size):
            self._room.clear()
            await self._room.wait()
            busy = peer is not None and self._asking[peer] >= _ASKED_PER_PEER
        self._coming[topic] += size
        self._asked += size
        self._asking[peer] += 1
        try:
            yield
        finally:
            self._asking[peer] -= 1
            if not self._asking[peer]:
                del self._asking[peer]
            self._asked -= size
            self._coming[topic] -= size
            if not self._coming[topic]:
                del self._coming[topic]
            self._room.set()

    def _no_room(self, topic: str, size: int) -> bool:
        bound = self._max_bytes
        total = self.waiting + self._asked + size
        if total <= bound:
            return False
        if 2 * total > _CATCH_UP_ROOM * bound:
            return True
        sizes = Counter(self._bytes)
        sizes.update(self._coming)
        sizes[topic] += size
        return _over_level(sizes, topic, bound)

    def _may_go(self, topic: str) -> bool:
        """Whether the peers held for ``topic`` are let go: half the bound waits at
        most, or at most twice the bound and ``topic`` is within its share of half."""
        bound, waiting = self._max_bytes, self.waiting
        if waiting <= bound // 2:
            return True
        return waiting <= _ALL_HELD * bound and not _over_level(self._bytes, topic, bound // 2)

    def _delivered(self, size: int) -> None:
        """``size`` bytes are no longer waiting: let go the peers held for a topic now
        within its share of half the bound."""
        self.waiting -= size
        self._room.set()
        if self._held or self._shedding:  # (each message delivered: nothing to do, mostly)
            self._let_go()

    def _let_go(self) -> None:
        """Read again from the peers held for a topic that may go, and catch up with
        those whose messages of it were dropped."""
        for topic in [topic for topic in self._held if self._may_go(topic)]:
            for source in self._held.pop(topic):
                if (timer := self._timers.pop(source, None)) is not None:
                    timer.cancel()
                if (conn := self._connection(source)) is not None:
                    conn.hold(False)
                    self._caught_up_with(source)
        for source, topics in list(self._shedding.items()):
            if source in self._rounds or not all(map(self._may_go, topics)):
                continue
            if self._connection(source) is None or self._catch_up is None:
                del self._shedding[source]
            elif not self._tasks.closed:
                self._rounds.add(source)
                self._tasks.spawn(self._round(source), f"catch-up {source.peer}")

    def _caught_up_with(self, source: Socket) -> None:
        # What it sent while held may be lost: nothing after it may come to reveal
        # the gap.
        if self._catch_up is not None and not self._tasks.closed:
            self._tasks.spawn(self._catch_up(source), f"catch-up {source.peer}")

    async def _round(self, source: Socket) -> None:
        """Catch up with a shedding peer; then take what it sends again."""
        assert self._catch_up is not None
        try:
            await self._catch_up(source)
        finally:
            self._rounds.discard(source)
            self._shedding.pop(source, None)

    async def _drain(
        self, topic: str, queue: deque[tuple[str, GossipMessage, Socket | None]]
    ) -> None:
        try:
            while queue:
                kind, message, source = queue.popleft()
                try:
                    await self._work(kind, message, source)
                except (Exception, asyncio.CancelledError) as exc:  # not the end of delivery
                    if cancelled(exc):
                        raise
                    logger.error("! gossip delivery of %s failed", message.id, exc_info=True)
                size = _weight(message)
                self._bytes[topic] -= size
                self._delivered(size)
        finally:
            del self._queues[topic]
            self._delivered(self._bytes.pop(topic))
        if not self._queues:
            self._idle()


def _over_level(sizes: Mapping[str, int], topic: str, bound: int) -> bool:
    """Whether ``topic`` waits for more than the max-min fair level of ``bound``: the
    level ``L`` where ``sizes``, each counted up to ``L``, add up to ``bound``."""
    mine = sizes.get(topic, 0)
    return sum(min(size, mine) for size in sizes.values()) > bound
