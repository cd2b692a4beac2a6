"""
Driver conformance suite: one set of checks that every driver must pass.

This works in the way trio's ``check_two_way_stream`` does: the checks know nothing
about a particular transport and receive a *driver factory* (``DriverOptions`` ->
``Driver``) and a host to listen on. ``test_<driver>.py`` subclasses
:class:`DriverConformance`, provides the ``driver_factory``, ``unreachable_url`` and
``invalid_url`` fixtures, and inherits every check as a test method.

Events are recorded at the boundary by :class:`RecordingListener`, like websockets'
``RecordingProtocol``; tests wait for "the next event of kind X" with a short timeout.
:class:`DriverHarness` keeps track of everything a test opens and closes it at teardown,
because pytest turns unclosed transports into errors.

"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

import pytest

from tests.conftest import MS, stays, wait_for
from trustp2p.drivers import (
    DROPPED,
    CloseCode,
    Driver,
    DriverEvent,
    DriverOptions,
    Listening,
    Socket,
    SocketStats,
)
from trustp2p.exceptions import ConnectionClosed, ConnectionDropped, DriverError

__all__ = [
    "TIMEOUT",
    "AcceptingListener",
    "DriverConformance",
    "DriverFactory",
    "DriverHarness",
    "Pair",
    "Record",
    "RecordingListener",
]

TIMEOUT = 2000 * MS
"""How long a test waits for an event that should come."""

QUIET = 20 * MS
"""How long a test waits to check that an event does *not* come."""

DriverFactory = Callable[[DriverOptions], Driver]

# 100 KiB that aren't all the same byte, so that reordering or truncation shows.
BIG_MESSAGE = bytes(i % 251 for i in range(100 * 1024))


class Record(NamedTuple):
    """One callback as the driver made it."""

    event: DriverEvent
    socket: Socket | None  # None for START
    payload: Any  # the Listening (START), data (MESSAGE), error (ERROR), else None


class RecordingListener:
    """
    A :class:`~trustp2p.drivers.Listener` that records every callback.

    Several sockets may share one recorder; filter by socket with the helpers.
    ``on_message_hook`` runs inside ``on_message``, after recording, to act from
    within the callback (pause reading, raise).

    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.on_message_hook: Callable[[Socket, bytes | str], None] | None = None
        self._taken: set[int] = set()
        self._changed = asyncio.Event()

    # Listener

    def on_start(self, listening: Listening) -> None:
        self._record(DriverEvent.START, None, listening)

    def on_connection(self, socket: Socket) -> None:
        self._record(DriverEvent.CONNECTION, socket, None)

    def on_open(self, socket: Socket) -> None:
        self._record(DriverEvent.OPEN, socket, None)

    def on_message(self, socket: Socket, data: bytes | str) -> None:
        self._record(DriverEvent.MESSAGE, socket, data)
        if self.on_message_hook is not None:
            self.on_message_hook(socket, data)

    def on_error(self, socket: Socket, error: Exception) -> None:
        self._record(DriverEvent.ERROR, socket, error)

    def on_close(self, socket: Socket) -> None:
        self._record(DriverEvent.CLOSE, socket, None)

    # Helpers

    def _record(self, event: DriverEvent, socket: Socket | None, payload: object) -> None:
        self.records.append(Record(event, socket, payload))
        self._changed.set()

    async def next(
        self, event: DriverEvent, socket: Socket | None = None, *, timeout: float = TIMEOUT
    ) -> Record:
        """
        Return the first record of kind ``event`` (for ``socket`` if given) not yet
        returned by this method, waiting up to ``timeout`` seconds for it.

        Raises:
            TimeoutError: If no such event came in time.

        """
        async with asyncio.timeout(timeout):
            while True:
                for index, record in enumerate(self.records):
                    if index in self._taken or record.event is not event:
                        continue
                    if socket is not None and record.socket is not socket:
                        continue
                    self._taken.add(index)
                    return record
                self._changed.clear()
                await self._changed.wait()

    async def wait_messages(
        self, socket: Socket, count: int, *, timeout: float = TIMEOUT
    ) -> list[bytes | str]:
        """Wait until ``socket`` received ``count`` messages; return them all."""
        async with asyncio.timeout(timeout):
            while len(self.messages(socket)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages(socket)

    def sockets(self) -> list[Socket]:
        """Every socket that appears in a record, first seen first."""
        seen: dict[int, Socket] = {}
        for record in self.records:
            if record.socket is not None:
                seen.setdefault(id(record.socket), record.socket)
        return list(seen.values())

    def events(self, socket: Socket) -> list[DriverEvent]:
        """The kinds of event recorded for ``socket``, in order."""
        return [record.event for record in self.records if record.socket is socket]

    def messages(self, socket: Socket) -> list[bytes | str]:
        """The messages ``socket`` received, in order."""
        return [
            record.payload
            for record in self.records
            if record.socket is socket and record.event is DriverEvent.MESSAGE
        ]

    def errors(self, socket: Socket) -> list[Exception]:
        """The errors reported for ``socket``, in order."""
        return [
            record.payload
            for record in self.records
            if record.socket is socket and record.event is DriverEvent.ERROR
        ]


class AcceptingListener(RecordingListener):
    """
    A :class:`RecordingListener` that is also an
    :class:`~trustp2p.drivers.base.AcceptListener`: it records ``on_accept`` as
    ``DriverEvent.ACCEPT``, then runs ``on_accept_hook`` (close or abort the socket).
    """

    def __init__(self, on_accept_hook: Callable[[Socket], None] | None = None) -> None:
        super().__init__()
        self.on_accept_hook = on_accept_hook

    def on_accept(self, socket: Socket) -> None:
        self._record(DriverEvent.ACCEPT, socket, None)
        if self.on_accept_hook is not None:
            self.on_accept_hook(socket)


@dataclass
class Pair:
    """Both ends of one connection and what their listeners recorded."""

    client: Socket
    server: Socket
    client_events: RecordingListener
    server_events: RecordingListener
    listening: Listening

    def ends(self, side: str) -> tuple[Socket, RecordingListener, Socket, RecordingListener]:
        """Return ``(this, its events, other, its events)`` for side "client" or "server"."""
        if side == "client":
            return self.client, self.client_events, self.server, self.server_events
        assert side == "server"
        return self.server, self.server_events, self.client, self.client_events


class DriverHarness:
    """
    Opens listeners and connections through a driver factory and closes them all at the
    end of a test, whatever happened.

    """

    def __init__(self, factory: DriverFactory, host: str) -> None:
        self.factory = factory
        self.host = host
        self._listenings: list[Listening] = []
        self._sockets: list[Socket] = []
        self._listeners: list[RecordingListener] = []

    def driver(self, options: DriverOptions | None = None) -> Driver:
        return self.factory(options if options is not None else DriverOptions())

    def recorder(self) -> RecordingListener:
        """A new recording listener whose sockets get closed at teardown."""
        listener = RecordingListener()
        self._listeners.append(listener)
        return listener

    def accepting_recorder(
        self, on_accept_hook: Callable[[Socket], None] | None = None
    ) -> AcceptingListener:
        """A new :class:`AcceptingListener` whose sockets get closed at teardown."""
        listener = AcceptingListener(on_accept_hook)
        self._listeners.append(listener)
        return listener

    async def listen(
        self,
        options: DriverOptions | None = None,
        listener: RecordingListener | None = None,
        *,
        port: int = 0,
    ) -> tuple[Listening, RecordingListener]:
        if listener is None:
            listener = self.recorder()
        listening = await self.driver(options).listen(self.host, port, listener)
        self._listenings.append(listening)
        return listening, listener

    async def connect(
        self,
        url: str,
        options: DriverOptions | None = None,
        listener: RecordingListener | None = None,
    ) -> tuple[Socket, RecordingListener]:
        if listener is None:
            listener = self.recorder()
        socket = await self.driver(options).connect(url, listener)
        self._sockets.append(socket)
        return socket, listener

    async def pair(self, options: DriverOptions | None = None) -> Pair:
        """Listen, connect once, and wait for the server side of the connection."""
        listening, server_events = await self.listen(options)
        client, client_events = await self.connect(listening.url, options)
        server = (await server_events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        return Pair(client, server, client_events, server_events, listening)

    async def aclose(self) -> None:
        sockets: dict[int, Socket] = {id(socket): socket for socket in self._sockets}
        for listener in self._listeners:
            for socket in listener.sockets():
                sockets.setdefault(id(socket), socket)
        for socket in sockets.values():
            if socket.close_code is None:  # not closed yet: don't wait for a handshake
                socket.abort()
        for listening in self._listenings:
            listening.close()
        async with asyncio.timeout(TIMEOUT):
            for socket in sockets.values():
                await socket.wait_closed()
            for listening in self._listenings:
                await listening.wait_closed()


def pause_at(events: RecordingListener, count: int) -> Callable[[Socket, bytes | str], None]:
    """An ``on_message_hook`` that pauses reading at the ``count``-th message."""

    def pause(socket: Socket, data: bytes | str) -> None:
        if len(events.messages(socket)) == count:
            socket.pause_reading()

    return pause


def act_at(
    events: RecordingListener, count: int, how: str
) -> Callable[[Socket, bytes | str], None]:
    """An ``on_message_hook`` that calls the socket's method ``how`` (``close_soon``,
    ``abort``) at the ``count``-th message."""

    def act(socket: Socket, data: bytes | str) -> None:
        if len(events.messages(socket)) == count:
            getattr(socket, how)()

    return act


async def held_then_lost(pair: Pair, count: int, *, close_first: bool = False) -> list[bytes]:
    """
    The server pauses at the ``count``-th of six messages, which the client sends in
    one write (the server reads them at once) before it aborts (``close_first``: right
    after its close frame); the server learns of it when it writes (the client's kernel
    answers a reset), or at once (memory). Returns the messages sent.
    """
    events = pair.server_events
    events.on_message_hook = pause_at(events, count)
    packages = [b"%d" % i for i in range(6)]
    for package in packages:
        pair.client.write(package)
    if close_first:
        pair.client.close_soon()
    await events.wait_messages(pair.server, count)
    pair.client.abort()
    async with asyncio.timeout(TIMEOUT):
        while not pair.server.closed:
            pair.server.write(b"are you there?")
            await asyncio.sleep(MS)
    return packages


class DriverConformance:
    """
    Every driver passes these tests. Subclasses provide the fixtures below.

    Fixtures to provide:
        driver_factory: Returns a fresh driver for given :class:`DriverOptions`.
        unreachable_url: A URL of this driver's scheme where nothing listens.
        invalid_url: (parametrised) A URL this driver must reject.

    """

    scheme: ClassVar[str]
    host: ClassVar[str] = "127.0.0.1"
    lost_ends_after_held: ClassVar[bool] = True
    """Whether messages read while paused arrive when the peer aborts meanwhile: on a
    real stream the end comes after them; the memory driver's abort is a reset that
    loses them, as a kernel does what it hadn't handed over."""

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        raise NotImplementedError

    @pytest.fixture
    def unreachable_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def invalid_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    async def harness(self, driver_factory: DriverFactory) -> AsyncIterator[DriverHarness]:
        harness = DriverHarness(driver_factory, self.host)
        try:
            yield harness
        finally:
            await harness.aclose()

    # Listening and connecting

    async def test_driver_scheme(self, harness: DriverHarness) -> None:
        assert harness.driver().scheme == self.scheme

    async def test_listen_fires_on_start(self, harness: DriverHarness) -> None:
        listening, events = await harness.listen()
        # on_start fired before listen() returned, with the same object.
        assert events.records == [Record(DriverEvent.START, None, listening)]
        parts = urlsplit(listening.url)
        assert parts.scheme == self.scheme
        assert parts.hostname == self.host
        assert parts.port is not None
        assert parts.port > 0

    async def test_listen_twice_on_one_port(self, harness: DriverHarness) -> None:
        listening, _ = await harness.listen()
        port = urlsplit(listening.url).port
        assert port is not None
        events = harness.recorder()
        with pytest.raises(DriverError) as exc_info:
            await harness.listen(listener=events, port=port)
        assert str(exc_info.value).startswith(f"can't listen on {self.host}:{port}: ")
        assert events.records == []

    async def test_connect(self, harness: DriverHarness) -> None:
        listening, server_events = await harness.listen()
        client, client_events = await harness.connect(listening.url)
        # on_open fired before connect() returned.
        assert client_events.records == [Record(DriverEvent.OPEN, client, None)]
        assert client.inbound is False
        assert client.peer == listening.url
        assert client.host == self.host
        assert client.closed is False
        assert client.close_code is None
        assert client.close_reason == ""
        assert client.stats == SocketStats()

        record = await server_events.next(DriverEvent.CONNECTION)
        server = record.socket
        assert server is not None
        assert server is not client
        assert server.inbound is True
        assert server.closed is False
        assert server.close_code is None
        assert server.id != client.id
        assert server.stats == SocketStats()
        assert server_events.records[1:] == [Record(DriverEvent.CONNECTION, server, None)]

    # Accepting: a listener that hears of connections before any handshake

    async def test_accept_comes_first_and_close_follows(self, harness: DriverHarness) -> None:
        events = harness.accepting_recorder()
        listening, _ = await harness.listen(listener=events)
        client, _ = await harness.connect(listening.url)
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        accepted = (await events.next(DriverEvent.ACCEPT)).socket
        assert accepted is server and server.inbound
        await client.close()
        await events.next(DriverEvent.CLOSE, server)
        assert events.events(server) == [
            DriverEvent.ACCEPT,
            DriverEvent.CONNECTION,
            DriverEvent.CLOSE,
        ]

    async def test_close_on_accept_is_delivered_and_never_opens(
        self, harness: DriverHarness
    ) -> None:
        events = harness.accepting_recorder(
            lambda socket: socket.close_soon(CloseCode.TRY_AGAIN_LATER, "try again later")
        )
        listening, _ = await harness.listen(listener=events)
        client, _ = await harness.connect(listening.url)
        async with asyncio.timeout(TIMEOUT):
            await client.wait_closed()
        assert (client.close_code, client.close_reason) == (
            CloseCode.TRY_AGAIN_LATER,
            "try again later",
        )
        server = (await events.next(DriverEvent.ACCEPT)).socket
        assert server is not None
        await events.next(DriverEvent.CLOSE, server)
        assert events.events(server) == [DriverEvent.ACCEPT, DriverEvent.CLOSE]

    async def test_abort_on_accept(self, harness: DriverHarness) -> None:
        events = harness.accepting_recorder(lambda socket: socket.abort())
        listening, _ = await harness.listen(listener=events)
        try:
            client, _ = await harness.connect(listening.url)
        except DriverError:
            pass  # a driver with a handshake (ws) fails it; others open, then drop
        else:
            async with asyncio.timeout(TIMEOUT):
                await client.wait_closed()
            assert client.close_code == CloseCode.ABNORMAL_CLOSURE
        server = (await events.next(DriverEvent.ACCEPT)).socket
        assert server is not None
        await events.next(DriverEvent.CLOSE, server)
        assert events.events(server) == [DriverEvent.ACCEPT, DriverEvent.CLOSE]

    async def test_connect_nothing_listening(
        self, harness: DriverHarness, unreachable_url: str
    ) -> None:
        events = harness.recorder()
        with pytest.raises(DriverError) as exc_info:
            await harness.connect(unreachable_url, listener=events)
        assert str(exc_info.value).startswith(f"can't connect to {unreachable_url}: ")
        assert "Connect call failed" not in str(exc_info.value)  # asyncio's words: why?
        assert events.records == []

    async def test_connect_invalid_url(self, harness: DriverHarness, invalid_url: str) -> None:
        events = harness.recorder()
        with pytest.raises(DriverError):
            await harness.connect(invalid_url, listener=events)
        assert events.records == []

    async def test_listening_close_stops_new_connections(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        pair.listening.close()

        late_events = harness.recorder()
        with pytest.raises(DriverError) as exc_info:
            await harness.connect(pair.listening.url, listener=late_events)
        assert str(exc_info.value).startswith(f"can't connect to {pair.listening.url}")
        assert late_events.records == []

        # The existing connection keeps working both ways.
        pair.client.write(b"still")
        pair.server.write(b"here")
        assert await pair.server_events.wait_messages(pair.server, 1) == [b"still"]
        assert await pair.client_events.wait_messages(pair.client, 1) == [b"here"]
        assert not pair.client.closed
        assert not pair.server.closed
        # No new connection reached the closed listener.
        assert pair.server_events.sockets() == [pair.server]

        await pair.client.close()
        async with asyncio.timeout(TIMEOUT):
            await pair.server.wait_closed()
            await pair.listening.wait_closed()

    async def test_concurrent_connections_are_independent(self, harness: DriverHarness) -> None:
        listening, server_events = await harness.listen()
        client_events = harness.recorder()
        clients = [
            socket
            for socket, _ in await asyncio.gather(
                *(harness.connect(listening.url, listener=client_events) for _ in range(3))
            )
        ]
        assert len({client.id for client in clients}) == 3
        for index, client in enumerate(clients):
            client.write(b"from client %d" % index)

        # Map each server-side socket to its client by what it received.
        servers: dict[int, Socket] = {}
        for _ in clients:
            record = await server_events.next(DriverEvent.CONNECTION)
            assert record.socket is not None
            (message,) = await server_events.wait_messages(record.socket, 1)
            assert isinstance(message, bytes)
            servers[int(message.rsplit(b" ", 1)[1])] = record.socket
        assert sorted(servers) == [0, 1, 2]

        await clients[0].close(CloseCode.GOING_AWAY, "bye")
        async with asyncio.timeout(TIMEOUT):
            await servers[0].wait_closed()
        assert servers[0].close_code == CloseCode.GOING_AWAY

        for index in (1, 2):
            assert not clients[index].closed
            assert not servers[index].closed
            servers[index].write(b"to client %d" % index)
            clients[index].write(b"again %d" % index)
        for index in (1, 2):
            assert await client_events.wait_messages(clients[index], 1) == [b"to client %d" % index]
            assert await server_events.wait_messages(servers[index], 2) == [
                b"from client %d" % index,
                b"again %d" % index,
            ]
            assert server_events.events(servers[index]) == [
                DriverEvent.CONNECTION,
                DriverEvent.MESSAGE,
                DriverEvent.MESSAGE,
            ]

    # Messages

    @pytest.mark.parametrize("sender", ["client", "server"])
    async def test_messages_arrive_in_order(self, harness: DriverHarness, sender: str) -> None:
        pair = await harness.pair()
        this, _, other, other_events = pair.ends(sender)
        messages = [b"hello", b"", BIG_MESSAGE, b"\x00\xff", b"world"]
        for message in messages:
            this.write(message)
        # Delivery never happens inside write().
        assert other_events.messages(other) == []
        received = await other_events.wait_messages(other, len(messages))
        assert received == messages
        assert all(type(message) is bytes for message in received)

    async def test_write_soon_writes_after_the_iterations_messages(
        self, harness: DriverHarness
    ) -> None:
        pair = await harness.pair()
        calls: list[int] = []

        def late() -> None:
            calls.append(len(calls))
            if len(calls) == 1:
                pair.client.write(b"late")

        pair.client.write(b"first")
        pair.client.write_soon(late)
        pair.client.write(b"second")
        assert calls == []  # never inside write_soon()
        received = await pair.server_events.wait_messages(pair.server, 3)
        assert received == [b"first", b"second", b"late"]
        assert calls == [0]

    async def test_write_soon_with_nothing_written(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        pair.server.write_soon(lambda: pair.server.write(b"alone"))
        assert await pair.client_events.wait_messages(pair.client, 1) == [b"alone"]
        pair.server.write(b"next")  # the driver writes on as before
        assert await pair.client_events.wait_messages(pair.client, 2) == [b"alone", b"next"]

    async def test_write_buffer_size_is_zero_once_all_is_sent(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        assert pair.client.write_buffer_size == 0
        for message in (b"first", BIG_MESSAGE, b"last"):
            pair.client.write(message)
        await pair.server_events.wait_messages(pair.server, 3)
        # Everything arrived: nothing is left to count (not the last batch's size).
        await wait_for(lambda: pair.client.write_buffer_size == 0)

    async def test_write_soon_calls_each_callback(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        pair.client.write_soon(lambda: pair.client.write(b"one"))
        pair.client.write_soon(lambda: pair.client.write(b"two"))
        assert await pair.server_events.wait_messages(pair.server, 2) == [b"one", b"two"]

    async def test_a_failing_write_soon_callback_is_logged_and_writing_goes_on(
        self, harness: DriverHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        pair = await harness.pair()

        def fails() -> None:
            raise RuntimeError("bug in a layer")

        pair.client.write_soon(fails)
        pair.client.write(b"first")
        await pair.server_events.wait_messages(pair.server, 1)
        pair.client.write(b"later")
        assert await pair.server_events.wait_messages(pair.server, 2) == [b"first", b"later"]
        assert "bug in a layer" in caplog.text

    async def test_data_changed_after_write_is_not_sent(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        data = bytearray(b"original")
        pair.client.write(b"first")
        pair.client.write(data)  # type: ignore[arg-type]
        data[:] = b"CHANGED!"
        received = await pair.server_events.wait_messages(pair.server, 2)
        assert received == [b"first", b"original"]

    async def test_abort_from_a_handler_delivers_no_more(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        events = pair.server_events

        def abort_at_second(socket: Socket, data: bytes | str) -> None:
            if len(events.messages(socket)) == 2:
                socket.abort()

        events.on_message_hook = abort_at_second
        for i in range(6):
            pair.client.write(b"%d" % i)  # one read on the other side, mostly
        await events.next(DriverEvent.CLOSE, pair.server)
        assert events.messages(pair.server) == [b"0", b"1"]

    async def test_messages_held_then_the_peers_close_arrive_whole(
        self, harness: DriverHarness
    ) -> None:
        pair = await harness.pair()
        events = pair.server_events
        events.on_message_hook = pause_at(events, 2)
        packages = [b"%d" % i for i in range(6)]
        for package in packages:
            pair.client.write(package)
        pair.client.close_soon()
        await events.wait_messages(pair.server, 2)
        # Time for the close frame to be read while paused, where the driver reads on
        # (nothing to wait on: the driver keeps it, or hasn't read it).
        assert await stays(lambda: len(events.messages(pair.server)) == 2, QUIET)
        pair.server.resume_reading()
        await events.next(DriverEvent.CLOSE, pair.server)
        assert events.messages(pair.server) == packages

    async def test_messages_held_when_the_peer_aborts_arrive_before_the_end(
        self, harness: DriverHarness
    ) -> None:
        pair = await harness.pair()
        events = pair.server_events
        packages = await held_then_lost(pair, 2)
        with pytest.raises(ConnectionClosed):
            pair.server.write(b"no")
        with pytest.raises(ConnectionClosed):
            await pair.server.drain()
        if not self.lost_ends_after_held:
            await events.next(DriverEvent.CLOSE, pair.server)
            assert events.messages(pair.server) == packages[:2]
            return
        assert await stays(lambda: DriverEvent.CLOSE not in events.events(pair.server), QUIET)
        assert events.messages(pair.server) == packages[:2]
        pair.server.resume_reading()
        await events.next(DriverEvent.CLOSE, pair.server)
        assert events.messages(pair.server) == packages
        assert pair.server.close_code == CloseCode.ABNORMAL_CLOSURE
        # Learnt from a failed write: the system's reason ("Broken pipe", "Connection
        # reset by peer") after DROPPED, the same words on every driver.
        [error] = events.errors(pair.server)
        assert str(error).startswith(f"{DROPPED}: ")
        assert isinstance(error, ConnectionDropped)  # not the peer's offence
        assert isinstance(error.__cause__, OSError)

    async def test_an_end_waiting_for_held_messages_comes_at_once_when_we_let_go(
        self, harness: DriverHarness
    ) -> None:
        pair = await harness.pair()
        packages = await held_then_lost(pair, 1)
        pair.server.close_soon()  # the held messages are ours to drop
        await pair.server_events.next(DriverEvent.CLOSE, pair.server)
        assert pair.server_events.messages(pair.server) == packages[:1]

    @pytest.mark.parametrize("how", ["close_soon", "abort"])
    async def test_closing_while_held_messages_arrive_delivers_no_more(
        self, harness: DriverHarness, how: str
    ) -> None:
        pair = await harness.pair()
        events = pair.server_events
        events.on_message_hook = pause_at(events, 2)
        for i in range(6):
            pair.client.write(b"%d" % i)  # one write: the server reads them at once
        await events.wait_messages(pair.server, 2)
        events.on_message_hook = act_at(events, 3, how)
        pair.server.resume_reading()
        await events.next(DriverEvent.CLOSE, pair.server)
        assert events.messages(pair.server) == [b"0", b"1", b"2"]

    async def test_no_error_when_the_peer_closed_after_the_messages_held(
        self, harness: DriverHarness
    ) -> None:
        """Its close frame arrived (held behind the messages, or read), then the connection
        broke: the peer closed properly, whatever our answer met."""
        pair = await harness.pair(DriverOptions(close_timeout=2.0))
        events = pair.server_events
        packages = await held_then_lost(pair, 2, close_first=True)
        events.on_message_hook = None
        pair.server.resume_reading()
        await events.next(DriverEvent.CLOSE, pair.server)
        if self.lost_ends_after_held:
            assert events.messages(pair.server) == packages
            assert events.errors(pair.server) == []

    async def test_a_pause_at_the_last_held_message_doesnt_hold_the_end_back(
        self, harness: DriverHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        pair = await harness.pair(DriverOptions(close_timeout=10.0))
        events = pair.server_events
        packages = await held_then_lost(pair, 2)
        events.on_message_hook = pause_at(events, 6)  # the last one: nothing is held after
        pair.server.resume_reading()
        async with asyncio.timeout(TIMEOUT):  # not the close timeout
            await events.next(DriverEvent.CLOSE, pair.server)
        expected = packages if self.lost_ends_after_held else packages[:2]
        assert events.messages(pair.server) == expected
        assert "read before the connection ended" not in caplog.text

    @pytest.mark.parametrize("how", ["close_soon", "abort"])
    @pytest.mark.parametrize("peer_closed", [False, True])
    async def test_closing_while_the_held_messages_of_a_lost_connection_arrive(
        self, harness: DriverHarness, how: str, peer_closed: bool
    ) -> None:
        pair = await harness.pair()
        events = pair.server_events
        packages = await held_then_lost(pair, 2, close_first=peer_closed)
        events.on_message_hook = act_at(events, 3, how)
        pair.server.resume_reading()
        await events.next(DriverEvent.CLOSE, pair.server)
        assert await stays(lambda: events.events(pair.server)[-1] is DriverEvent.CLOSE, QUIET)
        expected = packages[:3] if self.lost_ends_after_held else packages[:2]
        assert events.messages(pair.server) == expected

    async def test_held_messages_are_dropped_with_a_warning_when_reading_stays_paused(
        self, harness: DriverHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        pair = await harness.pair(DriverOptions(close_timeout=50 * MS))
        packages = await held_then_lost(pair, 1)
        await pair.server_events.next(DriverEvent.CLOSE, pair.server)  # never resumed
        assert pair.server_events.messages(pair.server) == packages[:1]
        if self.lost_ends_after_held:
            assert "read before the connection ended: reading stayed paused" in caplog.text

    async def test_messages_both_ways_and_stats(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        to_server = [b"ping", b"", BIG_MESSAGE]
        to_client = [BIG_MESSAGE, b"pong", b"", b"!"]
        for message in to_server:
            await pair.client.send(message)
        for message in to_client:
            await pair.server.send(message)
        assert await pair.server_events.wait_messages(pair.server, 3) == to_server
        assert await pair.client_events.wait_messages(pair.client, 4) == to_client

        up = sum(map(len, to_server))
        down = sum(map(len, to_client))
        assert pair.client.stats == SocketStats(
            messages_in=4, messages_out=3, bytes_in=down, bytes_out=up
        )
        assert pair.server.stats == SocketStats(
            messages_in=3, messages_out=4, bytes_in=up, bytes_out=down
        )

    async def test_a_burst_past_the_coalescing_limit_arrives_in_order(
        self, harness: DriverHarness
    ) -> None:
        # Written in one go: the stream drivers send what they hold once it passes
        # 4 KiB (COALESCE_LIMIT), then batch the rest again.
        pair = await harness.pair()
        burst = [bytes([n]) * (300 + 7 * n) for n in range(40)]
        for message in burst:
            pair.client.write(message)
        assert await pair.server_events.wait_messages(pair.server, len(burst)) == burst
        assert pair.client.stats.messages_out == len(burst)
        assert pair.client.stats.bytes_out == sum(map(len, burst))
        assert pair.server.stats.bytes_in == sum(map(len, burst))

    async def test_last_seen_advances(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        before = pair.server.last_seen
        await asyncio.sleep(MS)  # let the event loop clock move on
        pair.client.write(b"tick")
        await pair.server_events.wait_messages(pair.server, 1)
        assert pair.server.last_seen > before
        assert pair.server.last_seen <= asyncio.get_running_loop().time()

    async def test_bytes_in_flight_until_the_peer_has_them(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        assert pair.client.bytes_in_flight() == 0
        pair.client.write(b"x" * 1000)
        assert pair.client.bytes_in_flight() >= 1000  # written, not sent yet
        await pair.server_events.wait_messages(pair.server, 1)
        async with asyncio.timeout(TIMEOUT):
            while pair.client.bytes_in_flight():  # noqa: ASYNC110 - the peer acknowledges
                await asyncio.sleep(MS)

    async def test_path_view_over_tcp_on_linux_only(self, harness: DriverHarness) -> None:
        # The stall rules' view of the path (trustp2p.protocol.path): every network
        # driver runs on TCP; an idle connection is not congested.
        pair = await harness.pair()
        view = pair.client.path_view()
        if self.scheme == "memory" or sys.platform != "linux":
            assert view is None
        else:
            assert view is not None
            assert not view.window_closed and view.alive(10.0) and not view.resending

    async def test_drain_returns_promptly_when_buffer_small(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        pair.client.write(b"small")
        async with asyncio.timeout(TIMEOUT):
            await pair.client.drain()
            await pair.client.send(b"also small")
        assert await pair.server_events.wait_messages(pair.server, 2) == [
            b"small",
            b"also small",
        ]

    async def test_drain_waits_while_buffer_full(self, harness: DriverHarness) -> None:
        options = DriverOptions(write_limit=1024, max_message_size=None)
        pair = await harness.pair(options)
        # Big enough to overflow the kernel buffers on loopback too.
        message = b"x" * (16 * 2**20)
        pair.client.pause_reading()
        pair.server.write(message)
        drain = asyncio.create_task(pair.server.drain())
        try:
            assert await stays(lambda: not drain.done(), QUIET)
            pair.client.resume_reading()
            async with asyncio.timeout(TIMEOUT):
                await drain
        finally:
            drain.cancel()
        assert await pair.client_events.wait_messages(pair.client, 1) == [message]

    async def test_drain_raises_when_connection_lost(self, harness: DriverHarness) -> None:
        options = DriverOptions(write_limit=1024, max_message_size=None)
        pair = await harness.pair(options)
        pair.client.pause_reading()
        pair.server.write(b"x" * (16 * 2**20))
        drain = asyncio.create_task(pair.server.drain())
        try:
            assert await stays(lambda: not drain.done(), QUIET)
            pair.server.abort()
            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(ConnectionClosed) as exc_info:
                    await drain
        finally:
            drain.cancel()
        assert exc_info.value.code == CloseCode.ABNORMAL_CLOSURE

    async def test_drain_after_connection_lost_raises(self, harness: DriverHarness) -> None:
        # The write buffer is over its limit when the connection drops; a later drain()
        # must raise rather than wait for a buffer that will never empty.
        options = DriverOptions(write_limit=1024, max_message_size=None)
        pair = await harness.pair(options)
        pair.client.pause_reading()
        pair.server.write(b"x" * (16 * 2**20))
        pair.server.abort()
        async with asyncio.timeout(TIMEOUT):
            await pair.server.wait_closed()
        # No I/O is needed to find out, so don't wait long.
        async with asyncio.timeout(10 * QUIET):
            with pytest.raises(ConnectionClosed) as exc_info:
                await pair.server.drain()
        assert exc_info.value.code == CloseCode.ABNORMAL_CLOSURE

    async def test_listener_error_does_not_break_connection(
        self, harness: DriverHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        pair = await harness.pair()

        def fail_once(socket: Socket, data: bytes | str) -> None:
            if data == b"boom":
                raise RuntimeError("listener bug")

        pair.server_events.on_message_hook = fail_once
        with caplog.at_level(logging.ERROR, logger="trustp2p.drivers"):
            pair.client.write(b"boom")
            pair.client.write(b"after")
            assert await pair.server_events.wait_messages(pair.server, 2) == [b"boom", b"after"]
        assert not pair.server.closed
        assert [record.getMessage() for record in caplog.records] == [
            f"! listener failed on a message from {pair.server.peer}"
        ]

    # Backpressure on reading

    @pytest.mark.parametrize("reader", ["client", "server"])
    async def test_pause_reading(self, harness: DriverHarness, reader: str) -> None:
        pair = await harness.pair()
        this, this_events, other, _ = pair.ends(reader)
        this.pause_reading()
        this.pause_reading()  # idempotent
        messages = [b"one", b"", b"three"]
        for message in messages:
            other.write(message)
        assert await stays(lambda: this_events.messages(this) == [], QUIET)
        this.resume_reading()
        this.resume_reading()  # idempotent
        assert await this_events.wait_messages(this, 3) == messages
        other.write(b"four")
        assert await this_events.wait_messages(this, 4) == [*messages, b"four"]

    async def test_pause_reading_from_on_message(self, harness: DriverHarness) -> None:
        pair = await harness.pair()

        def pause(socket: Socket, data: bytes | str) -> None:
            socket.pause_reading()

        pair.server_events.on_message_hook = pause
        for message in (b"one", b"two", b"three"):
            pair.client.write(message)
        await pair.server_events.wait_messages(pair.server, 1)
        # pause_reading() inside on_message stops the next on_message calls.
        assert await stays(lambda: pair.server_events.messages(pair.server) == [b"one"], QUIET)
        pair.server_events.on_message_hook = None
        pair.server.resume_reading()
        assert await pair.server_events.wait_messages(pair.server, 3) == [
            b"one",
            b"two",
            b"three",
        ]

    # Closing

    @pytest.mark.parametrize("closer", ["client", "server"])
    @pytest.mark.parametrize(
        ("code", "reason"),
        [
            (CloseCode.NORMAL_CLOSURE, ""),
            (CloseCode.GOING_AWAY, "going away"),
            (CloseCode.TRY_AGAIN_LATER, "try again later"),
        ],
    )
    async def test_close(self, harness: DriverHarness, closer: str, code: int, reason: str) -> None:
        pair = await harness.pair()
        this, this_events, other, other_events = pair.ends(closer)
        async with asyncio.timeout(TIMEOUT):
            await this.close(code, reason)
            await other.wait_closed()
        for socket, events in ((this, this_events), (other, other_events)):
            assert socket.closed
            assert socket.close_code == code
            assert socket.close_reason == reason
            opened = DriverEvent.CONNECTION if socket.inbound else DriverEvent.OPEN
            assert events.events(socket) == [opened, DriverEvent.CLOSE]
            with pytest.raises(ConnectionClosed) as exc_info:
                socket.write(b"too late")
            assert exc_info.value.code == code
            assert exc_info.value.reason == reason
            with pytest.raises(ConnectionClosed):
                await socket.send(b"too late")
            async with asyncio.timeout(TIMEOUT):
                await socket.wait_closed()  # returns at once when closed
                await socket.close()  # does nothing when closed
            assert socket.close_code == code
        assert this.stats.messages_out == 0
        assert other.stats.messages_out == 0

    async def test_closed_after_close_soon(self, harness: DriverHarness) -> None:
        pair = await harness.pair()
        pair.client.close_soon(CloseCode.GOING_AWAY, "later")
        assert pair.client.closed
        with pytest.raises(ConnectionClosed):
            pair.client.write(b"too late")
        pair.client.close_soon(CloseCode.NORMAL_CLOSURE, "again")  # does nothing
        async with asyncio.timeout(TIMEOUT):
            await pair.client.wait_closed()
            await pair.server.wait_closed()
        assert pair.server.closed
        assert (pair.client.close_code, pair.client.close_reason) == (1001, "later")
        assert (pair.server.close_code, pair.server.close_reason) == (1001, "later")
        assert pair.client_events.events(pair.client) == [DriverEvent.OPEN, DriverEvent.CLOSE]
        assert pair.server_events.events(pair.server) == [
            DriverEvent.CONNECTION,
            DriverEvent.CLOSE,
        ]

    @pytest.mark.parametrize("closer", ["client", "server"])
    async def test_messages_before_close_arrive_first(
        self, harness: DriverHarness, closer: str
    ) -> None:
        pair = await harness.pair()
        this, _, other, other_events = pair.ends(closer)
        for message in (b"a", b"b", b"c"):
            this.write(message)
        this.close_soon()
        await other_events.next(DriverEvent.CLOSE, other)
        opened = DriverEvent.CONNECTION if other.inbound else DriverEvent.OPEN
        assert other_events.events(other) == [opened, *[DriverEvent.MESSAGE] * 3, DriverEvent.CLOSE]
        assert other_events.messages(other) == [b"a", b"b", b"c"]
        assert other.close_code == CloseCode.NORMAL_CLOSURE

    @pytest.mark.parametrize("aborter", ["client", "server"])
    async def test_abort(self, harness: DriverHarness, aborter: str) -> None:
        pair = await harness.pair()
        this, this_events, other, other_events = pair.ends(aborter)
        this.abort()
        async with asyncio.timeout(TIMEOUT):
            await this.wait_closed()
            await other_events.next(DriverEvent.CLOSE, other)
            await other.wait_closed()
        assert this.closed
        assert other.closed
        assert this.close_code == CloseCode.ABNORMAL_CLOSURE
        assert other.close_code == CloseCode.ABNORMAL_CLOSURE
        assert this.close_reason == other.close_reason == ""  # no close frame either way
        assert this_events.events(this).count(DriverEvent.CLOSE) == 1
        assert other_events.events(other).count(DriverEvent.CLOSE) == 1
        assert this_events.events(this)[-1] is DriverEvent.CLOSE
        assert other_events.events(other)[-1] is DriverEvent.CLOSE
        with pytest.raises(ConnectionClosed) as exc_info:
            this.write(b"too late")
        assert exc_info.value.code == CloseCode.ABNORMAL_CLOSURE
        this.abort()  # does nothing when closed
        assert this_events.events(this).count(DriverEvent.CLOSE) == 1

    @pytest.mark.parametrize("aborter", ["client", "server"])
    async def test_abort_after_close_soon_says_what_was_sent(
        self, harness: DriverHarness, aborter: str
    ) -> None:
        """A node drops a peer that doesn't answer pings so: the close frame if it gets
        through, then no wait for the answer."""
        pair = await harness.pair()
        this, _, other, other_events = pair.ends(aborter)
        this.close_soon(CloseCode.GOING_AWAY, "lost peer")
        this.abort()
        async with asyncio.timeout(TIMEOUT):
            await this.wait_closed()
            await other_events.next(DriverEvent.CLOSE, other)
        assert this.close_code == CloseCode.ABNORMAL_CLOSURE
        assert this.close_reason == "no close frame received; sent 1001 lost peer"

    @pytest.mark.parametrize("aborter", ["client", "server"])
    async def test_a_peer_that_drops_the_connection_is_reported_as_such(
        self, harness: DriverHarness, aborter: str
    ) -> None:
        pair = await harness.pair()
        this, _, other, other_events = pair.ends(aborter)
        this.abort()
        await other_events.next(DriverEvent.CLOSE, other)
        # Every driver, the memory driver's reset too (before, it reported nothing, so
        # that simulations counted no dropped connection).
        assert [str(error) for error in other_events.errors(other)] == [DROPPED]
        assert isinstance(other_events.errors(other)[0], ConnectionDropped)
        assert other.close_code == CloseCode.ABNORMAL_CLOSURE

    async def test_close_times_out_when_peer_does_not_answer(self, harness: DriverHarness) -> None:
        options = DriverOptions(close_timeout=50 * MS)
        pair = await harness.pair(options)
        pair.server.pause_reading()  # the server won't see the close frame
        pair.client.close_soon(CloseCode.GOING_AWAY, "lost peer")
        async with asyncio.timeout(TIMEOUT):
            await pair.client.wait_closed()
        assert pair.client.close_code == CloseCode.ABNORMAL_CLOSURE
        # No reason on the wire: it says what we sent (the log said "1006 -" of a peer
        # dropped for not answering pings, which got "1001 lost peer"; a tester's find).
        assert pair.client.close_reason == "no close frame received; sent 1001 lost peer"
        assert pair.client_events.events(pair.client) == [DriverEvent.OPEN, DriverEvent.CLOSE]
        pair.server.resume_reading()
        await pair.server_events.next(DriverEvent.CLOSE, pair.server)
        assert pair.server_events.events(pair.server).count(DriverEvent.CLOSE) == 1
        # It read the peer's close frame: whatever its answer met, no error to report.
        assert pair.server_events.errors(pair.server) == []

    # Limits

    @pytest.mark.parametrize("sender", ["client", "server"])
    async def test_message_at_limit_passes(self, harness: DriverHarness, sender: str) -> None:
        pair = await harness.pair(DriverOptions(max_message_size=1024))
        this, this_events, other, other_events = pair.ends(sender)
        this.write(b"a" * 1024)
        assert await other_events.wait_messages(other, 1) == [b"a" * 1024]
        other.write(b"b" * 1024)
        assert await this_events.wait_messages(this, 1) == [b"b" * 1024]
        assert not this.closed
        assert not other.closed
        assert other_events.errors(other) == []

    @pytest.mark.parametrize("sender", ["client", "server"])
    async def test_message_too_big(self, harness: DriverHarness, sender: str) -> None:
        pair = await harness.pair(DriverOptions(max_message_size=1024))
        this, this_events, other, other_events = pair.ends(sender)
        this.write(b"a" * 1024)
        assert await other_events.wait_messages(other, 1) == [b"a" * 1024]
        this.write(b"b" * 1025)
        this.write(b"c")  # never delivered: the connection is failing
        record = await other_events.next(DriverEvent.ERROR, other)
        error = record.payload
        assert isinstance(error, DriverError)
        assert str(error).startswith("message too big: ")
        assert str(error).endswith("1025 bytes exceeds limit of 1024 bytes")
        async with asyncio.timeout(TIMEOUT):
            await other.wait_closed()
            await this.wait_closed()
        assert other_events.messages(other) == [b"a" * 1024]
        opened = DriverEvent.CONNECTION if other.inbound else DriverEvent.OPEN
        assert other_events.events(other) == [
            opened,
            DriverEvent.MESSAGE,
            DriverEvent.ERROR,
            DriverEvent.CLOSE,
        ]
        opened = DriverEvent.CONNECTION if this.inbound else DriverEvent.OPEN
        assert this_events.events(this) == [opened, DriverEvent.CLOSE]
        assert this.close_code == CloseCode.MESSAGE_TOO_BIG
        assert other.close_code == CloseCode.MESSAGE_TOO_BIG
        assert this.close_reason == other.close_reason

    @pytest.mark.parametrize("sender", ["client", "server"])
    async def test_messages_before_too_big_message_arrive(
        self, harness: DriverHarness, sender: str
    ) -> None:
        pair = await harness.pair(DriverOptions(max_message_size=1024))
        this, _, other, other_events = pair.ends(sender)
        # Written together, so that they likely reach the peer in one read.
        this.write(b"a")
        this.write(b"b" * 1024)
        this.write(b"c" * 1025)
        await other_events.next(DriverEvent.CLOSE, other)
        assert other_events.messages(other) == [b"a", b"b" * 1024]
        assert other.close_code == CloseCode.MESSAGE_TOO_BIG

    async def test_no_message_size_limit(self, harness: DriverHarness) -> None:
        pair = await harness.pair(DriverOptions(max_message_size=None))
        message = b"z" * (2**20 + 1)  # over the default limit
        pair.client.write(message)
        assert await pair.server_events.wait_messages(pair.server, 1) == [message]
