"""
What the ``tcp`` and ``ws`` drivers share: a :class:`StreamSocket` that is also the
:class:`asyncio.BufferedProtocol` of its transport, and listening on an asyncio server.

:class:`StreamSocket` keeps the transport, coalesces the messages written in one event
loop iteration into one system call (:class:`WriteBatches`, which picows shares), makes
:meth:`~StreamSocket.drain` wait while the transport's buffer is above ``write_limit``,
hands what was read before a :meth:`~StreamSocket.pause_reading` back to the subclass on
resume, and runs the opening or closing deadline. A driver adds its framing, handshake
and close frames.

"""

from __future__ import annotations

__all__ = [
    "COALESCE_LIMIT",
    "EndAfterHeld",
    "ReceiveBuffer",
    "ServerListening",
    "StreamSocket",
    "WriteBatches",
    "connect_error",
    "dial_timed_out",
    "format_address",
    "in_flight",
    "lost_error",
    "os_error_reason",
    "serve",
]

import abc
import asyncio
import logging
import os
import re
import ssl
import struct
import sys
import threading
from collections.abc import Callable
from socket import AF_INET
from typing import ClassVar, cast

from ..exceptions import ConnectionDropped, DriverError
from ..protocol.path import PathView
from . import _tcp_info
from ._accept import StreamServer, bind
from .base import DROPPED, DriverOptions, Listener, Listening, Socket

logger = logging.getLogger(__name__)

if sys.platform == "linux":
    import fcntl
    import termios

    def kernel_backlog(fd: int) -> int:
        """Bytes in the kernel's send queue not acknowledged by the peer (SIOCOUTQ,
        tcp(7)); 0 if it can't be read."""
        try:
            data = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return 0
        value: int = struct.unpack("i", data)[0]
        return value

else:  # pragma: no cover - Linux only

    def kernel_backlog(fd: int) -> int:
        return 0


def in_flight(transport: asyncio.BaseTransport | None, queued: int) -> int:
    """
    Bytes written to ``transport`` that its peer hasn't taken: ``queued`` (not yet given
    to the transport), the transport's buffer and the kernel's unacknowledged bytes; 0
    once the transport is closing.
    """
    if transport is None or transport.is_closing():
        return 0
    size = cast(asyncio.WriteTransport, transport).get_write_buffer_size() + queued
    sock = transport.get_extra_info("socket")
    if sock is not None:
        size += kernel_backlog(sock.fileno())
    return size


# Frames written in one event loop iteration are sent in one system call, up to this many
# bytes. More would batch the pipeline into turns: the peer would sit idle until the
# whole batch arrived (measured with ws: pipelined throughput fell by a third at 64 KiB).
COALESCE_LIMIT = 4096

# From this many bytes queued, the frames are written one by one rather than joined.
_SEPARATE_WRITES = 2**16


def os_error_reason(exc: OSError) -> str:
    """Why a system call failed, in the system's words ("Connection refused"): asyncio
    words a failed connect as "Connect call failed ('127.0.0.1', 1)". An error with no
    words (asyncio's TLS handshake raises a bare ``ConnectionResetError()``) is named
    by its class ("connection reset")."""
    if exc.errno is not None and exc.errno > 0 and not isinstance(exc, ssl.SSLError):
        return os.strerror(exc.errno)  # (a resolver's are negative, OpenSSL's its own)
    words = exc.strerror or str(exc)
    if words:
        return words
    name = type(exc).__name__.removesuffix("Error")  # ConnectionReset -> connection reset
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()


def connect_error(url: str, exc: OSError, *, ssl: bool | None) -> DriverError:
    """Why a dial of ``url`` failed: the system's reason, and a hint when a TLS
    handshake failed (connect's own errors have an errno; a TLS handshake that fails,
    none), as a plain server answers one."""
    hint = " in the TLS handshake: does it serve TLS?" if ssl and not exc.errno else ""
    return DriverError(f"can't connect to {url}: {os_error_reason(exc)}{hint}")


def dial_timed_out(url: str, timeout: float, *, connected: bool) -> DriverError:
    """Why a dial of ``url`` that ran out of ``open_timeout`` failed: once ``connected``
    (TCP, and TLS for ``wss``), the WebSocket upgrade went unanswered, the only opening
    handshake a driver waits for then (tester48 F10: "timed out" named no layer)."""
    if connected:
        said = f"connected, but no answer to the WebSocket upgrade within {timeout:g} s"
        return DriverError(f"can't connect to {url}: {said}")
    return DriverError(f"can't connect to {url}: timed out after {timeout:g} s")


def lost_error(exc: BaseException | None) -> DriverError:
    """
    What a driver reports when the connection ended without a close frame, for ``exc``
    (``connection_lost()``'s, or a parser's end of stream): :exc:`ConnectionDropped`,
    :data:`~.base.DROPPED` with the system's reason for a reset or a broken pipe; a TLS
    record that fails (not the end of the stream) is a :exc:`DriverError`.
    """
    error: DriverError
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        error = DriverError(f"TLS error: {os_error_reason(exc)}")
    elif isinstance(exc, OSError):
        error = ConnectionDropped(f"{DROPPED}: {os_error_reason(exc)}")
    elif exc is None or isinstance(exc, EOFError):
        error = ConnectionDropped(DROPPED)
    else:  # (a parser's error: the peer broke the rules)
        error = DriverError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    error.__cause__ = exc
    return error


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 ``host`` in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ReceiveBuffer(threading.local):
    """
    One receive buffer per thread, shared by its connections.

    With a plain ``asyncio.Protocol``, every read allocates a 256 KiB ``bytes`` object
    and shrinks it (``mmap`` / ``mremap`` / ``munmap`` for each message). asyncio calls
    ``get_buffer()``, ``recv_into()`` and ``buffer_updated()`` back to back, and the
    protocol copies out what it keeps before returning: one buffer per thread will do.

    Args:
        size: The buffer's size in bytes: at most what one read returns.

    """

    def __init__(self, size: int) -> None:
        self.view = memoryview(bytearray(size))


class DrainWaiters(Socket):
    """
    ``drain()`` for a socket over an asyncio transport: callers wait while writing is
    paused (:attr:`write_paused`, set and cleared by the transport's flow control) and
    are woken by :meth:`_wake_drain_waiters`; they raise ConnectionClosed once the
    connection is lost (``_lost_waiter`` done). Shared by the stream drivers and picows.
    """

    __slots__ = ()
    _lost_waiter: asyncio.Future[None]
    # An attribute, not the base class's property: it is read several times per package
    # (StreamSocket makes it a slot).
    write_paused: bool = False
    _drain_waiters: list[asyncio.Future[None]]

    async def drain(self) -> None:
        if self._lost_waiter.done():
            raise self._closed_exc()
        # Every waiter wakes when the buffer empties; the first to write may fill it
        # again, and then the others wait on rather than pile their messages into it
        # (a burst of large messages cost a copy of each into the transport's buffer).
        while self.write_paused and not self._lost_waiter.done():
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)
        if self.closed:
            raise self._closed_exc()

    def _wake_drain_waiters(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)


class WriteBatches(Socket):
    """
    The messages written in one iteration of the event loop, sent together at its end
    (one system call for many; at once past :data:`COALESCE_LIMIT` bytes), and
    :meth:`write_soon`'s callback just before them. A subclass queues each message's
    frames with :meth:`_queue` and sends them in :meth:`_send_out`. Shared by the stream
    drivers and picows.
    """

    __slots__ = ()
    _out: list[bytes] | None  # None: nothing queued, no write-out scheduled
    _out_size: int
    _before_out: list[Callable[[], object]] | None  # see write_soon()

    def _queue(self, frames: list[bytes], size: int) -> None:
        """Count a message of ``size`` bytes and send its ``frames`` soon, with others.
        (The tcp and picows drivers' ``write`` has a copy of it: change them together.)"""
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += size
        out = self._out
        if out is None:
            self._out = frames
            self._out_size = size
            self._loop.call_soon(self._write_out)
        else:
            out += frames
            self._out_size += size
            if self._out_size > COALESCE_LIMIT:
                # Send now: the peer can start, and drain() sees the transport's buffer.
                self._write_out()

    def write_soon(self, callback: Callable[[], object]) -> None:
        callbacks = self._before_out
        if callbacks is None:
            self._before_out = [callback]
        elif callback not in callbacks:
            callbacks.append(callback)
        if self._out is None:
            self._out = []  # what is written next joins it, with no write-out of its own
            self._out_size = 0
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        """Send what was queued now, after what write_soon()'s callbacks add."""
        self._run_before_out()
        out, size = self._out, self._out_size
        self._out = None
        self._out_size = 0
        if out:  # write_soon() alone queues nothing
            self._send_out(out, size)

    def _run_before_out(self) -> None:
        """Call write_soon()'s callbacks now, once each. A driver calls it before it
        closes too, while it still takes writes: what they write goes before the close
        frame."""
        callbacks = self._before_out
        if callbacks is None:
            return
        self._before_out = None
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a bug in the layer above must not stop this socket
                logger.error("! write_soon callback failed on %s", self.peer, exc_info=True)

    @abc.abstractmethod
    def _send_out(self, out: list[bytes], size: int) -> None:
        """Send ``out``, the frames of ``size`` bytes of messages, now."""


class EndAfterHeld(Socket):
    """
    The end of a connection reported after the messages read before it: while reading
    is paused, a driver holds what it read, and if the connection ends meanwhile (the
    peer sent them, then went away; we learn it when a write fails), they are still the
    peer's. The driver's ``connection_lost()`` asks :meth:`_end_waits` first; if it
    does, the socket is closed to writes, ``resume_reading()`` delivers what is held and
    then the end (:meth:`_end_now`, which calls :meth:`_ended`). Not once we closed it
    (what follows our close is dropped); aborting or closing the socket meanwhile ends
    it at once: we let go of it. If reading stays paused ``close_timeout`` past the
    end, what is held is dropped with a WARNING. Shared by the stream drivers and
    picows; the subclass sets ``_end`` to ``None`` at first.
    """

    __slots__ = ()
    _aborted: bool
    _options: DriverOptions
    _paused_reading: bool
    _paused_since: float  # when the node paused reading (loop clock)
    _end: tuple[Exception | None, asyncio.TimerHandle] | None  # a lost connection's end

    def _end_waits(self, exc: Exception | None) -> bool:
        """For ``connection_lost(exc)``: whether the end waits for held messages."""
        if self._aborted or not self._has_held():
            return False
        timer = self._loop.call_later(self._options.close_timeout, self._held_too_long)
        self._end = (exc, timer)
        return True

    def _end_now(self) -> None:
        """Report the end that waits, if any (when nothing is held any more, or we let
        go of the socket)."""
        end = self._end
        if end is not None:
            self._end = None
            end[1].cancel()
            self._ended(end[0])

    def _held_too_long(self) -> None:
        end = self._end
        if end is not None and self._has_held():
            wait = self._options.close_timeout  # resumed: its _deliver_held() ends it
            if self._paused_reading:  # a pause of close_timeout drops them, not a brief
                wait += self._paused_since - self._loop.time()  # one (review95 M1)
            if wait > 0:
                self._end = (end[0], self._loop.call_later(wait, self._held_too_long))
                return
            logger.warning(
                "! dropped %s from %s read before the connection ended: reading stayed "
                "paused %g s after it",
                self._held_description(),
                self.peer,
                self._options.close_timeout,
            )
        self._end_now()

    @abc.abstractmethod
    def _has_held(self) -> bool:
        """True if something read before :meth:`pause_reading` waits to be delivered."""

    @abc.abstractmethod
    def _held_description(self) -> str:
        """What is held, for a log line ("3 message(s)")."""

    @abc.abstractmethod
    def _ended(self, exc: Exception | None) -> None:
        """Report the end of the connection (what ``connection_lost()`` does unless the
        end waits); nothing held is delivered after it."""


class StreamSocket(EndAfterHeld, DrainWaiters, WriteBatches, asyncio.BufferedProtocol):
    """
    A connection over an asyncio transport; also the transport's protocol.

    A subclass sets :attr:`_receive_buffer` and :attr:`_logger`, parses what arrives in
    ``buffer_updated()``, queues each message's frames with :meth:`_queue`, and calls
    :meth:`_set_close_timer` once it sent or received a close frame. While reading is
    paused, it keeps what it already read (:meth:`_has_held`) and delivers it in
    :meth:`_deliver_held`, which calls :meth:`_end_now` (:class:`EndAfterHeld`) once
    nothing is held, and ends with :meth:`_resume_transport` unless it paused again.
    Its driver dials with :meth:`dial`, which awaits :meth:`_opening` for a handshake.
    """

    # Slots: a server holds one socket per peer, and an instance dict of their
    # thirty-odd attributes took 1.5 KiB each. The first two lines are Socket's.
    __slots__ = (
        *("__weakref__", "_listener", "_loop", "close_code", "close_reason", "host"),
        *("id", "inbound", "last_seen", "peer", "peer_id", "stats"),
        "_aborted",
        "_before_out",
        "_drain_waiters",
        "_end",
        "_eof_sent",
        "_lost_waiter",
        "_options",
        "_out",
        "_out_size",
        "_paused_reading",
        "_paused_since",
        "_timer",
        "_transport",
        "write_paused",
    )
    _receive_buffer: ClassVar[ReceiveBuffer]
    """The buffer that ``get_buffer()`` returns."""
    _logger: ClassVar[logging.Logger]

    def __init__(
        self, *, listener: Listener, options: DriverOptions, inbound: bool, peer: str
    ) -> None:
        super().__init__(listener=listener, inbound=inbound, peer=peer, host="")
        self._options = options
        self._transport: asyncio.Transport | None = None
        self._lost_waiter: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None  # the opening or closing deadline
        self._aborted = False
        self._end: tuple[Exception | None, asyncio.TimerHandle] | None = None
        self._eof_sent = False  # we shut down our writing side: nothing more goes out
        self._paused_reading = False
        self._paused_since = 0.0
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Frames written during one event loop iteration go out in one system call.
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._before_out: list[Callable[[], object]] | None = None  # see write_soon()

    # Socket API

    @property
    def write_buffer_size(self) -> int:
        transport = self._transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + self._out_size

    def bytes_in_flight(self) -> int:
        return in_flight(self._transport, self._out_size)

    def path_view(self) -> PathView | None:
        return _tcp_info.path_view(self._transport)

    def abort(self) -> None:
        self._aborted = True
        if self._transport is not None:
            self._transport.abort()
        self._end_now()  # if the connection ended already: we let go of what it held

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost_waiter)

    def pause_reading(self) -> None:
        if not self._paused_reading:
            self._paused_reading, self._paused_since = True, self._loop.time()
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused_reading:
            return
        self._paused_reading = False
        if self._has_held():
            # Deliver what was read before the pause first, outside the caller's frame.
            self._loop.call_soon(self._deliver_held)
        else:
            self._resume_transport()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self._options.write_limit)
        peername = transport.get_extra_info("peername")
        if peername is not None:
            self.host = peername[0]
            if self.inbound:
                self.peer = format_address(peername[0], peername[1])

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._receive_buffer.view

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain_waiters()

    # For the driver

    async def dial(self, host: str, port: int, *, ssl: bool | None = None) -> None:
        """
        Connect this outbound socket to ``host`` and ``port`` and wait until it is open,
        within ``open_timeout``. Errors name the URL it dials, :attr:`peer`.

        The driver calls this once, on the socket it just created in ``connect()``;
        nothing else should.

        Raises:
            DriverError: If the connection fails or times out.

        """
        url, timeout, connected = self.peer, self._options.open_timeout, False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: self, host, port, ssl=ssl)
                connected = True
                await self._opening()
        except TimeoutError:
            self.abort()
            raise dial_timed_out(url, timeout, connected=connected) from None
        except OSError as exc:
            raise connect_error(url, exc, ssl=ssl) from exc
        except DriverError as exc:
            raise DriverError(f"can't connect to {url}: {exc}") from exc
        except asyncio.CancelledError:
            self.abort()
            raise

    # For subclasses

    async def _opening(self) -> None:
        """Wait for the opening handshake, once connected; there is none by default."""

    @abc.abstractmethod
    def _deliver_held(self) -> None:
        """Deliver what was held, until reading is paused again; then resume reading."""

    def _resume_transport(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_reading() and not transport.is_closing():
            transport.resume_reading()

    def _send_out(self, out: list[bytes], size: int) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._eof_sent:
            return
        if len(out) == 1:
            transport.write(out[0])
        elif size < _SEPARATE_WRITES:
            transport.write(b"".join(out))
        else:
            # A large message: a write per part (its header, its data) costs less than
            # copying the data into one piece. A view, so that what the socket doesn't
            # take at once is copied once into the transport's buffer, not sliced first.
            for part in out:
                transport.write(memoryview(part))

    def _connection_ended(self) -> None:
        """For ``connection_lost()``: stop the deadline, and let drain() see the end."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.write_paused = False
        self._wake_drain_waiters()

    def _set_close_timer(self) -> None:
        if self._timer is None and not self._lost_waiter.done():
            self._timer = self._loop.call_later(self._options.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._timer = None
        self._logger.debug("! closing handshake with %s timed out", self.peer)
        self.abort()


class ServerListening(Listening):
    """A server listening for stream connections (:class:`StreamServer`)."""

    def __init__(self, server: StreamServer, url: str) -> None:
        self._server = server
        self.url = url

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def serve(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    accept_retry_max: float = 1.0,
) -> tuple[StreamServer, str]:
    """
    Start accepting connections on ``host`` and ``port``; ``port=0`` picks a free port.

    Args:
        accept_retry_max: Longest pause of accepting when ``accept()`` fails, e.g. for
            want of file descriptors, in seconds (see :mod:`._accept`).

    Returns:
        The server, and the address it listens on, as ``host:port``.

    Raises:
        DriverError: If listening fails.

    """
    try:
        sockets = await bind(host, port)
    except OSError as exc:
        raise DriverError(f"can't listen on {format_address(host, port)}: {exc}") from exc
    server = StreamServer(factory, sockets, retry_max=accept_retry_max)
    server.start()
    # Every interface (""): its IPv4 address names it, a URL that parses (tester39 F5:
    # "ws://:P") but no peer may dial (review58), so a node neither announces nor
    # passes it on, and warns as for 0.0.0.0: listen URLs name the node.
    shown = host or ("0.0.0.0" if any(sock.family == AF_INET for sock in sockets) else "::")
    return server, format_address(shown, sockets[0].getsockname()[1])
