"""
Gossip delivery, topic by topic: the messages waiting for their validator or their
handlers, and while a topic has some, a task that works through them in order. A slow
validator, thread handler or subscriber holds up its own topic, no other, until the
backlog is over its bound (all topics together): past
:data:`MAX_WAITING_BYTES` of payload waiting in all topics, the node stops reading from
each peer that sends one more, until half of it is delivered: a flood of messages
faster than the handlers (and, with ``durable_delivery``, the disk) take them waits in
the peers' buffers, not in the node's memory.

"""

from __future__ import annotations

__all__ = ["MAX_WAITING_BYTES", "Item", "TopicQueues", "Work"]

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
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
(what it takes in memory besides), past which reading from the peers that send more
pauses until half of it is delivered."""


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
    ``connection(source)`` finds the peer to hold (see :data:`MAX_WAITING_BYTES`);
    once it is let go, ``catch_up(source)`` runs in a task: what that peer sent while it
    was held may have been dropped (its send queue full), and nothing after it may come
    to reveal the gap.

    Attributes:
        waiting: The payload waiting, in all topics.

    """

    __slots__ = (
        "_catch_up",
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
        self._held: dict[Socket, None] = {}
        self._room = asyncio.Event()
        self.waiting = 0

    def __len__(self) -> int:
        """How many messages wait, every topic's."""
        return sum(len(queue) for queue in self._queues.values())

    def put(self, kind: str, message: GossipMessage, source: Socket | None) -> None:
        """Queue ``message`` behind its topic's; nothing once the tasks are closed."""
        topic = message.topic
        queue = self._queues.get(topic)
        if queue is not None:
            queue.append((kind, message, source))
        elif not self._tasks.closed:  # (stopping: what wasn't delivered is in the log)
            queue = self._queues[topic] = deque([(kind, message, source)])
            self._tasks.spawn(self._drain(topic, queue), f"gossip delivery of {topic!r}")
        else:
            return
        self.waiting += _weight(message)
        if self.waiting > self._max_bytes and source is not None and source not in self._held:
            conn = self._connection(source)
            if conn is not None:
                self._held[source] = None
                conn.hold(True)
                logger.debug("= %d bytes of gossip wait for handlers: reading from %s paused",
                             self.waiting, source.peer)  # fmt: skip

    async def room(self) -> None:
        """Wait while more than :data:`MAX_WAITING_BYTES` wait (then until half of it is
        delivered): for messages that come from no peer to hold, as catch-up's."""
        while self.waiting > self._max_bytes:
            self._room.clear()
            await self._room.wait()

    def _delivered(self, size: int) -> None:
        self.waiting -= size
        if self.waiting > self._max_bytes // 2:
            return
        self._room.set()
        if self._held:
            for source in self._held:
                conn = self._connection(source)
                if conn is not None:
                    conn.hold(False)
                    if self._catch_up is not None and not self._tasks.closed:
                        self._tasks.spawn(self._catch_up(source), f"catch-up {source.peer}")
            self._held.clear()

    async def _drain(
        self, topic: str, queue: deque[tuple[str, GossipMessage, Socket | None]]
    ) -> None:
        size = 0  # the payload of the message being worked on
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
                self._delivered(size)
                size = 0
        finally:
            del self._queues[topic]
            self._delivered(size + sum(_weight(message) for _, message, _ in queue))
        if not self._queues:
            self._idle()
