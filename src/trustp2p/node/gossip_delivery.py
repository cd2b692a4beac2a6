"""
Gossip delivery, topic by topic: the messages waiting for their validator or their
handlers, and while a topic has some, a task that works through them in order. A slow
validator, thread handler or subscriber holds up its own topic, no other.

"""

from __future__ import annotations

__all__ = ["Item", "TopicQueues", "Work"]

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .dispatch import cancelled

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..protocol.gossip import GossipMessage
    from ..tasks import TaskOwner

logger = logging.getLogger(__name__)

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

    """

    __slots__ = ("_idle", "_queues", "_tasks", "_work")

    def __init__(self, tasks: TaskOwner, work: Work, idle: Callable[[], None]) -> None:
        self._tasks = tasks
        self._work = work
        self._idle = idle
        self._queues: dict[str, deque[Item]] = {}

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
        finally:
            del self._queues[topic]
        if not self._queues:
            self._idle()
