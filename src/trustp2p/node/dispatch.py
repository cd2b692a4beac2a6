"""
One connection's inbox and the worker that drains it: thread handlers and socket hooks
run one at a time, in the order their packages arrived.

"""

from __future__ import annotations

__all__ = ["Hook", "Worker", "call_thread"]

import asyncio
import inspect
import logging
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..exceptions import ConnectionClosed
from ..protocol.connection import error_answer
from ..protocol.package import REQUEST_TYPES, Package, PackageType, build_package

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..threads.base import Thread
    from .node import Node

logger = logging.getLogger("trustp2p.node")

_RESPONSE_TYPE = {
    PackageType.REQUEST: PackageType.RESPONSE,
    PackageType.HEARTBEAT_PING: PackageType.HEARTBEAT_PONG,
}


class Hook:
    """A thread hook waiting in a connection's inbox, behind that connection's packages."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name
        self.args = args


async def call_thread(thread: Thread, name: str, *args: Any) -> None:
    """Call a thread's method or hook, sync or async; log what it raises."""
    try:
        result = getattr(thread, name)(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.error("! %s of %s failed", name, thread.path or type(thread).__name__, exc_info=True)


class Worker:
    """
    The inbox of one connection and the task that drains it.

    When more than ``max_pending`` items wait, reading from the peer pauses; it resumes
    when half of them are done and ``can_resume()`` agrees (the peer isn't throttled).

    """

    __slots__ = ("_can_resume", "_inbox", "_max_pending", "_node", "_socket", "_task", "paused")

    def __init__(
        self, socket: Socket, node: Node, *, max_pending: int, can_resume: Callable[[], bool]
    ) -> None:
        self._socket = socket
        self._node = node
        self._inbox: deque[Package | Hook] = deque()
        self._task: asyncio.Task[None] | None = None
        self._max_pending = max_pending
        self._can_resume = can_resume
        self.paused = False

    def put(self, item: Package | Hook) -> asyncio.Task[None] | None:
        """Queue ``item``; returns the worker task if this call started one."""
        inbox = self._inbox
        inbox.append(item)
        if self._task is None:
            task = _start_task(self._work())
            if not task.done():  # an eager task may have finished already
                self._task = task
                return task
            return None
        if len(inbox) > self._max_pending and not self.paused:
            self.paused = True
            self._socket.pause_reading()
            logger.debug("= %d packages waiting for handlers: reading paused", len(inbox))
        return None

    async def _work(self) -> None:
        inbox = self._inbox
        resume_at = self._max_pending // 2
        threads = self._node.threads
        try:
            while inbox:
                item = inbox.popleft()
                if self.paused and len(inbox) <= resume_at:
                    self.paused = False
                    if self._can_resume():
                        self._socket.resume_reading()
                if type(item) is Package:
                    await self._handle(item)
                else:
                    assert isinstance(item, Hook)
                    for thread in threads:
                        await call_thread(thread, item.name, *item.args)
        finally:
            self._task = None

    async def _handle(self, package: Package) -> None:
        node = self._node
        socket = self._socket
        package_type = package.type
        is_request = package_type in REQUEST_TYPES
        for thread, handler in node.handlers.get(package_type, package.event):
            try:
                result = handler(socket, package)
                if result is not None and type(result) is not dict and inspect.isawaitable(result):
                    result = await result
                response = None
                if is_request and result is not None:
                    # Raises TypeError or ValueError if the handler returned no JSON object.
                    response = build_package(
                        _RESPONSE_TYPE[package_type],
                        "pong" if package_type is PackageType.HEARTBEAT_PING else package.event,
                        result,
                        tag=package.tag,
                        alt=node.options.alt,
                    )
            except Exception:
                logger.error(
                    "! handler of %s %r in %s failed",
                    package_type.name,
                    package.event,
                    thread.path or type(thread).__name__,
                    exc_info=True,
                )
                if is_request:
                    # No details: they may be sensitive (as websockets does).
                    response = error_answer(
                        package_type,
                        package.event,
                        package.tag,
                        f"handler of {package.event!r} failed",
                        alt=node.options.alt,
                    )
                else:
                    continue
            if response is not None:
                try:
                    await node.send(socket, response)
                except ConnectionClosed:
                    return


if sys.version_info >= (3, 12):

    def _start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Run the handlers at once, up to their first suspension: most packages are
        # handled without a trip through the event loop.
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)

else:

    def _start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)
