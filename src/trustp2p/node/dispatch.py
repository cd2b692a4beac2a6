"""
One connection's inbox and the worker that drains it: thread handlers and socket hooks
run one at a time, in the order their packages arrived (:mod:`.workers` keeps every
connection's).

"""

from __future__ import annotations

__all__ = ["Hook", "Worker", "call_thread", "cancelled"]

import asyncio
import inspect
import logging
import sys
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from ..exceptions import ConnectionClosed, PackageTooLarge
from ..protocol.connection import error_answer
from ..protocol.costs import count_chars
from ..protocol.package import (
    ANSWER_TYPE,
    REQUEST_TYPES,
    Package,
    PackageType,
    build_package,
    check_size,
)
from ..threads.base import Reply
from .failures import failed as handler_failed
from .peer import PeerLog

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..threads.base import Handler, Thread
    from .node import Node

logger = logging.getLogger(__name__)


class Hook:
    """A thread hook waiting in a connection's inbox, behind that connection's packages."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name
        self.args = args


async def call_thread(thread: Thread, name: str, *args: Any) -> None:
    """Call a thread's method or hook, sync or async; what it raises is counted
    (``trustp2p_handler_failures_total{kind="hook",event=name}``) and logged within a
    log budget of its own, as a handler's failures are (:mod:`.failures`: a hook that
    raised on every connection logged a traceback for each)."""
    try:
        result = getattr(thread, name)(*args)
        if inspect.isawaitable(result):
            await result
    except (Exception, asyncio.CancelledError) as exc:
        if cancelled(exc):
            raise
        where = thread.path or type(thread).__name__
        if isinstance(exc, ConnectionClosed):  # the network's doing, not a bug: no traceback
            logger.info("! %s of %s ended: %s", name, where, exc)
            return
        what = f"{name} of {where}"
        handler_failed(thread.node, logger, "hook", name, what, "! %s failed", what)


class Worker:
    """
    The inbox of one connection and the task that drains it.

    When more than ``max_pending`` items wait, or their packages and those of the
    request handlers running take more than ``max_bytes``, reading from the peer
    pauses; it resumes when both are down to half and ``can_resume()`` agrees (the peer
    isn't throttled). While over ``max_bytes``, the next request waits for a running
    one to finish, as when every slot is taken.

    """

    __slots__ = (
        "_bytes",
        "_can_resume",
        "_closed",
        "_freed",
        "_hooks_only",
        "_inbox",
        "_item",
        "_item_thread",
        "_max_bytes",
        "_max_pending",
        "_node",
        "_running",
        "_socket",
        "_stopped",
        "_task",
        "paused",
    )

    def __init__(
        self,
        socket: Socket,
        node: Node,
        *,
        max_pending: int,
        max_bytes: int,
        can_resume: Callable[[], bool],
    ) -> None:
        self._socket = socket
        self._node = node
        # None while empty and not draining: a deque holds 760 bytes even when empty,
        # and a node with thousands of mostly idle connections has one each.
        self._inbox: deque[Package | Hook] | None = None
        self._task: asyncio.Task[None] | None = None
        self._max_pending = max_pending
        self._max_bytes = max_bytes
        self._bytes = 0  # of the packages queued, and of the requests running
        self._can_resume = can_resume
        self._running: dict[asyncio.Task[Any], int] = {}  # suspended request handlers: bytes
        self._freed: asyncio.Future[None] | None = None  # set when one of them ends
        self._closed = False
        self._stopped = False  # the node's stop cancelled it: no next item
        self._hooks_only = False  # its handler stops the node: no next package
        self._item: Package | Hook | None = None  # the one handled now
        self._item_thread: Thread | None = None  # whose handler or hook runs on it
        self.paused = False

    @property
    def peer(self) -> str:
        """The peer of its connection, as log lines name it."""
        return self._socket.peer

    def stop(self, *, hooks: bool = False) -> None:
        """The node stops: take no next item (the rest of the inbox is dropped). With
        ``hooks`` (the worker whose handler stops the node), no next package, but its
        hooks still, once that handler returns: its connection's ``on_socket_close``
        (review67 F3: a thread saw the open without the close)."""
        if hooks:
            self._hooks_only = True
        else:
            self._stopped = True

    def left_running(self) -> None:
        """Say, at WARNING, that the hook or handler running didn't end when the stop
        cancelled it, and runs on after the stop; and how many items of the inbox it
        won't take."""
        item, thread = self._item, self._item_thread
        where = "?" if thread is None else thread.path or type(thread).__name__
        if isinstance(item, Hook):
            what = f"{item.name} of {where}"
        elif item is not None:
            what = f"handler of {item.type.name} {item.event!r} in {where}"
        else:
            what = "a handler"
        dropped = len(self._inbox or ())
        rest = f"; {dropped} item(s) of its inbox dropped" if dropped else ""
        self._log().warning(
            "x %s didn't end when cancelled: it runs on after the stop%s", what, rest
        )

    def put(self, item: Package | Hook) -> asyncio.Task[None] | None:
        """Queue ``item``; returns the worker task if this call started one. A ping is
        not queued: its handler runs now, beside the queue, so that its pong goes ahead
        of what waits for handlers (the peer drops us without it)."""
        if type(item) is Package and item.type is PackageType.HEARTBEAT_PING:
            self._node.tasks.spawn(self._request(item), f"ping from {self._socket.peer}")
            return None
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(item)
        if type(item) is Package:
            self._bytes += _size(item)
        if self._task is None:
            task = _start_task(self._work())
            if not task.done():  # an eager task may have finished already
                self._task = task
                return task
            return None
        if (len(inbox) > self._max_pending or self._bytes > self._max_bytes) and not self.paused:
            self.paused = True
            self._socket.pause_reading()
            waiting = (len(inbox), self._bytes)
            logger.debug("= %d packages, %d bytes for handlers: reading paused", *waiting)
        return None

    def _resume(self) -> None:
        """Read again if what waits is down to half (and the peer isn't throttled)."""
        inbox = self._inbox
        if (
            self.paused
            and (inbox is None or len(inbox) <= self._max_pending // 2)
            and self._bytes <= self._max_bytes // 2
        ):
            self.paused = False
            if self._can_resume():
                self._socket.resume_reading()

    def connection_lost(self, log: logging.LoggerAdapter[logging.Logger]) -> None:
        """
        The connection closed: its requests can't be answered any more. Cancel the
        request handlers still running and leave the requests still queued unstarted;
        talks and hooks queued go on. What is abandoned is counted, and said in ``log``.

        A requester learns of the close (``ConnectionClosed``) and may ask another peer:
        a handler left running would do the work twice, and a peer that sends slow
        requests and drops the connection would keep tasks busy for nothing.
        """
        self._closed = True
        running = list(self._running)
        for task in running:
            task.cancel("connection closed")
        inbox = self._inbox or ()
        queued = sum(1 for item in inbox if type(item) is Package and item.type in REQUEST_TYPES)
        if running or queued:
            node = self._node
            node.metrics.requests_abandoned += len(running) + queued
            # (The "= connection closed" line came just before: this one isn't another.)
            message = "= requests left unanswered by the close: %d running (cancelled), %d queued"
            node.connections.inbound.note(
                log, self._socket, "abandoned", message, len(running), queued
            )

    async def _work(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        threads = self._node.threads
        try:
            while inbox and not self._stopped:
                item = self._item = inbox.popleft()
                self._item_thread = None
                if self.paused:
                    self._resume()
                if type(item) is not Package:
                    assert isinstance(item, Hook)
                    for thread in threads:
                        if self._stopped:  # (one that caught its cancel returned late)
                            break
                        self._item_thread = thread
                        await call_thread(thread, item.name, *item.args)
                elif self._hooks_only:
                    self._bytes -= _size(item)  # dropped
                elif item.type in REQUEST_TYPES:
                    await self._request(item, _size(item))
                else:
                    for thread, handler in self._node.handlers.get(item.type, item.event):
                        if self._stopped:
                            break
                        self._item_thread = thread
                        await self._run(thread, handler, item)
                    self._bytes -= _size(item)
                if self.paused:  # (its bytes are off now: a large one held it paused)
                    self._resume()
        finally:
            self._task = None
            self._item = self._item_thread = None
            if not inbox:
                self._inbox = None

    async def _request(self, package: Package, size: int = 0) -> None:
        """
        Run a request's handler; its response goes out when it finishes.

        A coroutine handler runs at once, up to its first suspension, as Python 3.12's
        eager tasks do: most finish there and are answered without a task. One that
        suspends (it waits for I/O) goes on in a task of its own, beside the next
        requests of the connection (:meth:`_run_on`). ``size``: its bytes, counted until
        its answer is written (attacker48 F2: not while it waited for a peer that reads
        nothing), or while its handler runs on in a task."""
        handed = False
        try:
            entries = self._node.handlers.get(package.type, package.event)
            if not entries or self._closed:
                return
            thread, handler = entries[0]  # one handler per request event
            if (explicit := self._node.handlers.explicit).used:
                explicit.asked(self._socket.id, package.tag)  # one more to answer
            started = time.monotonic()
            try:
                # Any: what the handler returns is checked below, not by a compiled
                # build's check of the declared type (it would fail as the handler, not
                # its answer).
                result: Any = handler(self._socket, package)
                if type(result) is not types.CoroutineType:  # an async def's: the usual
                    if type(result) is dict or result is None or not inspect.isawaitable(result):
                        await self._answer(thread, package, result, started)
                        return
                    result = _awaited(result)
                try:
                    yielded = result.send(None)
                except StopIteration as stop:
                    await self._answer(thread, package, stop.value, started)
                    return
            except (Exception, asyncio.CancelledError) as exc:
                if cancelled(exc):
                    raise
                _log_failure(self._node, self._log(), thread, package)
                await self._answer(thread, package, None, started, failed=True)
                return
            handed = True  # its task counts its bytes
            await self._run_on(thread, package, _resume(result, yielded), started, size)
        finally:
            if not handed:
                self._bytes -= size
                if self.paused:
                    self._resume()

    async def _run_on(
        self,
        thread: Thread,
        package: Package,
        rest: Coroutine[Any, Any, Any],
        started: float,
        size: int,
    ) -> None:
        """A request's handler suspended: it goes on in a task, up to
        ``max_concurrent_requests`` at once; with every slot taken, or the bytes over
        ``max_bytes``, this worker waits for one to free (the inbox fills, reading pauses)."""
        running = self._running
        name = f"request {package.event!r} from {self._socket.peer}"  # (said if left at a stop)
        task = self._node.tasks.spawn(self._finish(thread, package, rest, started), name)
        running[task] = size  # (counted already: off when the task ends)
        task.add_done_callback(self._slot_freed)
        if len(running) >= self._node.options.max_concurrent_requests or (
            self._bytes > self._max_bytes
        ):
            # Every slot taken: the next package waits for the first to free (the inbox
            # fills meanwhile, and reading pauses). A ping's task may wait too: one future.
            freed = self._freed
            if freed is None or freed.done():
                self._freed = freed = asyncio.get_running_loop().create_future()
            try:
                await freed
            finally:
                if self._freed is freed:
                    self._freed = None

    def _slot_freed(self, task: asyncio.Task[Any]) -> None:
        self._bytes -= self._running.pop(task, 0)
        if self.paused:
            self._resume()
        freed = self._freed
        if freed is not None and not freed.done():
            freed.set_result(None)

    async def _finish(
        self,
        thread: Thread,
        package: Package,
        pending: Coroutine[Any, Any, Any],
        started: float,
    ) -> None:
        try:
            result = await pending
        except (Exception, asyncio.CancelledError) as exc:
            if cancelled(exc):
                raise
            _log_failure(self._node, self._log(), thread, package)
            await self._answer(thread, package, None, started, failed=True)
        else:
            await self._answer(thread, package, result, started)

    async def _run(self, thread: Thread, handler: Handler, package: Package) -> None:
        """Run a talk's (or response's, or gossip's) handler to its end."""
        try:
            result = handler(self._socket, package)
            if result is not None and type(result) is not dict and inspect.isawaitable(result):
                await result
        except (Exception, asyncio.CancelledError) as exc:
            if cancelled(exc):
                raise
            _log_failure(self._node, self._log(), thread, package)

    async def _answer(
        self, thread: Thread, package: Package, result: Any, started: float, *, failed: bool = False
    ) -> None:
        """Send a request's response: the handler's dict or :class:`Reply`, or an error
        answer (never with a payload) when it raised or returned neither. ``None`` sends
        nothing (the handler answers itself, or not at all). The handler ran since
        ``started`` (loop time)."""
        node = self._node
        node.metrics.handler_seconds.observe(time.monotonic() - started)
        package_type = package.type
        response = None
        if not failed and result is not None:
            payload = b""
            if type(result) is Reply:
                result, given = result
                payload = b"" if given is None else given
            try:
                # Raises TypeError or ValueError for an answer that can't be sent.
                response = build_package(
                    ANSWER_TYPE[package_type],
                    "pong" if package_type is PackageType.HEARTBEAT_PING else package.event,
                    result,
                    tag=package.tag,
                    alt=node.options.alt,
                    payload=payload,
                )
            except (TypeError, ValueError) as exc:  # the handler's mistake, not ours
                what = _what(thread, package)
                message = "! %s returned what can't be sent: %s"
                _failed(node, self._log(), package, what, message, what, exc, exc_info=False)
                failed = True
        if failed:  # no details: they may be sensitive (as websockets does)
            response = self._error(package, f"handler of {package.event!r} failed")
        elif response is not None and (explicit := node.handlers.explicit).used:
            if explicit.add(self._socket.id, package.tag):  # its answer
                self._answered_twice(thread, package)
        if response is None:
            if result is None:
                self._silent(thread, package)
            return
        try:
            try:
                if (conn := self._node.connection(self._socket)) is not None:  # the asker's
                    check_size(response, conn.protocol.peer_max_size, peer=True)
                await self._send(response)
            except PackageTooLarge as exc:
                # The peer would refuse it, and hold it against us: it gets an error.
                logger.warning("! answer to %r not sent: %s", package.event, exc)
                response = self._error(package, f"response to {package.event!r} too large")
                if response is not None:
                    await self._send(response)
        except ConnectionClosed:
            pass

    def _silent(self, thread: Thread, request: Package) -> None:
        """A request handler returned None: said once if nothing answered it within
        ``explicit.grace`` (:data:`~.handlers.SILENCE_GRACE`)."""
        explicit = self._node.handlers.explicit
        if self._socket.closed or not explicit.returned_none(self._socket.id, request.tag):
            return  # (nobody waits, or it answered already)
        asyncio.get_running_loop().call_later(explicit.grace, self._still_silent, thread, request)

    def _still_silent(self, thread: Thread, request: Package) -> None:
        name = thread.path or type(thread).__name__
        explicit = self._node.handlers.explicit
        conn, tag = self._socket.id, request.tag
        if explicit.first_silence(name, request.event, conn, tag) and not self._socket.closed:
            self._log().warning(
                "! handler of %s %r in %s returned None and sent no response within %g s:"
                " the peer waits for its response_timeout unless the thread's answer()"
                " answers later (said once)",
                request.type.name,
                request.event,
                name,
                explicit.grace,
            )

    def _answered_twice(self, thread: Thread, request: Package) -> None:
        """A handler answered with ``send_response()`` and returned a body too (a
        tester: the peer counted the second as unmatched, and neither side said so)."""
        name = thread.path or type(thread).__name__
        if self._node.handlers.explicit.first_double(name, request.event):
            self._log().warning(
                "! handler of %s %r in %s answered with send_response() and returned a"
                " body too: the peer keeps the first response (said once)",
                request.type.name,
                request.event,
                name,
            )

    def _log(self) -> Any:
        """This module's logger, naming the peer (a tester's JSON logs said ``"peer":
        null`` for a handler's failure)."""
        return PeerLog(logger, {"peer": self._socket.peer})

    def _error(self, request: Package, text: str) -> Package | None:
        return error_answer(
            request.type, request.event, request.tag, text, alt=self._node.options.alt
        )

    async def _send(self, response: Package) -> None:
        """Write an answer once the write buffer has room; while it waits, its text
        counts against ``max_bytes`` (its body is the handler's)."""
        socket = self._socket
        if not socket.write_paused:
            self._node.connections.send_package(socket, response, waited=True)
            return
        held = len(response.body_json) + len(response.payload)
        self._bytes += held
        try:
            await self._node.send(socket, response)  # waits for room
        finally:
            self._bytes -= held
            if self.paused:
                self._resume()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    """A coroutine for any awaitable (a future, an object with ``__await__``)."""
    return await awaitable


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """
    Go on with a coroutine that was stepped once by hand and yielded ``yielded``: what
    ``await`` does after its first step (``yield from``, with that step already taken).
    The task that awaits this gets ``yielded`` (the future the coroutine waits for) and
    sends or throws into it what it would have sent or thrown into the coroutine.
    """
    try:
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                yielded = coro.throw(exc)
            else:
                yielded = coro.send(sent)
    except StopIteration as stop:
        return stop.value


def cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` cancels the running task; a ``CancelledError`` a handler raises
    while its task isn't being cancelled (a task of its own was) is its failure."""
    task = asyncio.current_task()
    cancelling = task is not None and task.cancelling() > 0
    return cancelling and isinstance(exc, asyncio.CancelledError)


_ITEM_BYTES = 48
"""About what a container or an item of a read body takes beyond its text (CPython: 64
bytes for an empty dict, 28 for an int, 8 for its place in a list)."""


def _size(package: Package) -> int:
    """About the bytes a package holds while it waits: its body's text and payload; for a
    body past 1 KiB, its text again (its values read, attacker48 F2), and if it holds
    more than a few strings and integers, :data:`_ITEM_BYTES` for each bracket and comma
    of its text (found by an attacker: 1 MB of ``[{},{},...]`` takes 24 MB read, and was
    counted as 1 MB against ``max_pending_bytes``; counted as ``str.count`` would, not
    for the usual large body, a few long strings)."""
    text = package.body_json
    size = len(text) + len(package.payload)
    if len(text) > 1024:
        size += len(text)  # its values read: a string takes about its text again
        if not _few_values(package.body):
            size += _ITEM_BYTES * count_chars(text, "{[,")
    return size


def _few_values(body: dict[str, object]) -> bool:
    if len(body) > 16:
        return False
    for value in body.values():
        if type(value) is not str and type(value) is not int:
            return False
    return True


def _what(thread: Thread, package: Package) -> str:
    """The handler of ``package`` in ``thread``, as log lines name it."""
    where = thread.path or type(thread).__name__
    return f"handler of {package.type.name} {package.event!r} in {where}"


def _log_failure(node: Node, log: Any, thread: Thread, package: Package) -> None:
    """A handler failed, on a peer's package: counted, and logged within its own log
    budget (a peer chooses how often), with the traceback, on ``log`` (the
    connection's: it names the peer). See :mod:`.failures`."""
    what = _what(thread, package)
    _failed(node, log, package, what, "! %s failed", what)


def _failed(
    node: Node,
    log: Any,
    package: Package,
    what: str,
    message: str,
    *args: object,
    exc_info: bool = True,
) -> None:
    kind = package.type.name.lower()
    handler_failed(node, log, kind, package.event, what, message, *args, exc_info=exc_info)


if sys.version_info >= (3, 12):

    def _start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Run the handlers at once, up to their first suspension: most packages are
        # handled without a trip through the event loop.
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)

else:

    def _start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)
