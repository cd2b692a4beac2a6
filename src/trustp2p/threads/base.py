"""
Threads: application logic as plugin classes (asyncio code, not OS threads).

A thread declares an :attr:`Thread.event_map` from package type to event name to
handler, and may implement lifecycle hooks. The node calls a handler as
``handler(socket, package)``; handlers and hooks may be plain functions or coroutines.

"""

from __future__ import annotations

__all__ = ["EventMap", "Handler", "HandlerResult", "Reply", "Thread"]

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ..drivers.base import Socket
from ..protocol.package import ANSWER_TYPE, Body, Package, PackageType
from ..tasks import TaskOwner

if TYPE_CHECKING:
    from ..node import Node
    from ..node.roles import ClientRole, ServerRole


class Reply(NamedTuple):
    """
    A request handler's answer with a payload: ``return Reply({"ok": True}, data)``
    sends ``data`` beside the response's body (wire field 7; the original ignores it).
    A handler that needs no payload returns the body dict alone.
    """

    body: Body
    """The response body, a JSON object."""
    payload: bytes | None = b""
    """Binary data beside the body; ``b""`` or ``None``: none (as ``request(payload=)``)."""


HandlerResult = Body | Reply | None | Awaitable[Body | Reply | None]
"""A request handler's return value: a body to send back as the response, a
:class:`Reply` (a body and a payload), or ``None``."""

Handler = Callable[[Socket, Package], HandlerResult]
"""``handler(socket, package)``; sync or async."""

EventMap = Mapping[PackageType, Mapping[str, Handler]]
"""``{PackageType.REQUEST: {"echo": handler}}``."""


class Thread:
    """
    Base class of threads.

    The node instantiates each thread once as ``ThreadClass(node)``, then calls
    :meth:`start` once every thread is loaded, and :meth:`stop` on shutdown.

    Handlers of one connection start in the order the packages arrived; talk, gossip and
    response handlers and the connection hooks run one at a time, in that order
    (``on_socket_connection`` before the first handler, ``on_socket_close`` after the
    last to start). A coroutine request handler that waits (for I/O) goes on beside the
    next packages, up to ``max_concurrent_requests`` (16) at once. When the connection
    closes, the request handlers still running are cancelled (their answer can't be
    sent) and the requests still queued never start. Another connection's handlers run
    concurrently. An
    exception in a handler or hook is logged with the thread's file and doesn't disturb
    other threads.

    A request handler (``REQUEST`` or ``HEARTBEAT_PING``) may return a dict: the node
    sends it back as the response, with the request's tag. Returning ``None`` sends
    nothing: answer later with :meth:`answer` (a handler that returns ``None`` and
    hasn't answered within :data:`~trustp2p.node.handlers.SILENCE_GRACE` is warned of
    once). If it raises, the requester gets ``{"error": ...}``.

    Attributes:
        node: The node running this thread.
        server: ``node.server``, or ``None`` when the node doesn't accept peers.
        client: ``node.client``, or ``None`` when the node doesn't dial peers.
        log: This thread's logger, ``trustp2p.threads.<ClassName>``.
        path: The file the thread was loaded from, if any.

    """

    path: str | None = None

    def __init__(self, node: Node) -> None:
        self.node = node
        self.server: ServerRole | None = node.server
        self.client: ClientRole | None = node.client
        self.log = logging.getLogger(f"trustp2p.threads.{type(self).__name__}")
        self.tasks = TaskOwner(self.log, owner=self.path or type(self).__name__)
        """The owner of this thread's tasks (see :meth:`create_task`)."""

    @property
    def event_map(self) -> EventMap:
        """The packages this thread handles; must not be empty."""
        raise NotImplementedError(f"{type(self).__name__} must define event_map")

    def start(self) -> Awaitable[None] | None:
        """Called once all threads are loaded, in load order, before the node accepts or
        dials peers. No thread's gossip handler runs before every thread's ``start()``
        returned: the messages a crash left undelivered, and those published (by this
        thread too) while the threads start, wait until then. If it raises, the node
        doesn't start: ``Node.start()`` raises :exc:`~trustp2p.ThreadLoadError` (its
        ``__cause__`` is what ``start()`` raised) after stopping the threads started
        before this one (not this one)."""
        return None

    def stop(self) -> Awaitable[None] | None:
        """
        Called on shutdown, before connections close, for ``close_timeout`` at most;
        gossip delivery has stopped by then: no handler starts (what wasn't delivered
        stays in the log, for the next start), but the handlers running at the stop may
        still run, up to ``close_timeout``: one waiting for something ``stop()`` ends
        (an event, a queue) returns then. Talks, and :meth:`~trustp2p.Node.publish`, still reach the
        peers connected: a goodbye published here goes out (the node's own handlers
        get it at its next start, as every message not delivered at the stop); once
        every thread's ``stop()`` returned, ``publish()`` raises
        :exc:`~trustp2p.NodeStateError`.

        Tasks made with :meth:`create_task` that are still running afterwards are
        cancelled and awaited.

        """
        return None

    def on_socket_connection(self, socket: Socket) -> Awaitable[None] | None:
        """A peer connected to us (``socket.inbound`` is true)."""
        return None

    def on_socket_open(self, socket: Socket) -> Awaitable[None] | None:
        """We connected to a server."""
        return None

    def on_socket_close(self, socket: Socket) -> Awaitable[None] | None:
        """A connection closed; ``socket.close_code`` and ``close_reason`` say how."""
        return None

    def on_socket_error(self, socket: Socket, error: Exception) -> Awaitable[None] | None:
        """A connection failed or a peer sent something invalid."""
        return None

    def create_task(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """
        Run a coroutine in a task owned by this thread.

        The node cancels and awaits it after :meth:`stop`, if it is still running; an
        exception it raises is logged.

        """
        return self.tasks.spawn(coro, name)

    async def answer(
        self, socket: Socket, request: Package, body: Body, *, payload: bytes | None = None
    ) -> None:
        """
        Answer ``request`` (a ``REQUEST`` or ``HEARTBEAT_PING`` that arrived on
        ``socket``) later, from a task, after its handler returned ``None``: with its
        event and tag, on the role it came through (found by a new user, who had to
        guess which role and event :meth:`Role.send_response` wanted).

        Raises:
            ConnectionClosed: If the connection is closed.
            ValueError: If ``request`` is no request.

        """
        answer_type = ANSWER_TYPE.get(request.type)
        if answer_type is None:
            raise ValueError(f"{request.type.name} {request.event!r} is no request")
        role = self.server if socket.inbound else self.client
        if role is None:
            raise ValueError("the socket is none of this node's")
        await role.send_response(
            socket, request.event, body, request.tag, package_type=answer_type, payload=payload
        )

    async def cancel_tasks(self) -> None:
        """Cancel and await the tasks still running (the node calls this after
        :meth:`stop`)."""
        await self.tasks.aclose()
