"""
The in-memory driver: connections between nodes of one process, for tests and simulations.

Servers register on a :class:`MemoryHub` under ``memory://host:port``; clients dial that
URL. Messages are delivered in order, one event loop iteration later, and honour the same
limits, close codes and events as the other drivers.

For simulations, each node's driver may carry a ``name``: the hub can then delay the
messages of a link (:meth:`MemoryHub.set_delay`) and cut the network into groups that
can't reach each other (:meth:`MemoryHub.partition`, :meth:`MemoryHub.heal`). An inbound
socket's ``host`` is the name of the dialling node's driver.

"""

from __future__ import annotations

__all__ = [
    "DEFAULT_HUB",
    "RECEIVE_WINDOW",
    "MemoryDriver",
    "MemoryHub",
    "MemoryListening",
    "MemorySocket",
]

import asyncio
import itertools
import weakref
from collections import deque
from collections.abc import Iterable
from time import perf_counter
from urllib.parse import urlsplit

from ..exceptions import ConnectionDropped, DriverError
from .base import (
    DROPPED,
    CloseCode,
    Driver,
    DriverOptions,
    Listener,
    Listening,
    Socket,
    dropped_reason,
    turn_length,
)

_OPEN, _CLOSING, _CLOSED = range(3)

RECEIVE_WINDOW = 2**18
"""Bytes of the inbox of an end that paused reading that count as taken by it, as a TCP
receiver's kernel takes (and acknowledges) what its application doesn't read, until its
window closes: :meth:`MemorySocket.bytes_in_flight` counts only what is past it."""


class _Close:
    """A close frame travelling in a socket's inbox behind the messages sent before it."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


_ABORTED = _Close(CloseCode.ABNORMAL_CLOSURE, "")  # in an inbox, behind what came first


class MemoryHub:
    """
    The address space that memory sockets connect in.

    Args:
        delay: Time each message and close takes to arrive, in seconds.

    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self._listening: dict[str, MemoryListening] = {}
        self._ports = itertools.count(49152)
        self._clients = itertools.count(1)
        self._names = itertools.count(1)
        self._delays: dict[frozenset[str], float] = {}
        self._groups: dict[str, int] = {}  # node name -> partition group
        self._sockets: weakref.WeakSet[MemorySocket] = weakref.WeakSet()

    def set_delay(self, seconds: float, a: str | None = None, b: str | None = None) -> None:
        """Delay the messages between nodes ``a`` and ``b``, or on every link."""
        if a is None or b is None:
            self.delay = seconds
        else:
            self._delays[frozenset((a, b))] = seconds

    def link_delay(self, a: str, b: str) -> float:
        if not self._delays:  # (asked for every message: no set made for nothing)
            return self.delay
        return self._delays.get(frozenset((a, b)), self.delay)

    def reachable(self, a: str, b: str) -> bool:
        """False when a partition separates nodes ``a`` and ``b``."""
        group_a, group_b = self._groups.get(a), self._groups.get(b)
        return group_a is None or group_b is None or group_a == group_b

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """
        Cut the network: nodes (by driver name) of different groups can't connect, and
        their open connections drop (code 1006). Nodes in no group reach everyone.
        """
        self._groups = {name: index for index, group in enumerate(groups) for name in group}
        for socket in list(self._sockets):
            if not socket.closed and not self.reachable(socket.local_node, socket.remote_node):
                socket.abort()

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._groups = {}

    # For MemoryDriver and MemoryListening: the hub owns its address space.

    def new_name(self) -> str:
        """A name for a driver created without one: ``memory-1``, ``memory-2``..."""
        return f"memory-{next(self._names)}"

    def listen(
        self, host: str, port: int, *, listener: Listener, options: DriverOptions, name: str
    ) -> MemoryListening:
        """
        Register a server of the driver ``name`` at ``host:port``.

        Args:
            port: The port; 0 picks a free one, from 49152 up.

        Raises:
            DriverError: If a server already listens at that address.

        """
        if port == 0:
            port = next(self._ports)
            while f"{host}:{port}" in self._listening:
                port = next(self._ports)
        address = f"{host}:{port}"
        if address in self._listening:
            raise DriverError(f"can't listen on {address}: address already in use")
        listening = MemoryListening(self, address, listener, options, name)
        self._listening[address] = listening
        return listening

    def stop_listening(self, listening: MemoryListening) -> None:
        """Free the address of ``listening`` (if it still holds it): nobody can dial it."""
        if self._listening.get(listening.address) is listening:
            del self._listening[listening.address]

    def connect(
        self,
        url: str,
        address: str,
        *,
        listener: Listener,
        options: DriverOptions,
        name: str,
        host: str,
    ) -> tuple[MemorySocket, MemorySocket]:
        """
        Open a connection from the driver ``name`` to the server at ``address``.

        Args:
            url: The URL dialled (``address`` is its ``host:port``): the client end's
                ``peer``, and named in errors.
            listener, options, host: The client end's.
            name: The dialling driver's name.

        Returns:
            The client end and the server end, linked to each other. Neither listener has
            heard of them yet: :meth:`MemorySocket.announce` does that.

        Raises:
            DriverError: If nothing listens at ``address``, or a partition separates
                the two nodes.

        """
        listening = self._listening.get(address)
        if listening is None:
            raise DriverError(f"can't connect to {url}: nothing listens there")
        if not self.reachable(name, listening.name):
            raise DriverError(f"can't connect to {url}: partitioned away")
        client = MemorySocket(
            listener=listener,
            options=options,
            hub=self,
            inbound=False,
            peer=url,
            host=host,
            local=name,
            remote=listening.name,
        )
        server = MemorySocket(
            listener=listening.listener,
            options=listening.options,
            hub=self,
            inbound=True,
            peer=f"{name}#{next(self._clients)}",
            host=name,
            local=listening.name,
            remote=name,
        )
        client.attach(server)
        server.attach(client)
        self._sockets.add(client)
        self._sockets.add(server)
        return client, server


DEFAULT_HUB = MemoryHub()
"""The hub of :class:`MemoryDriver` instances created without one."""


class MemorySocket(Socket):
    """
    One end of an in-memory connection.

    What one end writes is fed to the other (:meth:`feed_data`, :meth:`feed_close`,
    :meth:`peer_aborted`); the writer's buffer is the other end's inbox, so the writer's
    :meth:`drain` waits on the other end (:attr:`buffered`, :meth:`wait_drained`).

    Attributes:
        local_node: The name of this end's driver, for partitions and link delays.
        remote_node: The name of the other end's driver.

    """

    def __init__(
        self,
        *,
        listener: Listener,
        options: DriverOptions,
        hub: MemoryHub,
        inbound: bool,
        peer: str,
        host: str,
        local: str = "",
        remote: str = "",
    ) -> None:
        super().__init__(listener=listener, inbound=inbound, peer=peer, host=host)
        self._options = options
        self._hub = hub
        self.local_node = local
        self.remote_node = remote
        # Delayed items; made on the first delay (a simulation holds thousands of ends).
        self._in_flight: deque[tuple[float, bytes | _Close]] | None = None
        self._other: MemorySocket | None = None
        self._state = _OPEN
        self._close_sent: tuple[int, str] | None = None
        # What arrived and isn't delivered; None while empty (a deque holds 760 bytes
        # even when empty, and a simulation has thousands of idle ends).
        self._inbox: deque[bytes | _Close] | None = None
        self._inbox_size = 0
        self._flush_scheduled = False
        self._paused, self._paused_since = False, 0.0
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost_waiter: asyncio.Future[None] = self._loop.create_future()
        self._announced = False  # the listener heard of it: it hears on_close too

    @property
    def closed(self) -> bool:
        return self._state != _OPEN

    @property
    def write_paused(self) -> bool:
        other = self._other
        return other is not None and other.buffered > self._options.write_limit

    @property
    def write_buffer_size(self) -> int:
        other = self._other
        return other.buffered if other is not None else 0

    def write(self, data: bytes) -> None:
        if self._state != _OPEN:
            raise self._closed_exc()
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += len(data)
        assert self._other is not None
        self._other.feed_data(bytes(data))

    def bytes_in_flight(self) -> int:
        """What is still on the link (delayed), and what waits in the other end's inbox
        (past :data:`RECEIVE_WINDOW` while it has paused reading)."""
        other = self._other
        return 0 if other is None or self._state == _CLOSED else other.pending_bytes()

    async def drain(self) -> None:
        other = self._other
        if other is not None and other.buffered > self._options.write_limit:
            await other.wait_drained()
        if self._state != _OPEN:
            raise self._closed_exc()

    def close_soon(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        self._close_sent = (code, reason)
        assert self._other is not None
        self._other.feed_close(code, reason)
        self._loop.call_later(self._options.close_timeout, self._close_timed_out)

    def abort(self) -> None:
        other = self._other
        self._connection_lost(CloseCode.ABNORMAL_CLOSURE, dropped_reason(self._close_sent))
        if other is not None:
            other.peer_aborted()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost_waiter)

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused, self._paused_since = True, self._loop.time()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._schedule_flush()

    # For the hub, the driver and the other end

    def attach(self, other: MemorySocket) -> None:
        """Make ``other`` this socket's other end; the hub calls it once on each end."""
        self._other = other

    def announce(self) -> None:
        """Report the new connection to the listener (``on_accept`` then
        ``on_connection`` on the server end, ``on_open`` on the client end); the driver
        calls it once on each end."""
        self._announced = True
        if self.inbound:
            self._report_accept()
            if self._state != _OPEN:
                return  # the listener closed it on accept
        self._report("on_connection" if self.inbound else "on_open")

    @property
    def buffered(self) -> int:
        """Bytes that arrived at this end and aren't delivered yet, in bytes: the other
        end's write buffer."""
        return self._inbox_size

    def pending_bytes(self) -> int:
        """Bytes the other end wrote that this end hasn't taken: still on the link
        (delayed), or waiting in the inbox (past :data:`RECEIVE_WINDOW` while this end
        has paused reading)."""
        flights = self._in_flight or ()
        flying = sum(len(item) for _, item in flights if not isinstance(item, _Close))
        inbox = self._inbox_size
        return flying + (max(0, inbox - RECEIVE_WINDOW) if self._paused else inbox)

    async def wait_drained(self) -> None:
        """Wait until :attr:`buffered` is at most this end's ``write_limit``, or the
        connection is lost; the other end's :meth:`drain` awaits it."""
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def feed_data(self, data: bytes) -> None:
        """A message the other end wrote: it arrives after the link's delay, behind
        everything sent before it."""
        self._enqueue(data)

    def feed_close(self, code: int, reason: str) -> None:
        """The other end's close frame: it arrives like a message, after those sent
        before it; this end answers it and is closed."""
        self._enqueue(_Close(code, reason))

    def peer_aborted(self) -> None:
        """The other end aborted: this end is closed with code 1006, a
        :exc:`ConnectionDropped` if its close frame wasn't on its way (a reset). Messages
        that wait for their turn (``read_turn``), not for a pause, are delivered first
        (review93 M1); a pause among them of ``close_timeout`` drops them (review94 F3)."""
        if self._inbox and not self._paused and self._state == _OPEN:
            self._inbox.append(_ABORTED)
            self._loop.call_later(self._options.close_timeout, self._abort_overdue)
        else:
            self._lost_to_abort()

    def _lost_to_abort(self) -> None:
        flying = (item for _, item in self._in_flight or ())
        waiting = itertools.chain(self._inbox or (), flying)
        closed = any(type(item) is _Close and item is not _ABORTED for item in waiting)
        if self._state == _OPEN and self._announced and not closed:
            self._report("on_error", ConnectionDropped(DROPPED))
        self._connection_lost(CloseCode.ABNORMAL_CLOSURE, dropped_reason(self._close_sent))

    def _abort_overdue(self) -> None:
        """The end, once the node kept reading paused ``close_timeout`` (review95 M1)."""
        inbox = self._inbox  # (then what waits is dropped; a close frame among it said)
        if self._state == _CLOSED or not inbox or _ABORTED not in inbox:
            return
        wait = self._options.close_timeout  # (still delivering them, in turns)
        if self._paused:
            wait += self._paused_since - self._loop.time()
        if wait > 0:
            self._loop.call_later(wait, self._abort_overdue)
        else:
            self._lost_to_abort()

    # Internals

    def _enqueue(self, item: bytes | _Close) -> None:
        if self._state == _CLOSED:
            return
        # The link's delay is looked up for every message, so that set_delay() acts on
        # open connections; messages never overtake each other, as on a real stream.
        delay = self._hub.link_delay(self.local_node, self.remote_node)
        flights = self._in_flight
        if not delay and not flights:
            self._arrive(item)
            return
        if flights is None:
            flights = self._in_flight = deque()
        when = self._loop.time() + delay
        if flights:
            when = max(when, flights[-1][0])
        flights.append((when, item))
        if len(flights) == 1:
            self._loop.call_at(when, self._land)

    def _land(self) -> None:
        flights = self._in_flight
        if not flights:
            return  # the connection was lost meanwhile
        when, item = flights.popleft()
        self._arrive(item)
        now = self._loop.time()
        while flights and flights[0][0] <= max(when, now):
            self._arrive(flights.popleft()[1])
        if flights:
            self._loop.call_at(flights[0][0], self._land)

    def _arrive(self, item: bytes | _Close) -> None:
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(item)
        if not isinstance(item, _Close):
            self._inbox_size += len(item)
            self.last_seen = self._loop.time()  # any bytes are life
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        inbox = self._inbox
        if inbox is None:
            return
        limit = self._options.max_message_size
        turn_end = perf_counter() + turn_length(self._options)  # (DriverOptions.read_turn)
        while inbox and not self._paused and self._state != _CLOSED:
            item = inbox.popleft()
            if isinstance(item, _Close):
                if item is _ABORTED:
                    self.peer_aborted()
                else:
                    self._receive_close(item)
                continue
            self._inbox_size -= len(item)
            if self._state != _OPEN:
                continue  # we are closing: drop what the peer sent after our close
            if limit is not None and len(item) > limit:
                error = DriverError(
                    f"message too big: {len(item)} bytes exceeds limit of {limit} bytes"
                )
                self._report("on_error", error)
                self.close_soon(CloseCode.MESSAGE_TOO_BIG, "message too big")
                continue
            self._deliver(item)
            if inbox and perf_counter() > turn_end:  # the rest: the next iteration
                self._schedule_flush()
                break
        if not inbox and self._inbox is inbox:
            self._inbox = None
        if self._drain_waiters and self._inbox_size <= self._options.write_limit:
            for waiter in self._drain_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._drain_waiters.clear()

    def _receive_close(self, close: _Close) -> None:
        if self._state == _OPEN:
            # The peer closes: answer with the same code, then we are closed.
            self._state = _CLOSING
            assert self._other is not None
            self._other.feed_close(close.code, close.reason)
        self._connection_lost(close.code, close.reason)

    def _close_timed_out(self) -> None:
        if self._state != _CLOSED:
            self.abort()

    def _connection_lost(self, code: int, reason: str) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.close_code, self.close_reason = code, reason
        self._inbox = None
        self._inbox_size = 0
        if self._in_flight:
            self._in_flight.clear()  # a pending _land() then finds nothing
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._announced:
            self._report("on_close")
        self._lost_waiter.set_result(None)


class MemoryListening(Listening):
    """
    A server registered on a hub (:meth:`MemoryHub.listen` creates it).

    Attributes:
        name: The name of the listening driver.
        address: Its ``host:port`` on the hub.
        listener: The listener of the connections it accepts.
        options: The options of the connections it accepts.

    """

    def __init__(
        self,
        hub: MemoryHub,
        address: str,
        listener: Listener,
        options: DriverOptions,
        name: str = "",
    ) -> None:
        self.name = name
        self._hub = hub
        self.address = address
        self.listener = listener
        self.options = options
        self.url = f"memory://{address}"

    def close(self) -> None:
        self._hub.stop_listening(self)

    async def wait_closed(self) -> None:
        return None


class MemoryDriver(Driver):
    """In-process driver (``memory://host:port``)."""

    scheme = "memory"

    def __init__(
        self,
        options: DriverOptions | None = None,
        *,
        hub: MemoryHub | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(options)
        self.hub = hub if hub is not None else DEFAULT_HUB
        self.name = name if name is not None else self.hub.new_name()

    async def listen(self, host: str, port: int, listener: Listener) -> Listening:
        listening = self.hub.listen(
            host, port, listener=listener, options=self.options, name=self.name
        )
        listener.on_start(listening)
        return listening

    async def connect(self, url: str, listener: Listener) -> Socket:
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError as exc:
            raise DriverError(f"invalid memory URL {url!r}: {exc}") from None
        if parts.scheme != "memory" or not parts.netloc:
            raise DriverError(f"invalid memory URL {url!r}")
        client, server = self.hub.connect(
            url,
            parts.netloc,
            listener=listener,
            options=self.options,
            name=self.name,
            host=hostname or "",
        )
        delay = self.hub.link_delay(client.local_node, client.remote_node)
        if delay:
            await asyncio.sleep(delay)
        server.announce()
        if client.closed:  # the server dropped it on accept
            raise DriverError(f"can't connect to {url}: connection closed during handshake")
        client.announce()
        return client
