"""
Publish/subscribe and catch-up on a node: ``node.gossip``, carrying out the decisions of
:mod:`trustp2p.protocol.gossip` (connections, threads, the log).

- ``await node.gossip.publish(topic, data)`` (or ``node.publish``) signs and sends a
  message; threads receive a topic's messages through their event map (called as
  ``handler(socket, message)``, ``socket`` None for our own and caught-up ones) or
  ``node.gossip.subscribe(topic, handler)`` (``handler(message)``): each once, in
  order per origin and topic (a *stream*), topics side by side (:mod:`.gossip_delivery`).
- Validators (``set_validator``) accept, ignore or reject (against its sender) a message.
- Catch-up (:mod:`.gossip_catchup`): peers exchange marks (``gossip/hwm``) and fetch
  what they miss (``gossip/fetch``); a live gap is fetched, or skipped later.

"""

from __future__ import annotations

__all__ = ["PUBLISH_WAIT", "Gossip", "GossipHandler", "Validation", "Validator"]

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..admin.counters import MAX_TOPICS, count
from ..drivers.base import Socket
from ..exceptions import GossipError, NodeStateError
from ..protocol.deliver import ConnId
from ..protocol.gossip import (
    CatchUp,
    Deliver,
    GossipMessage,
    OriginsGone,
    PublishPacing,
    ReleaseMarks,
    StreamEvent,
    Streams,
    message_size_limit,
    split_stream_key,
    stream_key,
    wire_size,
)
from ..protocol.gossip.pacing import PUBLISH_WAIT
from ..protocol.gossip.recent import worth_announcing
from ..protocol.package import Body, Package, PackageType
from ..storage.msglog import MessageLog
from ..tasks import TaskOwner
from ..threads.loader import check_handler
from .gossip_catchup import Fetcher, jittered
from .gossip_checks import NodeChecks
from .gossip_delivery import TopicQueues
from .gossip_drops import SkipsSaid, drop_oversized, say_shed, say_too_old, signed_twice
from .gossip_log import OWN_SOURCE, Attribution, claim, delivered, open_log, to_logged, undelivered
from .gossip_publish import (
    NobodyCarries,
    OwnTurns,
    check_publishing,
    keep_task,
    sign_own,
    take_seq,
    wait_for_peers,
    wait_until,
)
from .gossip_send import make_router
from .gossip_validate import GossipHandler, Validation, Validator, call_handlers, judge, rejected
from .stopping import handlers_end

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)


class Gossip:
    """
    A node's publish/subscribe service; ``node.gossip``.

    Args:
        node: The node it serves.
        clock: Monotonic seconds (the router's caches, gap timeouts): the loop's time.
        wall_clock: Seconds since 1970 (timestamps, ages, the log): ``time.time``.
        rng: Random source for whom to ask and jitter, for tests.

    Attributes:
        router, pacing, catchup: Where messages go, whom ``publish()`` waits for, what
            is being fetched (:mod:`trustp2p.protocol.gossip`).
        message_log, tasks: The persisted message log (once started), and the tasks.
        publishing: Whether :meth:`publish` works: from the start until threads stopped.
        delivered: Messages handed to threads and subscribers (counted once they ran).
        carried: Messages logged and sent on, handed to nobody once their turn came (a
            topic only carried, ``relay_topics``, or its handlers gone by then).
        caught_up: Messages obtained by catch-up.
        too_old, renumbered: Messages dropped for their timestamp (too old, or from the
            future), unseen; or as delivered, though published after their mark moved.

    """

    def __init__(
        self,
        node: Node,
        *,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.node, options = node, node.options
        self._clock, self._wall_clock, self._rng = clock, wall_clock, rng or random.Random()
        self.router = make_router(node, self._now, self._rng)
        self.catchup = CatchUp(batch=options.catchup_batch, clock=self._now, rng=self._rng)
        self._fetcher: Fetcher | None = None  # once started
        self.message_log: MessageLog | None = None
        self._streams: Streams[Socket | None] | None = None
        self._marks: ReleaseMarks | None = None
        self._published: set[str] = set()  # topics this node published to
        self._alone = NobodyCarries()
        self.pacing: PublishPacing[ConnId] = PublishPacing(clock=self._now)
        self.origins = OriginsGone(self._now, options.gap_timeout)  # (gaps wait for them)
        self.tasks, self.publishing = TaskOwner(logger), False
        self.delivered = self.carried = self.caught_up = self.too_old = self.renumbered = 0
        self._handlers: dict[str, list[GossipHandler]] = {}
        self._publishing = asyncio.Lock()  # signing: one a loop iteration
        self._sending = asyncio.Lock()  # sending, in seq order, and the pacing waits
        self._sends: set[asyncio.Task[None]] = set()  # (held: see keep_task)
        self._validators: dict[str, Validator] = {}
        self._turns = OwnTurns()  # (own publishes to a topic with a validator)
        self._delivery = TopicQueues(
            self.tasks, self._work, self._settle, node.connection, self._catch_up, keep=self._kept
        )
        self.checks = NodeChecks(node, options.gossip_node_rate, self._now)
        self.router.may_ask, self.router.asking = self.checks.may_ask, self.checks.asking
        self._attribution = Attribution(node)  # whose a message is: log_source(), via
        self._skips = SkipsSaid(node, self._now)  # (a catch-up's starts: one line)
        self._talked = asyncio.Event()  # set (and replaced) at each control talk
        self._threads_started = asyncio.Event()  # handlers run from then on (replay())
        self._halting: asyncio.Future[None] | None = None  # once halt() was called

    def _now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    @property
    def _log(self) -> MessageLog:
        if self.message_log is None:
            raise NodeStateError("gossip is not started")
        return self.message_log

    @property
    def order(self) -> Streams[Socket | None]:
        """The order of delivery per stream: what is held, and the gaps not given up."""
        if self._streams is None:  # (kept in the log's delivered marks)
            raise NodeStateError("gossip is not started")
        return self._streams

    # Public API
    @property
    def topics(self) -> set[str]:
        """The topics this node subscribes to."""
        return set(self.router.topics)

    async def publish(self, topic: str, data: Body) -> str:
        """
        Sign and publish a message; publishes run one a loop iteration. A peer connected
        a moment ago may not have said yet that it subscribes: see :meth:`wait_subscribers`.

        Returns:
            Its message id.

        Raises:
            NodeStateError: If not :attr:`publishing`.
            ValueError: If the topic is empty or too long, ``data`` holds NaN or a
                string that isn't valid Unicode, or the message would take more than a
                quarter of ``max_package_size``.
            TypeError: If ``data`` is not a JSON-serializable dict.

        """
        if self._fetcher is not None and self.publishing:  # (past what peers keep: a
            await self._fetcher.own_numbers(topic)  # lost log; not under the lock: review)
        async with self._turns.turn(topic, (validator := self._validators.get(topic)) is not None):
            check_publishing(self.publishing)  # (not judged after a stop: review)
            ms = int(self._wall_clock() * 1000)
            message, size = await sign_own(self.node, self._log, topic, data, validator, ms)
            async with self._publishing:  # (1,000 gathered held the loop 1.3 s: review)
                check_publishing(self.publishing)  # (in turn: the log may have closed since)
                message = take_seq(self.node, self._log, message)
                self._published.add(topic)
                self._log.add(to_logged(message), OWN_SOURCE)
                # Sent, once signed, whatever becomes of this call: an unsent seq is a gap.
                sending = keep_task(self._sends, self._written_then_sent(message, size))
                await asyncio.sleep(0)  # (a loop of publish() held the loop for seconds)
        await asyncio.shield(sending)
        return message.id

    async def _written_then_sent(self, message: GossipMessage, size: int) -> None:
        """On disk (its seq too) before it leaves, shared by the publishes waiting, then
        sent in turn (FIFO): else a publisher killed now reuses its seqs (tester31 F1)."""
        await self._log.written()
        async with self._sending:  # our own burst waits for its carriers, as pacing says
            if not self.publishing:  # stopped meanwhile: logged, caught up after a restart
                raise NodeStateError("the node stopped before the message was sent")
            await wait_for_peers(self.pacing, self._send(message), self._now, size)
            await asyncio.sleep(0)  # (its bytes are written before publish() returns)

    def _send(self, message: GossipMessage) -> list[Socket]:
        """Send a message we signed, deliver it here; return the peers that carry it."""
        self.router.publish(message)
        count(self.node.metrics.topic_published, message.topic, limit=MAX_TOPICS)
        self._accepted(None, message, logged=True)
        carrying = self._carrying(message.topic)  # (said: tester30 F1; review31)
        self._alone.said(message.topic, carrying=bool(carrying) or not self.router.peers)
        return carrying

    def _carrying(self, topic: str) -> list[Socket]:
        return [s for s in self.node.sockets if topic in self.router.peer_topics(s.id)]

    async def wait_subscribers(self, topic: str, count: int = 1) -> int:
        """Wait until ``count`` connected peers carry ``topic``; return how many do (in
        :func:`asyncio.timeout`; :exc:`NodeStateError` once the node stops). What a
        node publishes before its peers said they subscribe reaches nobody."""
        carrying = lambda: len(self._carrying(topic))  # noqa: E731
        return await wait_until(lambda: self._talked, carrying, count, self.node)

    @property
    def waiting_bytes(self) -> int:
        """Bytes of messages waiting for their validators and handlers (bounded)."""
        return self._delivery.waiting

    @property
    def held_bytes(self) -> int:
        """Bytes of messages held behind gaps (64 MiB at most); 0 before the start."""
        return 0 if self._streams is None else self._streams.held_bytes

    @property
    def served_topics(self) -> set[str]:
        """The topics catch-up serves: those carried, and those this node published to."""
        return self.router.topics | self._published

    def subscribe(self, topic: str, handler: GossipHandler | None = None) -> None:
        """Receive ``topic``'s messages; ``handler(message)`` is called for each. A topic
        new to a running node is caught up at once from a few peers (those that carry
        it first). TypeError: a handler that can't be called as ``handler(message)``."""
        if handler is not None:
            check_handler(handler, ("message",))
        new = topic not in self.router.topics
        self.router.subscribe(topic)  # first: it refuses an invalid topic
        if handler is not None:
            self._handlers.setdefault(topic, []).append(handler)
        if self._fetcher is not None:
            self._replay(topic)
            if new:
                self._fetcher.topic_added(topic)

    def _replay(self, topic: str) -> None:
        """Deliver what the log holds of ``topic`` past the delivered marks: messages
        logged before a crash (or a stop) let their handlers run."""
        for message in undelivered(self._log, topic, self._log):
            self._carry_out(self.order.add(message, None))

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``: its handlers are forgotten. A topic of
        ``relay_topics`` or of a thread's event map stays carried (a hub that
        unsubscribed a monitor of a relayed topic would stop relaying it)."""
        self._handlers.pop(topic, None)
        if topic in self.node.options.relay_topics:
            return
        if topic in self.node.handlers.events(PackageType.GOSSIP):
            return
        self.router.unsubscribe(topic)

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Check each new message of ``topic`` before it is delivered or forwarded
        (:class:`Validation`; a REJECT counts against the sender if it is the origin or
        dialled us: :func:`~trustp2p.node.gossip_validate.blamed_for`)."""
        if validator is None:
            self._validators.pop(topic, None)
        else:
            self._validators[topic] = validator

    def history(self, topic: str) -> list[GossipMessage]:
        """
        The messages of ``topic`` this node's log keeps and delivered, in the order this
        node delivered them (in seq order per origin; across origins, this node's order,
        which another's may not share; messages held behind a gap given up are listed
        where they were logged): of the last ``log_max_messages`` of the topic received
        within ``log_max_age``, those up to :meth:`delivered_seq`. A bounded replay
        window: state that must outlive it is the thread's to keep (in
        :attr:`Node.data_dir <trustp2p.Node>`). Messages are delivered once, across
        restarts too: a thread that builds state in memory from them rebuilds it from
        here at its start. Those logged and not delivered yet (a crash came first) are
        delivered to the handlers once every thread's ``start()`` returned, not listed
        here (listed and then delivered, they would be applied twice).
        """
        return delivered(self._log, topic, self._log)

    def delivered_seq(self, topic: str, origin: str) -> int:
        """The last seq of ``origin``'s messages on ``topic`` delivered here (0: none):
        every message of the stream up to it had its handlers run (or was skipped), as
        :meth:`history` lists and a restart resumes after; not those queued still."""
        return self._log.delivered(stream_key(topic, origin))

    # Lifecycle, called by the node

    async def start(self) -> None:
        options = self.node.options
        self.message_log = await open_log(self.node, self._wall_clock)
        self._marks = ReleaseMarks(self.message_log)
        own = self.node.peer_id
        for stream in self.message_log.high_water():
            topic, origin = split_stream_key(stream)
            if origin == own:
                self._published.add(topic)
        self._streams = Streams(self._marks, clock=self._now, wall_clock=self._wall_clock,
                                gap_timeout=options.gap_timeout,
                                max_age=options.log_max_age)  # fmt: skip
        self._fetcher = Fetcher(
            self,
            streams=self._streams,
            marks=self._marks,
            log=self.message_log,
            queues=self._delivery,
            rng=self._rng,
            take=self._take,
            held_back=self._validators.__contains__,
            clock=self._now,
        )
        for topic in (*self.node.handlers.events(PackageType.GOSSIP), *options.relay_topics):
            self.router.subscribe(topic)  # carried: relayed, logged, caught up
        self.tasks.spawn(self._heartbeat(), "gossip heartbeat")
        if options.catchup_interval > 0:
            self.tasks.spawn(self._fetcher.run_forever(), "gossip catch-up")
        self.publishing = True

    def replay(self) -> None:
        """Deliver what the log holds past the delivered marks, of every topic carried,
        and from now on what the queues hold: the node calls it once every thread's
        ``start()`` returned (found by a new user, whose thread's handler ran on them
        before its ``start()`` returned; tester31 F5: on a message a thread published
        in its ``start()`` too, a later thread's handler before its ``start()`` ran)."""
        self._threads_started.set()
        for topic in self.router.topics:
            self._replay(topic)

    def halt(self, caller: asyncio.Task[Any] | None = None) -> Awaitable[None]:
        """Stop delivering, validating and fetching, from the first call on; running
        handlers get up to ``close_timeout`` by the end of what it returns (the same at
        each call: review63, a second wait), but ``caller``'s, its message delivered
        (review59; see :mod:`.stopping`)."""
        if self._halting is None:
            self._talked.set()  # (wait_subscribers() sees the stop)
            self._skips.heartbeat(fetching=False)  # the starts gathered (review91 F3)
            started = self._threads_started.is_set()  # (before, no handler runs)
            running, stopper = self._delivery.finish(caller) if started else ([], None)
            self._kept(stopper)
            ending = handlers_end(self.node, running, self.tasks, self._delivery.abandon)
            self._halting = asyncio.ensure_future(ending)
        return self._halting

    def stopped_again(self) -> None:
        """The node was stopped again, maybe from a handler (review60 F3)."""
        self._kept(self._delivery.stopped_again())

    def _kept(self, message: GossipMessage | None) -> None:
        """``message`` counts as delivered: its handler stopped the node, or runs on."""
        if message is not None and self._marks is not None:
            self._marks.settle(stream_key(message.topic, message.origin), message.seq)

    async def stop(self) -> None:
        self.publishing = False  # (then halt)
        await self.halt()
        if self.message_log is not None:
            await self.message_log.close()

    def peer_introduced(self, socket: Socket, max_size: int | None) -> None:
        """A peer introduced itself (``max_size``: the largest package it takes, None if
        not under ours): gossip with it, its address's peers a group. Not at open."""
        group = self.node.connections.share_group(socket)  # (None: local, apart)
        bound = None if max_size is None else max_size // 4
        self.router.add_peer(socket.id, max_bytes=bound, group=group)
        if self._fetcher is not None:
            self._fetcher.introduced(socket)

    def connection_closed(self, socket: Socket) -> None:
        self.origins.gone(socket.peer_id)  # (its gaps wait for it a while)
        self.router.remove_peer(socket.id)
        self.pacing.forget(socket.id)
        if self._fetcher is not None:
            self._fetcher.forget(socket.id)

    # Receiving
    def receive(self, socket: Socket, package: Package) -> None:
        """A GOSSIP package arrived (from the node's read path)."""
        if package.event not in self.router.topics:
            return  # not ours to carry
        # Most copies are duplicates: drop them by id before checking a signature.
        message_id = GossipMessage.peek_id(package.event, package.body)
        if message_id is not None and self.router.duplicate(socket.id, message_id):
            if package.body.get("origin") == socket.peer_id:  # its publisher's own copy
                claim(self.node, self._log, socket, package.event)
            self.router.fewer_hops(socket.id, message_id, package.body.get("hops", 0))
            return
        connections = self.node.connections  # (identities are free: shared by address)
        asked = message_id is not None and self.router.asked(socket.id, message_id)
        if (delay := self.checks.live(socket, asked=asked)) > 0:
            if (conn := connections.get(socket.id)) is not None:
                connections.throttle(conn, delay, "its share of gossip_node_rate")
        max_data = self.node.options.max_package_size
        try:
            message = GossipMessage.from_body(
                package.event, package.body, max_data=max_data, peeked_id=message_id
            )
        except GossipError as exc:
            self.router.stats.invalid += 1
            if asked:  # (its ask used up: review91 F1)
                self.router.answered_badly(socket.id, message_id)  # type: ignore[arg-type]
            self.node.penalize(socket, f"invalid gossip message: {exc}")
            return
        cap = message_size_limit(self.node.options.max_package_size)
        text = package.body_json
        # Encode only bodies that may be too large (1 to 4 bytes a character); measure the
        # message as logged and served, not as it came (an attacker padded an honest one).
        if cap is not None and len(text) * 4 > cap and len(text.encode()) > cap:
            if (size := wire_size(message)) > cap:
                self._oversized(message, size, cap)
                return
        self._ingest(socket, message, live=True)

    def on_control(self, socket: Socket, package: Package) -> None:
        """A router control talk arrived (through the built-in thread)."""
        try:
            self.router.control(socket.id, package.event, package.body)
        except GossipError as exc:
            self.node.penalize(socket, f"invalid {package.event}: {exc}")
        self._talked.set()  # (a peer's topics may have changed: wait_subscribers())
        self._talked = asyncio.Event()

    def _oversized(self, message: GossipMessage, size: int, cap: int) -> None:
        """A valid message too large for our catch-up answers (its origin has a larger
        ``max_package_size``): not delivered, logged nor forwarded, nor held against the
        peer that passed it on; its seq is passed over, so later ones don't wait for it."""
        if drop_oversized(self.node, self.router, message, size, cap):  # (new: seen now)
            self._carry_out(self.order.pass_over(message))
            self._delivery.settle_if_idle()

    def _ingest(self, socket: Socket | None, message: GossipMessage, *, live: bool) -> bool:
        """Take a verified message; return True if it was new."""
        if message.topic not in self.router.topics:
            return False  # not ours to carry
        message = self._attribution.passed_on(socket, message, live=live)
        # Delivered, too old or ahead: dropped, seen. Awaiting its validator: held back.
        stale = self.node.clock_watch.stale(self.order, message)  # (our clock may lag)
        if live and socket is not None and stale is None and self._delivery.sheds(message, socket):
            return say_shed(self.node, message, socket, self.router)  # (unseen: caught up later)
        pending = stale is not None or message.topic in self._validators
        sid = socket.id if socket is not None else None
        fresh = live or worth_announcing(message, self._wall_clock(), self.node.options.seen_ttl)
        new = self.router.receive(sid, message, pending=pending, live=fresh)
        if not new:
            return False
        if stale is not None:
            self.router.refuse(message.id)
            if stale == "delivered":  # (a copy whose id the router forgot: silent)
                skew, now = self.order.clock_skew, self._wall_clock()
                if signed_twice(self.node, self._log, message, skew, now):
                    self.renumbered += 1
            else:
                self.too_old += 1
                marks = (self._log.forgotten_before, self.order.clock_skew)
                say_too_old(self.node, message, stale, self._wall_clock(), *marks, live=live)
                if stale == "future":  # its number takes its turn (tester48 F1)
                    self._carry_out(self.order.pass_over(message))
            return False
        if message.topic in self._validators:  # (caught up: "check", never held)
            self._delivery.put("validate" if live else "check", message, socket)
        else:
            self._accepted(socket if live else None, message, forward=live, via=socket, new=live)
        return True

    def _accepted(
        self,
        socket: Socket | None,
        message: GossipMessage,
        *,
        forward: bool = False,
        logged: bool = False,
        via: Socket | None = None,
        new: bool = False,
    ) -> None:
        """A message passed validation (``new``: as it came from ``socket``, no validator):
        log it (``via``'s, else ``socket``'s), send it on, deliver it in turn."""
        source = self._attribution.source(via or socket, message)  # (stored: MessageLog.add)
        if not logged and not self._log.add(to_logged(message), source):
            signed_twice(self.node, self._log, message, self.order.clock_skew, self._wall_clock())
        if via is not None and via.peer_id == message.origin:  # (see claim)
            claim(self.node, self._log, via, message.topic)
        if forward:
            self.router.forward(socket.id if socket is not None else None, message)
            if self._fetcher is not None and socket is not None:  # (catch-up's sources)
                self._fetcher.relayed_first(socket, message.origin)
        self._carry_out(self.order.add(message, socket), message if new else None)
        if socket is not None and self._fetcher is not None:  # a gap before it: ask the
            # peer that revealed it
            self._fetcher.refill(socket, stream_key(message.topic, message.origin))

    def _carry_out(
        self, events: list[StreamEvent[Socket | None]], new: GossipMessage | None = None
    ) -> None:
        """Queue the messages released for the handlers (only ``new``, as it came, may
        hold its peer: the others were accepted before); report the gaps skipped."""
        for event in events:
            if isinstance(event, Deliver):  # (a relay topic's too: its marks move in turn)
                arrived = event.message is new
                self._delivery.put("deliver", event.message, event.source, arrived=arrived)
            else:  # never delivered: an operator's business (see SkipsSaid)
                self._skips.skipped(event)

    # Validators and handlers, one message of a topic at a time, in order

    async def _work(self, kind: str, message: GossipMessage, socket: Socket | None) -> None:
        if not self._threads_started.is_set():  # (the queue keeps the order meanwhile)
            await self._threads_started.wait()
        if kind != "deliver":  # "validate" (live, from socket), "check" (caught up from it)
            await self._validate(message, socket if kind == "validate" else None, socket)
        else:
            called = await call_handlers(self.node, self._handlers, message, socket)
            await self._delivered(message, called > 0)

    def _settle(self) -> None:  # no topic has messages waiting
        if self._marks is not None:
            self._marks.settle_all()

    async def _delivered(self, message: GossipMessage, handled: bool) -> None:
        """The message's turn came and its handlers ran (if ``handled``: none, a relay
        topic's, or all unsubscribed meanwhile: carried); its mark reaches the disk before
        the next message with ``durable_delivery``, unless writes fail (tester41 F1)."""
        if self._marks is not None:
            self._marks.settle(stream_key(message.topic, message.origin), message.seq)
        if not handled:  # (review31: not counted as delivered; review37: nor lost)
            self.carried += 1
            return
        self.delivered += 1  # (once they ran, not queued: tester32 F6)
        count(self.node.metrics.topic_delivered, message.topic, limit=MAX_TOPICS)
        if self.node.options.durable_delivery and not self._log.failing:  # (each tried all)
            await self._log.flush()

    async def _validate(
        self, message: GossipMessage, socket: Socket | None, via: Socket | None
    ) -> None:
        verdict = await judge(self.node, self._validators.get(message.topic), message, via)
        count(self.node.metrics.validation, verdict.value)
        if verdict is Validation.ACCEPT:  # (socket None: caught up, or its peer went)
            self.router.accept(socket.id if socket is not None else None, message)
            self._accepted(socket, message, forward=socket is not None, via=via)
            return
        # Refused: it takes its turn without being delivered.
        self.router.refuse(message.id)
        self._carry_out(self.order.pass_over(message))
        if verdict is Validation.REJECT and socket is not None:
            self.router.stats.invalid += 1
            rejected(self.node, socket, message)

    # Heartbeat: the router's, and the gaps'
    async def _heartbeat(self) -> None:
        interval = self.node.options.gossip_interval
        while True:
            await asyncio.sleep(jittered(self._rng, interval))
            self.router.heartbeat()
            self.check_gaps()

    def check_gaps(self) -> None:
        """Skip the gaps that waited ``gap_timeout``; ask a random peer for the others
        (the one that revealed them lacked them too). At every gossip heartbeat."""
        events, waiting = self.order.tick(busy=self.catchup.fetching)
        self._carry_out(events)
        self._skips.heartbeat(fetching=bool(self.catchup.fetching))
        self._delivery.settle_if_idle()
        self._rng.shuffle(waiting)  # a peer's many gaps don't always come first
        for stream in waiting:
            socket = self.catchup.choose(self.node.sockets)
            if socket is None or self._fetcher is None:
                break
            self._fetcher.refill(socket, stream)

    # Catch-up (:mod:`.gossip_catchup` asks the peers)
    async def _catch_up(self, socket: Socket) -> None:
        if self._fetcher is not None:
            await self._fetcher.round(socket)

    def _take(self, socket: Socket, messages: list[GossipMessage]) -> float:
        """Take a catch-up answer's messages from ``socket``; the seconds to wait before
        asking it for more: new ones spend its share of fetched checks (attacker40 F2)."""
        cap, new = message_size_limit(self.node.options.max_package_size), 0
        for message in messages:
            if cap is not None and (size := wire_size(message)) > cap:
                self._oversized(message, size, cap)
            elif self._ingest(socket, message, live=False):
                new += 1
        self.caught_up += new
        return self.checks.fetched(socket, new)
