"""
Publish/subscribe and catch-up on a node: ``node.gossip``.

The routing decisions live in :mod:`trustp2p.protocol.gossip`; this module connects the
router to the node's connections, its threads and its persisted message log
(:mod:`trustp2p.storage.msglog`).

- ``await node.gossip.publish(topic, data)`` (or ``node.publish``) signs and sends a
  message; threads receive a topic's messages through their event map
  (``{PackageType.GOSSIP: {"chat": handler}}``, called as ``handler(socket, message)``;
  ``socket`` is None for the node's own messages and caught-up ones) or
  ``node.gossip.subscribe(topic, handler)`` (``handler(message)``). Each message reaches
  them exactly once, in order per origin and topic: each origin numbers its messages
  per topic (a *stream*).
- Validators (``set_validator``) may accept, ignore or reject a message before it is
  delivered, forwarded or announced; a rejected message counts against the peer that
  sent it.
- Catch-up: when a connection opens, and every ``catchup_interval``, peers exchange
  per-stream high-water marks of their logs (``gossip/hwm``) and fetch what they miss in
  bounded batches (``gossip/fetch``). A gap in a live stream is fetched from the peer
  that revealed it; one that nobody can fill is skipped after ``gap_timeout``.

"""

from __future__ import annotations

__all__ = ["Gossip", "GossipHandler", "GossipThread", "Validation", "Validator"]

import asyncio
import base64
import enum
import inspect
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..drivers.base import Socket
from ..exceptions import ConnectionClosed, GossipError, RemoteError, RequestTimeout
from ..protocol.gossip import (
    GOSSIP_EVENTS,
    GossipMessage,
    GossipRouter,
    RouterAction,
    payload_text,
    sign_message,
)
from ..protocol.package import Body, Package, PackageType, build_package
from ..storage.msglog import LOG_FILE, LoggedMessage, MessageLog
from ..threads.base import EventMap, Thread

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger("trustp2p.gossip")

HWM = "gossip/hwm"
FETCH = "gossip/fetch"
MAX_HWM_ORIGINS = 2000


class Validation(enum.Enum):
    """A validator's verdict on a message."""

    ACCEPT = "accept"  # deliver and forward
    IGNORE = "ignore"  # drop it quietly
    REJECT = "reject"  # drop it and count it against the peer that sent it


Validator = Callable[[GossipMessage], "Validation | Awaitable[Validation]"]
GossipHandler = Callable[[GossipMessage], "Awaitable[None] | None"]


class Gossip:
    """A node's publish/subscribe service; ``node.gossip``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        options = node.options
        self.router = GossipRouter(
            send=self._send,
            clock=time.monotonic,
            degree=options.gossip_degree,
            degree_low=options.gossip_degree_low,
            degree_high=options.gossip_degree_high,
            lazy=options.gossip_lazy,
            fanout=options.gossip_fanout,
            history=options.gossip_history,
            seen_max=options.seen_max,
            seen_ttl=options.seen_ttl,
            max_hops=options.max_hops,
            mode=options.gossip_mode,
        )
        self.log: MessageLog | None = None
        self.delivered = 0  # messages handed to threads and subscribers
        self.caught_up = 0  # messages obtained by catch-up
        self._handlers: dict[str, list[GossipHandler]] = {}
        self._validators: dict[str, Validator] = {}
        # Keyed by stream (see _stream): the log, and these.
        # stream -> seq -> (message to deliver, the peer it came from), or None for one
        # to pass over (rejected)
        self._pending: dict[str, dict[int, tuple[GossipMessage, Socket | None] | None]] = {}
        self._gap_since: dict[str, float] = {}  # stream -> when its gap was noticed
        self._fetching: set[str] = set()  # streams being fetched
        # ("validate" | "deliver", message, the peer it came from or None)
        self._queue: deque[tuple[str, GossipMessage, Socket | None]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # Public API

    @property
    def topics(self) -> set[str]:
        """The topics this node subscribes to."""
        return set(self.router.topics)

    async def publish(self, topic: str, data: Body) -> str:
        """
        Sign and publish a message.

        Returns:
            Its message id.

        Raises:
            ValueError: If the topic is empty or too long, or ``data`` holds NaN.
            TypeError: If ``data`` is not a JSON-serializable dict.

        """
        node = self.node
        assert node.identity is not None
        assert self.log is not None
        # Check everything before taking a sequence number: one taken and not used is a
        # gap that subscribers wait for.
        text = payload_text(topic, data)
        cap = self._max_message_bytes()
        if cap is not None:
            size = len(json.dumps(text, ensure_ascii=False).encode()) + _MESSAGE_OVERHEAD
            if size > cap:
                raise ValueError(
                    f"message of about {size} bytes exceeds {cap}, a quarter of "
                    "max_package_size (so that catch-up answers always fit in a package)"
                )
        seq = self.log.next_seq(_stream(topic, node.identity.peer_id))
        message = sign_message(node.identity, topic, seq, int(time.time() * 1000), data)
        self.log.add(_logged(message))
        self.router.publish(message)
        self._accepted(None, message, logged=True)
        return message.id

    def subscribe(self, topic: str, handler: GossipHandler | None = None) -> None:
        """Receive ``topic``'s messages; ``handler(message)`` is called for each."""
        if handler is not None:
            self._handlers.setdefault(topic, []).append(handler)
        self.router.subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``: its handlers are forgotten."""
        self._handlers.pop(topic, None)
        self.router.unsubscribe(topic)

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Check each new message of ``topic`` before it is delivered or forwarded."""
        if validator is None:
            self._validators.pop(topic, None)
        else:
            self._validators[topic] = validator

    def _max_message_bytes(self) -> int | None:
        """Largest message (its package body, in bytes): a quarter of the package
        limit, so that a catch-up answer, half the limit, always holds one."""
        limit = self.node.options.max_package_size
        return None if limit is None else limit // 4

    # Lifecycle, called by the node

    async def start(self) -> None:
        options = self.node.options
        path = None
        if options.peer_store and self.node.data_dir is not None:
            path = self.node.data_dir / LOG_FILE
        self.log = await MessageLog.open(
            path, max_messages=options.log_max_messages, max_age=options.log_max_age
        )
        for topic in self.node.handlers.events(PackageType.GOSSIP):
            self.router.subscribe(topic)
        self._spawn(self._heartbeat(), "gossip heartbeat")
        self._spawn(self._deliver_forever(), "gossip delivery")
        if options.catchup_interval > 0:
            self._spawn(self._catch_up_forever(), "gossip catch-up")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.log is not None:
            await self.log.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("! %s failed", task.get_name(), exc_info=exc)

    def connection_opened(self, socket: Socket) -> None:
        self.router.add_peer(socket.id)
        self._spawn(self._catch_up(socket), f"catch-up {socket.peer}")

    def connection_closed(self, socket: Socket) -> None:
        self.router.remove_peer(socket.id)

    # Sending

    def _send(self, action: RouterAction) -> None:
        socket = self.node.socket_by_id(action.peer)  # type: ignore[arg-type]
        if socket is None:
            return
        if action.kind == "talk":
            package = build_package(PackageType.TALK, action.event, action.body)
        else:
            assert action.message is not None
            message = action.message
            package = build_package(PackageType.GOSSIP, message.topic, message.to_body())
        try:
            self.node.send_package(socket, package)
        except ConnectionClosed:
            pass

    # Receiving

    def receive(self, socket: Socket, package: Package) -> None:
        """A GOSSIP package arrived (from the node's read path)."""
        if package.event not in self.router.topics:
            return  # not ours to carry
        # Most copies are duplicates: drop them by id before checking a signature.
        message_id = GossipMessage.peek_id(package.event, package.body)
        if message_id is not None and self.router.duplicate(socket.id, message_id):
            return
        try:
            message = GossipMessage.from_body(
                package.event, package.body, max_data=self.node.options.max_package_size
            )
        except GossipError as exc:
            self.router.stats.invalid += 1
            self.node.penalize(socket, f"invalid gossip message: {exc}")
            return
        cap = self._max_message_bytes()
        text = package.body_json
        # A character takes 1 to 4 bytes: encode only bodies that may be too large.
        if cap is not None and len(text) * 4 > cap and (size := len(text.encode())) > cap:
            self._oversized(message, size, cap)
            return
        self._ingest(socket, message, live=True)

    def _oversized(self, message: GossipMessage, size: int, cap: int) -> None:
        """
        A valid message too large for our catch-up answers (its origin has a larger
        ``max_package_size``): not delivered, logged nor forwarded, and not held against
        the peer that passed it on; its sequence number is passed over, so that the
        origin's later messages don't wait for it.
        """
        assert self.log is not None
        self.router.stats.oversized += 1
        logger.info(
            "! dropped message %d of %s on %r: %d bytes exceed %d",
            message.seq,
            message.origin,
            message.topic,
            size,
            cap,
        )
        if not self.router.receive(None, message, pending=True):
            return  # seen before: it holds its place already, or was dealt with
        self.router.refuse(message.id)  # seen: its copies are dropped by id
        if message.seq > self.log.delivered(_stream_of(message)):
            self._passed_over(message)

    def on_control(self, socket: Socket, package: Package) -> None:
        """A router control talk arrived (through the built-in thread)."""
        try:
            self.router.control(socket.id, package.event, package.body)
        except GossipError as exc:
            self.node.penalize(socket, f"invalid {package.event}: {exc}")

    def _ingest(self, socket: Socket | None, message: GossipMessage, *, live: bool) -> bool:
        """Take a verified message; return True if it was new."""
        assert self.log is not None
        if message.topic not in self.router.topics:
            return False  # not ours to carry
        # Delivered already, or older than anything we remember delivering (it might be
        # a repeat): dropped, but seen, so that its copies are dropped by id.
        max_age = self.node.options.log_max_age
        stale = self.log.delivered(_stream_of(message)) >= message.seq or (
            message.timestamp < (time.time() - max_age) * 1000
        )
        # A message awaiting its validator (or dropped) is neither announced nor served.
        new = self.router.receive(
            socket.id if socket is not None else None,
            message,
            pending=stale or message.topic in self._validators,
        )
        if not new:
            return False
        if stale:
            self.router.refuse(message.id)
            return False
        source = socket if live else None
        if message.topic in self._validators:
            self._queue.append(("validate", message, source))
            self._wakeup.set()
        else:
            self._accepted(source, message, forward=live)
        return True

    def _accepted(
        self,
        socket: Socket | None,
        message: GossipMessage,
        *,
        forward: bool = False,
        logged: bool = False,
    ) -> None:
        """A message passed validation: log it, send it on, deliver it in turn."""
        assert self.log is not None
        if not logged:
            self.log.add(_logged(message))
        if forward:
            self.router.forward(socket.id if socket is not None else None, message)
        stream = _stream_of(message)
        self._pending.setdefault(stream, {})[message.seq] = (message, socket)
        self._release(stream, socket)

    def _passed_over(self, message: GossipMessage) -> None:
        """A validator refused the message: it takes its turn without being delivered."""
        stream = _stream_of(message)
        self._pending.setdefault(stream, {})[message.seq] = None
        self._release(stream, None)

    def delivered_seq(self, topic: str, origin: str) -> int:
        """The last seq of ``origin``'s messages on ``topic`` delivered here (0: none)."""
        assert self.log is not None
        return self.log.delivered(_stream(topic, origin))

    def _release(self, origin: str, socket: Socket | None) -> None:
        """Deliver the messages of stream ``origin`` that are next in sequence."""
        assert self.log is not None
        pending = self._pending.get(origin)
        if not pending:
            return
        following = self.log.delivered(origin) + 1
        while following in pending:
            entry = pending.pop(following)
            self.log.mark_delivered(origin, following)
            if entry is not None:
                self._deliver(*entry)  # with the peer it came from, not the last one
            following += 1
        if pending:
            self._gap_since.setdefault(origin, time.monotonic())
            if socket is not None:
                self._refill(socket, origin)
        else:
            self._pending.pop(origin, None)
            self._gap_since.pop(origin, None)

    def _refill(self, socket: Socket, origin: str) -> None:
        """Fetch what is missing before ``origin``'s first pending message."""
        assert self.log is not None
        pending = self._pending.get(origin)
        if not pending or origin in self._fetching:
            return
        first, last = self.log.delivered(origin) + 1, min(pending) - 1
        if first <= last:
            self._spawn(self._fill(socket, origin, first, last), f"fill {origin}")

    def _deliver(self, message: GossipMessage, socket: Socket | None) -> None:
        self.delivered += 1
        self._queue.append(("deliver", message, socket))
        self._wakeup.set()

    async def _deliver_forever(self) -> None:
        """Run validators and handlers, one message at a time, in order."""
        queue = self._queue
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                kind, message, socket = queue.popleft()
                if kind == "validate":
                    await self._validate(message, socket)
                else:
                    await self._call_handlers(message, socket)

    async def _validate(self, message: GossipMessage, socket: Socket | None) -> None:
        validator = self._validators.get(message.topic)  # None: removed since queued
        try:
            verdict = validator(message) if validator is not None else Validation.ACCEPT
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.error("! validator of %r failed", message.topic, exc_info=True)
            verdict = Validation.IGNORE
        if verdict is Validation.ACCEPT:
            self.router.accept(socket.id if socket is not None else None, message)
            self._accepted(socket, message, forward=socket is not None)
            return
        self.router.refuse(message.id)
        self._passed_over(message)
        if verdict is Validation.REJECT and socket is not None:
            self.router.stats.invalid += 1
            self.node.penalize(
                socket, f"gossip message rejected by the validator of {message.topic!r}"
            )

    async def _call_handlers(self, message: GossipMessage, socket: Socket | None) -> None:
        node = self.node
        for thread, handler in node.handlers.get(PackageType.GOSSIP, message.topic):
            try:
                result = handler(socket, message)  # type: ignore[arg-type]
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.error(
                    "! gossip handler of %r in %s failed",
                    message.topic,
                    thread.path or type(thread).__name__,
                    exc_info=True,
                )
        for callback in self._handlers.get(message.topic, ()):
            try:
                result = callback(message)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.error("! gossip subscriber of %r failed", message.topic, exc_info=True)

    async def _heartbeat(self) -> None:
        interval = self.node.options.gossip_interval
        gap_timeout = self.node.options.gap_timeout
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            self.router.heartbeat()
            now = time.monotonic()
            sockets = self.node.sockets
            for origin, since in list(self._gap_since.items()):
                if origin in self._fetching:
                    continue
                if now - since >= gap_timeout:
                    self._skip_gap(origin)
                elif sockets:
                    # The peer that revealed the gap didn't have what is missing either:
                    # ask another one.
                    self._refill(random.choice(sockets), origin)

    def _skip_gap(self, origin: str) -> None:
        """Nobody filled the gap in time: deliver what follows it, and say so."""
        assert self.log is not None
        pending = self._pending.get(origin)
        self._gap_since.pop(origin, None)
        if not pending:
            return
        first = min(pending)
        missing = first - self.log.delivered(origin) - 1
        topic, peer = origin.split("\0", 1)
        logger.info(
            "! %d messages of %s on %r before seq %d never arrived; skipped",
            missing,
            peer,
            topic,
            first,
        )
        self.log.mark_delivered(origin, first - 1)
        self._release(origin, None)

    # Catch-up

    async def _catch_up_forever(self) -> None:
        while True:
            await asyncio.sleep(self.node.options.catchup_interval * random.uniform(0.9, 1.1))
            sockets = self.node.sockets
            if sockets:
                await self._catch_up(random.choice(sockets))

    async def _catch_up(self, socket: Socket) -> None:
        """Ask a peer what it has of our topics, and fetch what we miss."""
        assert self.log is not None
        if not self.router.topics:
            return
        try:
            answer = await self._request(socket, HWM, {"topics": sorted(self.router.topics)})
        except (ConnectionClosed, RequestTimeout):
            return
        except RemoteError as exc:
            _refused(socket, exc)
            return
        marks = answer.get("hwm")
        if not isinstance(marks, dict) or len(marks) > 1000:
            self.node.penalize(socket, "invalid gossip/hwm answer")
            return
        for topic, origins in marks.items():
            if topic not in self.router.topics:
                continue
            if not isinstance(origins, dict) or len(origins) > MAX_HWM_ORIGINS:
                self.node.penalize(socket, "invalid gossip/hwm answer")
                return
            ours = self.log.high_water(topic)
            for origin, last in origins.items():
                if not isinstance(origin, str) or type(last) is not int:
                    self.node.penalize(socket, "invalid gossip/hwm answer")
                    return
                stream = _stream(topic, origin)
                have = max(ours.get(stream, 0), self.log.delivered(stream))
                if last > have and stream not in self._fetching:
                    await self._fill(socket, stream, have + 1, last)

    async def _fill(self, socket: Socket, stream: str, first: int, last: int) -> None:
        """Fetch the messages ``first..last`` of a stream from a peer, in batches."""
        assert self.log is not None
        if stream in self._fetching:
            return
        self._fetching.add(stream)
        topic, origin = stream.split("\0", 1)
        batch = self.node.options.catchup_batch
        try:
            while first <= last:
                request = {
                    "topic": topic,
                    "origin": origin,
                    "from": first,
                    "to": min(last, first + batch - 1),
                }
                try:
                    answer = await self._request(socket, FETCH, request)
                except (ConnectionClosed, RequestTimeout):
                    return
                except RemoteError as exc:
                    _refused(socket, exc)
                    return
                messages = answer.get("messages")
                if not isinstance(messages, list) or len(messages) > batch:
                    self.node.penalize(socket, "invalid gossip/fetch answer")
                    return
                if not messages:
                    return  # the peer doesn't have them (yet); others may
                for item in messages:
                    try:
                        if not isinstance(item, dict):
                            raise GossipError("not an object")
                        message = GossipMessage.from_body(topic, item)
                    except GossipError as exc:
                        self.node.penalize(socket, f"invalid message in gossip/fetch: {exc}")
                        return
                    if message.origin != origin or not first <= message.seq <= last:
                        self.node.penalize(socket, "gossip/fetch answered with other messages")
                        return
                    cap = self._max_message_bytes()
                    if cap is not None and (size := _wire_size(message)) > cap:
                        self._oversized(message, size, cap)
                    elif self._ingest(socket, message, live=False):
                        self.caught_up += 1
                    first = message.seq + 1
        finally:
            self._fetching.discard(stream)
            self._release(stream, None)

    async def _request(self, socket: Socket, event: str, body: Body) -> Body:
        role = self.node.server if socket.inbound else self.node.client
        assert role is not None
        return await role.request(socket, event, body, timeout=self.node.options.open_timeout)

    # Serving catch-up (handlers of the built-in thread)

    def serve_hwm(self, socket: Socket, package: Package) -> Body:
        """``gossip/hwm``: per topic asked (and carried), per origin, the last seq we have
        with nothing missing before it."""
        assert self.log is not None
        topics = package.body.get("topics")
        if not isinstance(topics, list) or len(topics) > 1000:
            self.node.penalize(socket, "invalid gossip/hwm request")
            return {"error": "invalid request"}
        marks: dict[str, dict[str, int]] = {}
        for topic in topics:
            if isinstance(topic, str) and topic in self.router.topics:
                streams = self.log.high_water(topic)
                best = sorted(streams.items(), key=lambda item: -item[1])[:MAX_HWM_ORIGINS]
                marks[topic] = {stream.split("\0", 1)[1]: seq for stream, seq in best}
        return {"hwm": marks}

    def serve_fetch(self, socket: Socket, package: Package) -> Body:
        """``gossip/fetch``: a stream's messages ``from..to`` (bounded), oldest first."""
        assert self.log is not None
        body = package.body
        topic, origin = body.get("topic"), body.get("origin")
        first, last = body.get("from"), body.get("to")
        if (
            not isinstance(topic, str)
            or not isinstance(origin, str)
            or type(first) is not int
            or type(last) is not int
        ):
            self.node.penalize(socket, "invalid gossip/fetch request")
            return {"error": "invalid request"}
        if topic not in self.router.topics:
            return {"messages": []}
        # Half the package limit leaves room for the rest of the answer.
        limit = self.node.options.max_package_size
        max_bytes = limit // 2 if limit is not None else 512 * 1024
        logged = self.log.range(
            _stream(topic, origin),
            first,
            last,
            limit=self.node.options.catchup_batch,
            max_bytes=max_bytes,
        )
        # The log counts payload characters only; on the wire each message also carries
        # its key and signature, and its payload JSON-escaped and UTF-8 encoded. Count
        # that, or many small (or non-ASCII) messages overflow the package limit.
        messages: list[Body] = []
        size = 0
        for item in logged:
            body = _from_logged(item).to_body()
            size += len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()) + 1
            if size > max_bytes and messages:
                break  # the asker asks again from the last seq it got + 1
            messages.append(body)
        return {"messages": messages}


_MESSAGE_OVERHEAD = 320
"""Bytes of a message's package body besides its data: keys, origin, seq, timestamp,
public key and signature (base64), hops. At most about 300."""


def _wire_size(message: GossipMessage) -> int:
    """Bytes of a message's package body, as a fetch answer carries it."""
    body = message.to_body()
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def _refused(socket: Socket, error: RemoteError) -> None:
    """
    A peer answered a catch-up request with an error: it may run without gossip. Not a
    fault; we ask another peer later.
    """
    logger.debug("! %s answered %s with an error: %.200s", socket.peer, error.event, error.error)


def _stream(topic: str, origin: str) -> str:
    """The key of an origin's messages on a topic: each is numbered from 1."""
    return f"{topic}\0{origin}"


def _stream_of(message: GossipMessage) -> str:
    return f"{message.topic}\0{message.origin}"


def _logged(message: GossipMessage) -> LoggedMessage:
    # The log knows streams, not origins: its "origin" is the stream key.
    return LoggedMessage(
        topic=message.topic,
        origin=_stream_of(message),
        seq=message.seq,
        timestamp=float(message.timestamp),
        data=message.data,
        key=base64.b64encode(message.key).decode("ascii"),
        signature=base64.b64encode(message.signature).decode("ascii"),
        id=message.id,
    )


def _from_logged(logged: LoggedMessage) -> GossipMessage:
    return GossipMessage(
        logged.topic,
        logged.origin.split("\0", 1)[1],
        logged.seq,
        int(logged.timestamp),
        logged.data,
        base64.b64decode(logged.key),
        base64.b64decode(logged.signature),
        logged.id,
    )


class GossipThread(Thread):
    """The built-in thread that carries the router's control talks and serves catch-up."""

    @property
    def event_map(self) -> EventMap:
        gossip = self.node.gossip
        assert gossip is not None
        return {
            PackageType.TALK: {event: gossip.on_control for event in GOSSIP_EVENTS},
            PackageType.REQUEST: {HWM: gossip.serve_hwm, FETCH: gossip.serve_fetch},
        }
