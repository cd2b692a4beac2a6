"""
Gossip delivery, topic by topic: the messages waiting for their validator or their
handlers, and while a topic has some, a task that works through them, each origin's in
order, the origins in turn (:class:`~trustp2p.protocol.gossip.OriginTurns`: a flood
under the bound kept a small publisher of its topic behind it, review81 F4). A slow
validator, thread handler or subscriber holds up its own topic, no other.

The messages waiting are bounded (:data:`MAX_WAITING_BYTES`) by holding peers: the node
stops reading from a peer that sends one more message of a topic over its share, until
that topic is within its share of half the bound. Past the bound, a topic's share is
the max-min fair level: the level ``L`` where the topics' waiting bytes, each counted up
to ``L``, add up to the bound; so the topics that hold the most are held first and a
topic that waits for little goes on. Past twice the bound every peer that sends a
message is held: slow topics one after another each fill to a smaller level, so
together they may hold up to twice the bound (and a message for each peer held).
Past the bound, a live message that a peer relays (its origin is another) of a topic
over its share (:func:`~trustp2p.protocol.gossip.shed_level`) is *shed* instead, whatever its
origin: dropped unseen (not logged, forwarded nor ordered, its id not even marked seen;
the router drops its copies for a while: :data:`~trustp2p.protocol.gossip.SHED_FOR`),
counted (``trustp2p_gossip_shed_total``) and fetched by catch-up later, from the peers
it came from once the topic is within its share of half the bound, or when a later
message of its origin reveals the gap. A peer held sends nothing else meanwhile: a flood
of a slow topic, relayed by an honest hub, stopped every other topic, request and ping
the hub carried (attacker43 F2: 15-20 s late, and the hub once dropped the node; review81
F1: the same when only the origins over a part of the topic's share were shed). So
below twice the bound a topic over its share holds only a publisher for its own messages
(holding it holds up nothing but its own), and messages accepted before (released from
their stream's order, a gap filled or skipped, or passed by their validator) hold
nobody: they are in memory already, and twice the bound bounds what comes new.
Catch-up batches, which come from no peer to hold, are asked for only while the topic
is within its share and all that waits, with the batches asked for, is within one and a
half times the bound; a batch asked for counts for catch-up only, never to hold a peer.
Found by a tester and in review: one shared bound let a stuck topic, or catch-up of a
slow one, hold every peer that sent gossip of any topic; an even split let slow topics
grow the backlog to 16 MiB times the harmonic number of their count; and batches asked
of silent peers, counted as waiting, held honest peers while nothing waited.

"""

from __future__ import annotations

__all__ = ["MAX_WAITING_BYTES", "Item", "TopicQueues", "Turn", "Work", "stopping_here", "turn_here"]

import asyncio
import contextvars
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..protocol.gossip import HELD_MESSAGE_OVERHEAD, OriginTurns, over_level, shed_level
from .dispatch import cancelled
from .failures import gossip_where

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..protocol.gossip import GossipMessage
    from ..tasks import TaskOwner
    from .peer import PeerConnection

logger = logging.getLogger(__name__)


class Turn:
    """
    One message's turn in its topic's delivery (see :data:`_DRAIN`).

    Attributes:
        what: Who runs on it now, as log lines name it (``"gossip handler of 'chat' in
            app.py"``; set by the caller of each handler).
        stopped: Its handler stopped the node: it counts as delivered.
        left: Its validator or handler didn't end when the stop cancelled it, and runs
            on after the stop (:meth:`TopicQueues.abandon`): nothing of the turn goes
            on once it returns.
        keep: For a handler left running: counts its message as delivered, called if
            it returns (not if it ends cancelled: review67 F1, a handler that unwound
            for 0.2 s lost its message).

    """

    __slots__ = ("keep", "left", "stopped", "what")

    def __init__(self) -> None:
        # (Not the message: the tasks a handler starts keep its turn, for as long as
        # they run; TopicQueues keeps what the turn is on while it lasts.)
        self.what = ""
        self.stopped = False
        self.left = False
        self.keep: Callable[[], None] | None = None


_DRAIN: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("gossip_drain", default=None)
"""Which message's turn a handler runs in, seen by the tasks it starts (a stop among
them). Not the task: the tasks started there kept it, and a 1,000-node simulation held
about 15 MiB more of them; one turn a message, not the queues' id and the topic
(review59: a task that a handler of an earlier message started, stopping the node,
skipped the handler running then, and ids are reused)."""


def stopping_here() -> bool:
    """Whether the handler running in this task stopped its node, and its message was
    counted as delivered (see :meth:`TopicQueues.finish`)."""
    turn = _DRAIN.get()
    return turn is not None and turn.stopped


def turn_here() -> Turn | None:
    """The turn the validator or handler running in this task runs in (None outside
    gossip delivery)."""
    return _DRAIN.get()


MAX_WAITING_BYTES = 16 * 2**20
"""Messages waiting for validators and handlers, in all topics, each counted as its
payload (:func:`~trustp2p.protocol.jsontext.text_size`) plus
:data:`~trustp2p.protocol.gossip.HELD_MESSAGE_OVERHEAD` (what it takes in memory
besides), past which reading pauses from the peers that send more of a topic over its
share (see the module)."""

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
    return message.data_size + HELD_MESSAGE_OVERHEAD


def _origin(item: Item) -> str:
    return item[1].origin


Item = tuple[str, "GossipMessage", "Socket | None"]
"""``(kind, message, source)``: ``"validate"``, ``"check"`` (validate a message caught
up from ``source``: its reading is never held for it) or ``"deliver"``, the message,
and the peer it came from (``None``: the node's own, or caught up)."""

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
    ``keep(message)``: a message whose handler runs on past the stop counts as delivered
    (:meth:`abandon`).

    Attributes:
        waiting: What waits in all topics, in bytes (see :data:`MAX_WAITING_BYTES`).

    """

    __slots__ = (
        "_asked",
        "_asking",
        "_bytes",
        "_catch_up",
        "_coming",
        "_connection",
        "_current",
        "_drains",
        "_held",
        "_idle",
        "_keep",
        "_levels",
        "_max_bytes",
        "_queues",
        "_room",
        "_shed",
        "_stopping",
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
        *,
        keep: Callable[[GossipMessage], None] | None = None,
    ) -> None:
        self._tasks = tasks
        self._work = work
        self._idle = idle
        self._connection = connection
        self._catch_up = catch_up
        self._keep = keep
        self._max_bytes = max_bytes
        self._queues: dict[str, OriginTurns[Item]] = {}  # (by origin, in turn: review81 F4)
        self._bytes: dict[str, int] = {}  # per topic with messages waiting
        self._levels: dict[str, int] = {}  # topic -> its shed_level, until _bytes change
        self._coming: Counter[str] = Counter()  # per topic, catch-up batches asked for
        self._asked = 0  # all of those
        self._asking: Counter[object] = Counter()  # per peer, the batches asked of it
        self._held: dict[str, dict[Socket, None]] = {}  # topic -> peers held for it
        self._shed: dict[str, dict[Socket, None]] = {}  # topic -> peers it shed from
        self._room = asyncio.Event()
        self._drains: dict[str, asyncio.Task[Any]] = {}  # topic -> its task
        # topic -> its turn, and what it is on: kind, message, source
        self._current: dict[str, tuple[Turn, str, GossipMessage, Socket | None]] = {}
        self._stopping = False  # finish() called: no next message
        self.waiting = 0

    def __len__(self) -> int:
        """How many messages wait, every topic's."""
        return sum(len(queue) for queue in self._queues.values())

    @property
    def idle(self) -> bool:
        """Whether no message waits or is being worked on, in any topic; never once
        :meth:`finish` was called (the messages left waiting are not delivered)."""
        return not self._queues and not self._stopping

    def settle_if_idle(self) -> None:
        """After the order moved outside the queues (a gap given up, in part at its
        timeout, or a fill passed over): with no message waiting for handlers, call
        ``idle()`` now; no handler's return would (review32 R32-2: a node killed before
        the next message asked for, and gave up, those numbers again)."""
        if self.idle:
            self._idle()

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
        return self.waiting > _ALL_HELD * bound or over_level(self._bytes, topic, bound)

    def put(
        self, kind: str, message: GossipMessage, source: Socket | None, *, arrived: bool = True
    ) -> None:
        """Queue ``message`` behind its topic's; nothing once the tasks are closed.
        ``arrived``: it came from ``source`` just now, which may be held for it (see the
        module); False for one accepted before, released now from its stream's order or
        by its validator (review81: a long flood held the relay for those)."""
        topic = message.topic
        queue = self._queues.get(topic)
        if queue is not None:
            queue.append((kind, message, source))
        elif not self._tasks.closed and not self._stopping:  # (else it waits in the log)
            queue = self._queues[topic] = OriginTurns(_origin)
            queue.append((kind, message, source))
            self._bytes[topic] = 0
            drain = self._drain(topic, queue)
            self._drains[topic] = self._tasks.spawn(drain, f"gossip delivery of {topic!r}")
        else:
            return
        size = _weight(message)
        self.waiting += size
        self._bytes[topic] += size
        self._levels.clear()
        if source is None or kind == "check":
            return
        if not arrived and self.waiting <= _ALL_HELD * self._max_bytes:
            return  # (accepted before: held past twice the bound only, review85 F1)
        if self.over(topic) and not self._holds(source):
            conn = self._connection(source)
            if conn is not None:
                if topic not in self._held:  # once a round: an operator's business
                    logger.info("! %d bytes of gossip of %r wait for its handlers: reading "
                                "paused from the peers that send more", self.share(topic),
                                topic)  # fmt: skip
                self._held.setdefault(topic, {})[source] = None
                conn.hold(True)
                logger.debug("= reading from %s paused (%r)", source.peer, topic)

    def sheds(self, message: GossipMessage, source: Socket | None) -> bool:
        """
        Whether live ``message`` from ``source`` is shed (see the module) rather than
        queued: then it must go no further (the caller counts and says it), and
        ``source`` gets a catch-up round once the topic is let go.

        Returns:
            False for the node's own messages (``source`` None), a publisher's own
            (``source`` is their origin: holding it holds up nothing but its own),
            and once stopping. Else True past the bound if the topic, the message
            counted, is over its share: :meth:`put` would hold ``source`` for it (past
            twice the bound, a topic within its share holds ``source``, not shed).

        """
        size = _weight(message)
        if source is None or self._stopping or source.peer_id == message.origin:
            return False
        if self.waiting + size <= self._max_bytes:
            return False
        topic = message.topic
        if (level := self._levels.get(topic)) is None:  # (kept while nothing comes or goes)
            level = self._levels[topic] = shed_level(self._bytes, topic, self._max_bytes)
        if self._bytes.get(topic, 0) + size <= level:
            return False
        if topic not in self._shed:  # once a round: an operator's business
            logger.warning("! %d bytes of gossip of %r wait for its handlers: the messages "
                           "peers relay are dropped, fetched again later by catch-up",
                           self.share(topic), topic)  # fmt: skip
        self._shed.setdefault(topic, {})[source] = None
        return True

    def _holds(self, source: Socket) -> bool:
        return any(source in held for held in self._held.values())

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
        return over_level(sizes, topic, bound)

    def _may_go(self, topic: str) -> bool:
        """Whether the peers held for ``topic`` are let go: half the bound waits at
        most, or at most twice the bound and ``topic`` is within its share of half."""
        bound, waiting = self._max_bytes, self.waiting
        if waiting <= bound // 2:
            return True
        return waiting <= _ALL_HELD * bound and not over_level(self._bytes, topic, bound // 2)

    def _delivered(self, size: int) -> None:
        """``size`` bytes are no longer waiting: let go the peers held for a topic now
        within its share of half the bound."""
        self.waiting -= size
        self._room.set()
        if not self._held and not self._shed:  # (each message delivered: mostly)
            return
        for held in [topic for topic in self._held if self._may_go(topic)]:
            for source in self._held.pop(held):
                conn = self._connection(source)
                if conn is not None:
                    conn.hold(False)
                    self._catch_up_with(source)
        for shed in [topic for topic in self._shed if self._may_go(topic)]:
            for source in self._shed.pop(shed):  # (what it sent of the topic was dropped)
                if self._connection(source) is not None:
                    self._catch_up_with(source)

    def _catch_up_with(self, source: Socket) -> None:
        if self._catch_up is not None and not (self._tasks.closed or self._stopping):
            self._tasks.spawn(self._catch_up(source), f"catch-up {source.peer}")

    def finish(
        self, caller: asyncio.Task[Any] | None = None
    ) -> tuple[list[asyncio.Task[Any]], GossipMessage | None]:
        """
        The node stops: start no next message (what waits is in the message log, and
        delivered after a restart).

        Returns:
            The tasks of the messages being validated or handled, for the caller to
            wait for, then cancel (not the one this is called from, nor ``caller``'s,
            the task that called the stop: each waits for the stop); and the message
            whose handler stopped the node (from its task or one it started): to
            count as delivered, since it is cancelled (review59: it got the message
            again after each restart, a "shutdown" message stopped the node again);
            None for any other stop, or a validator's.

        """
        self._stopping = True
        own, stopper = self._turn_here()
        waiting = {asyncio.current_task(), caller, own}
        return [task for task in self._drains.values() if task not in waiting], stopper

    def stopped_again(self) -> GossipMessage | None:
        """
        A handler stopped the node while it stops: as for the first (see
        :meth:`finish`), its message counts as delivered, and its delivery, waiting for
        the stop, ends now (review60 F3: waited for ``close_timeout``, then cancelled,
        it got its message again after a restart).

        Returns:
            That message, or None if not called from a handler's delivery.

        """
        own, stopper = self._turn_here()
        if own is not None and stopper is not None:
            own.cancel()
        return stopper

    def _turn_here(self) -> tuple[asyncio.Task[Any] | None, GossipMessage | None]:
        """The delivery task this is called from (its turn is in the context: review58,
        a handler's stop in a task of its own, asyncio.wait_for's on 3.11), its turn
        marked as the one that stopped the node; and its message, if that delivers
        one (not a validator's). (None, None) from elsewhere."""
        turn = _DRAIN.get()
        for topic, (current, kind, message, _) in self._current.items():
            if current is turn and turn is not None:
                turn.stopped = kind == "deliver"
                return self._drains.get(topic), message if turn.stopped else None
        return None, None

    def abandon(self, left: Collection[asyncio.Future[Any]]) -> list[asyncio.Future[Any]]:
        """
        The stop gives up on the deliveries among ``left``, cancelled and still running
        (a validator or handler caught its ``CancelledError``): each is said at WARNING,
        and runs on after the stop, with nothing of its turn after it (no next handler,
        no verdict carried out: :attr:`Turn.left`). A handler's message counts as
        delivered (``keep``) if it returns before the message log closes, so that one
        that runs to its end doesn't get it again after a restart (review63 F2: it was
        handled twice); if it ends cancelled, or later, it is handed over again
        (review67 F1: counted at once, a handler that unwound slowly lost it). The
        topic's handlers after it don't get it. A validator's is validated again after
        a restart.

        Returns:
            Those deliveries (the other tasks of ``left`` are the caller's to say).

        """
        said: list[asyncio.Future[Any]] = []
        for topic, task in self._drains.items():
            current = self._current.get(topic)
            if task not in left or current is None or current[0].left:
                continue
            turn, kind, message, source = current
            turn.left = True
            said.append(task)
            where = gossip_where(message, source)
            if kind != "deliver":
                logger.warning("x validator of %r didn't end when cancelled, on %s: it runs on "
                               "after the stop; the message is validated again after a "
                               "restart", topic, where)  # fmt: skip
                continue
            logger.warning("x %s didn't end when cancelled, on %s: it runs on after the stop; "
                           "the message counts as delivered if it returns before the message "
                           "log closes, else it is handed over again after a restart",
                           turn.what or "gossip delivery", where)  # fmt: skip
            if self._keep is not None:
                turn.keep = functools.partial(self._keep, message)
        return said

    async def _drain(
        self, topic: str, queue: OriginTurns[tuple[str, GossipMessage, Socket | None]]
    ) -> None:
        try:
            while queue and not self._stopping:
                kind, message, source = queue.popleft()
                _DRAIN.set(turn := Turn())
                self._current[topic] = (turn, kind, message, source)
                try:
                    await self._work(kind, message, source)
                except (Exception, asyncio.CancelledError) as exc:  # not the end of delivery
                    if cancelled(exc):
                        raise
                    logger.error("! gossip delivery of %s failed", message.id, exc_info=True)
                size = _weight(message)
                self._bytes[topic] -= size
                self._levels.clear()
                self._delivered(size)
        finally:
            self._current.pop(topic, None)
            del self._queues[topic]
            del self._drains[topic]
            size = self._bytes.pop(topic)
            self._levels.clear()
            self._delivered(size)
        # Not once stopping: the messages left waiting must not be marked delivered.
        if not self._queues and not self._stopping:
            self._idle()
