"""
Gossip delivery, topic by topic: the messages waiting for their validator or their
handlers, and while a topic has some, a task that works through them in order. A slow
validator, thread handler or subscriber holds up its own topic, no other: past
:data:`MAX_WAITING_BYTES` waiting in all topics, the node stops reading from a peer
that sends one more message of a topic over its share of the bound (the bound split
evenly between the topics with messages waiting), until that topic is down to half its
share or the backlog to half the bound; and catching up on such a topic waits the same
way. A flood of messages faster than the handlers (and, with ``durable_delivery``, the
disk) take them waits in the peers' buffers, not in the node's memory, and a topic
whose handlers keep up goes on meanwhile (found by a tester: one shared bound let a
stuck topic, or catch-up of a slow one, hold every peer that sent gossip of any topic).

"""

from __future__ import annotations

__all__ = ["MAX_WAITING_BYTES", "Item", "TopicQueues", "Work"]

import asyncio
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
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
    ``connection(source)`` finds the peer to hold (see the module); once it is let go,
    ``catch_up(source)`` runs in a task: what that peer sent while it was held may have
    been dropped (its send queue full), and nothing after it may come to reveal the gap.

    Attributes:
        waiting: What waits in all topics, in bytes (see :data:`MAX_WAITING_BYTES`),
            and the catch-up batches asked for (:meth:`batch`).

    """

    __slots__ = (
        "_bytes",
        "_catch_up",
        "_coming",
        "_connection",
        "_held",
        "_idle",
        "_max_bytes",
        "_queues",
        "_room",
        "_tasks",
        "_work",
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
        self._held: dict[str, dict[Socket, None]] = {}  # topic -> peers held for it
        self._room = asyncio.Event()
        self.waiting = 0

    def __len__(self) -> int:
        """How many messages wait, every topic's."""
        return sum(len(queue) for queue in self._queues.values())

    def share(self, topic: str) -> int:
        """What ``topic`` waits for, in bytes, and its catch-up batches asked for."""
        return self._bytes.get(topic, 0) + self._coming[topic]

    def over(self, topic: str, bound: int | None = None, more: int = 0) -> bool:
        """Whether, with ``more`` bytes of ``topic``, more than ``bound``
        (:data:`MAX_WAITING_BYTES`) waits and ``topic`` has more than its share of it:
        ``bound`` split evenly between the topics with messages waiting or asked for."""
        bound = self._max_bytes if bound is None else bound
        if self.waiting + more <= bound:
            return False
        topics = len(self._bytes.keys() | self._coming.keys() | {topic})
        return (self.share(topic) + more) * topics > bound

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
        if source is not None and self.over(topic) and not self._holds(source):
            conn = self._connection(source)
            if conn is not None:
                if topic not in self._held:  # once a round: an operator's business
                    logger.info("! %d bytes of gossip of %r wait for its handlers: reading "
                                "paused from the peers that send more", self.share(topic),
                                topic)  # fmt: skip
                self._held.setdefault(topic, {})[source] = None
                conn.hold(True)
                logger.debug("= reading from %s paused (%r)", source.peer, topic)

    def _holds(self, source: Socket) -> bool:
        return any(source in held for held in self._held.values())

    @asynccontextmanager
    async def batch(self, topic: str, size: int) -> AsyncIterator[None]:
        """
        Wait for room for a catch-up batch of ``topic`` of at most ``size`` bytes, which
        counts as waiting until the block ends (the batch is queued by then): while the
        topic is over its share (see :meth:`over`), until it is down to half of it. A
        topic with nothing waiting or asked for may take one batch while the batches
        asked for in all topics are within the bound (a stuck topic doesn't stop the
        catch-up of another, and a node subscribed to many topics doesn't take a batch
        for each at once).
        """
        bound = self._max_bytes
        while self._no_room(topic, bound, size):
            bound = self._max_bytes // 2
            self._room.clear()
            await self._room.wait()
        self._coming[topic] += size
        self.waiting += size
        try:
            yield
        finally:
            self._coming[topic] -= size
            if not self._coming[topic]:
                del self._coming[topic]
            self._delivered(topic, size)

    def _no_room(self, topic: str, bound: int, size: int) -> bool:
        if not self.share(topic):
            return sum(self._coming.values()) + size > self._max_bytes
        return self.over(topic, bound, size)

    def _delivered(self, topic: str, size: int) -> None:
        """``size`` bytes of ``topic`` are no longer waiting: let go the peers held for
        a topic now down to half its share (or the backlog to half the bound)."""
        self.waiting -= size
        self._room.set()
        half = self._max_bytes // 2
        for held in [topic for topic in self._held if not self.over(topic, half)]:
            for source in self._held.pop(held):
                conn = self._connection(source)
                if conn is not None:
                    conn.hold(False)
                    if self._catch_up is not None and not self._tasks.closed:
                        self._tasks.spawn(self._catch_up(source), f"catch-up {source.peer}")

    async def _drain(
        self, topic: str, queue: deque[tuple[str, GossipMessage, Socket | None]]
    ) -> None:
        size = 0  # the weight of the message being worked on
        try:
            while queue:
                kind, message, source = queue.popleft()
                size = _weight(message)
                try:
                    await self._work(kind, message, source)
                except (Exception, asyncio.CancelledError) as exc:  # not the end of delivery
                    if cancelled(exc):
                        raise
                    logger.error("! gossip delivery of %s failed", message.id, exc_info=True)
                self._bytes[topic] -= size
                self._delivered(topic, size)
                size = 0
        finally:
            del self._queues[topic]
            left = self._bytes.pop(topic)
            self._delivered(topic, left)
        if not self._queues:
            self._idle()
