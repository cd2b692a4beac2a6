"""
The driver interface: transports behind one small API.

A :class:`Driver` listens (server side) and dials (client side); each connection is a
:class:`Socket`. Drivers move whole binary messages and report what happens to a
:class:`Listener` — start, connection, open, message, close, error — and know nothing
about packages.

Callbacks are plain functions called from the event loop, in order, for one
connection: ``on_connection`` (inbound) or ``on_open`` (outbound) first, then
``on_message`` for each message, then ``on_error`` if the transport failed, then
``on_close`` exactly once. Writing is synchronous (:meth:`Socket.write` buffers one
message); :meth:`Socket.drain` waits for the buffer to go down, as asyncio streams do.

A listener may also hear of an inbound connection as soon as the transport accepts it
(TCP accept), before the driver's own handshake (the WebSocket upgrade): see
:class:`AcceptListener`. Limits then count every connection from its first byte.

"""

from __future__ import annotations

__all__ = [
    "CONTROL_BURST",
    "CONTROL_RATE",
    "DROPPED",
    "FRAME_PROGRESS",
    "READ_TURN",
    "UPGRADE_FAILED",
    "AcceptListener",
    "CloseCode",
    "Driver",
    "DriverEvent",
    "DriverOptions",
    "Listener",
    "Listening",
    "Socket",
    "SocketStats",
    "accept_hook",
    "dropped_reason",
    "fit_reason",
    "turn_length",
]

import abc
import asyncio
import enum
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from ..exceptions import ConnectionClosed
from ..protocol.close import CloseCode, fit_reason
from ..protocol.deliver import ConnId

if TYPE_CHECKING:
    from ..protocol.path import PathView

logger = logging.getLogger(__name__)

DROPPED = "connection closed without a close frame"
"""What every driver reports (``on_error``) when the peer drops an open connection: the
TCP connection ended without a closing handshake (the peer crashed, or aborted)."""

UPGRADE_FAILED = "WebSocket upgrade failed"
"""How a WebSocket driver's ``close_reason`` starts for an accepted connection whose
upgrade failed (not HTTP, not a WebSocket request: a peer dialling with ``tcp://``)."""

FRAME_PROGRESS = 16 * 1024
"""Bytes of a frame in progress that earn it another ``frame_timeout``
(:attr:`DriverOptions.frame_timeout`), a byte its share."""

CONTROL_RATE = 20.0
"""WebSocket frames that carry no package (control frames, fragments under
:data:`FRAME_PROGRESS` bytes that don't end their message) a peer may send a second..."""

CONTROL_BURST = 200
"""...with this burst; past it the connection is closed with 1008 ("too many control
frames")."""


READ_TURN = 0.005
"""The default :attr:`DriverOptions.read_turn`, in seconds."""


class DriverEvent(enum.Enum):
    """What a driver reports to its :class:`Listener`."""

    START = "start"  # a server started listening
    ACCEPT = "accept"  # a server accepted a connection, before any handshake
    CONNECTION = "connection"  # a peer connected to us
    OPEN = "open"  # we connected to a peer
    MESSAGE = "message"  # a message arrived
    CLOSE = "close"  # a connection closed
    ERROR = "error"  # a connection failed


@dataclass(frozen=True, slots=True)
class DriverOptions:
    """
    Settings every driver honours.

    Attributes:
        max_message_size: Largest message accepted, in bytes; a larger one closes the
            connection with code 1009. ``None`` disables the limit.
        open_timeout: Time allowed to open a connection (TCP and handshake), in seconds.
        close_timeout: Time allowed for the closing handshake before the connection is
            dropped, in seconds.
        frame_timeout: Once a frame has started, time in which it must complete, in
            seconds, and what each :data:`FRAME_PROGRESS` (16 KiB) of its bytes earns
            it (up to ``frame_timeout`` ahead); a stalled frame closes the connection
            with code 1008. 16 KiB per 10 s is about 13 kbit/s: an honest peer's large
            frame on a slow link arrives. While TCP shows the path congested (Linux:
            our segments lost and resent, the peer's window open), a frame may fall
            up to 3 times ``frame_timeout`` behind that pace (:mod:`trustp2p.protocol.path`).
            (``ws`` and ``picows``, whose parsers don't say where a frame starts,
            count from the first read after the last complete frame that completes
            none; a fragmented message is one frame.)
        write_limit: Size of the write buffer above which :meth:`Socket.drain` waits, in
            bytes.
        trust_real_ip: Take a client's address from the ``X-Real-IP`` header when the
            connection comes from a proxy on a loopback address (and only then).
        accept_retry_max: When accepting fails (``tcp``, ``ws``), e.g. for want of file
            descriptors, accepting pauses, 50 ms at first and doubling up to this, in
            seconds; one warning is logged per episode.
        read_turn: Most of one event loop iteration a connection's messages take, in
            seconds (5 ms): past it, the rest of what was read from it waits for the
            next iteration, and reading from it pauses until they are delivered, so
            that every connection gets its turn each iteration (attacker48 F1: a read
            of a flooding peer's thousands of packages held the loop for seconds).
            Never reorders a connection's messages, and every message read before a
            close arrives before it. ``None``: a read's messages all go at once.

    """

    max_message_size: int | None = 2**20
    open_timeout: float = 10.0
    close_timeout: float = 10.0
    frame_timeout: float = 10.0
    write_limit: int = 2**16
    trust_real_ip: bool = True
    accept_retry_max: float = 1.0
    read_turn: float | None = READ_TURN


@dataclass(slots=True)
class SocketStats:
    """Counters kept per connection; the node fills the package-level ones. Bytes are
    the messages' (packages'): on a secure connection, before encryption; never the
    framing. The tcp driver counts a read's messages once they were all delivered:
    during the listener's callback, ``messages_in`` may not count them yet."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    invalid_in: int = 0  # packages that failed to decode or broke the protocol
    unmatched_in: int = 0  # responses that matched no pending request
    last_rtt: float | None = None  # seconds; the heartbeat's last ping round trip


class Listener(Protocol):
    """Receives a driver's events. The node is the listener of all its drivers."""

    def on_start(self, listening: Listening) -> None: ...

    def on_connection(self, socket: Socket) -> None: ...

    def on_open(self, socket: Socket) -> None: ...

    def on_message(self, socket: Socket, data: bytes | str) -> None: ...

    def on_error(self, socket: Socket, error: Exception) -> None: ...

    def on_close(self, socket: Socket) -> None: ...


class AcceptListener(Listener, Protocol):
    """
    A listener that hears of inbound connections at accept, before any handshake.

    Every driver calls :meth:`on_accept` as soon as the transport accepts a connection
    (its ``host`` and ``peer`` are known), before its own opening handshake if it has
    one (``ws``: the HTTP upgrade). The listener may then:

    * leave it: ``on_connection`` follows once the driver's handshake is done;
    * :meth:`Socket.close_soon` it: ``on_connection`` never comes. A driver with a
      handshake completes it first, within ``open_timeout``, to deliver the close code
      and reason (``ws``: the upgrade, then a close frame); others send it at once;
    * :meth:`Socket.abort` it, now or at any later time.

    From :meth:`on_accept` on, the listener hears ``on_close`` exactly once for that
    socket, whether it ever opened or not (``on_error`` only after ``on_connection``).
    """

    def on_accept(self, socket: Socket) -> None: ...


def dropped_reason(sent: tuple[int, str] | None) -> str:
    """
    The close reason of a connection that ended without a closing handshake (its code
    1006): what this side sent, if it sent a close frame (``"no close frame received;
    sent 1001 lost peer"``), else ``""``.
    """
    if sent is None:
        return ""
    return f"no close frame received; sent {sent[0]} {sent[1]}".rstrip()


def turn_length(options: DriverOptions) -> float:
    """:attr:`DriverOptions.read_turn`, infinite for ``None``: a read's turn ends once
    :func:`time.perf_counter` passes its start plus this."""
    turn = options.read_turn
    return math.inf if turn is None else turn


def accept_hook(listener: Listener) -> Callable[[Socket], None] | None:
    """The listener's ``on_accept`` if it is an :class:`AcceptListener`, else ``None``."""
    hook = getattr(listener, "on_accept", None)
    return hook if callable(hook) else None


_socket_ids = itertools.count(1)


class Socket(abc.ABC):
    """
    One connection to a peer.

    Attributes:
        id: Unique in this process.
        peer: The peer's URL when we dialled it, else its ``address:port``.
        peer_id: The peer's authenticated id on a secure connection, else ``None``.
        host: The peer's address (from ``X-Real-IP`` behind a loopback proxy).
        inbound: True when the peer dialled us.
        last_seen: Event loop time (:meth:`asyncio.AbstractEventLoop.time`) when bytes
            last arrived (every read counts, a partial message too), or when the
            connection opened. Liveness counts any bytes as a sign of life.
        stats: Counters for this connection.
        close_code: The close code once closed, else ``None``.
        close_reason: The close reason once closed. A connection that ended without a
            closing handshake (1006) has none on the wire: if we had sent a close frame,
            it says so (:func:`dropped_reason`).

    """

    # No instance dict where a subclass has slots (the stream drivers' sockets, which
    # declare the attributes below among theirs), and no instance layout of its own
    # (picows's sockets also derive from a C type). Hidden from mypy, which would take
    # the attributes assigned here for ones missing from the slots.
    if not TYPE_CHECKING:
        __slots__ = ()

    def __init__(self, *, listener: Listener, inbound: bool, peer: str, host: str) -> None:
        self.id = ConnId(next(_socket_ids))
        self.peer = peer
        self.host = host
        self.inbound = inbound
        self._loop = asyncio.get_running_loop()
        self.last_seen = self._loop.time()
        self.stats = SocketStats()
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_id: str | None = None
        self._listener = listener

    def _ended_abnormally(self, sent: tuple[int, str] | None) -> None:
        """For drivers: the connection ended without a closing handshake (dropped,
        aborted, or the close timed out); ``sent`` is the close frame we had sent."""
        self.close_code = CloseCode.ABNORMAL_CLOSURE
        self.close_reason = dropped_reason(sent)

    def __repr__(self) -> str:
        direction = "from" if self.inbound else "to"
        return f"<{type(self).__name__} #{self.id} {direction} {self.peer}>"

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once the connection is closing or closed: :meth:`write` would raise."""

    @property
    @abc.abstractmethod
    def write_paused(self) -> bool:
        """True while the write buffer is above ``write_limit``: the peer isn't reading."""

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the transport, as far as this end can
        tell; 0 when the driver can't tell."""
        return 0

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """
        Queue one binary message for sending; doesn't block.

        Raises:
            ConnectionClosed: If the connection is closing or closed.

        """

    def write_soon(self, callback: Callable[[], object]) -> None:
        """
        Call ``callback`` once, just before the driver next sends what was written, so
        that what ``callback`` writes goes out with it: at the end of this iteration of
        the event loop, where a driver gathers the messages of an iteration into one
        system call; earlier when something makes it send at once (a write that fills
        its batch, a control frame to answer), and before it sends a close frame. For a
        layer that gathers its own messages until the end of an iteration (the secure
        channel's batches); ``callback`` may thus run inside that layer's own writes. A
        driver that writes at once calls it in the next iteration (``loop.call_soon``),
        as does this default (a close in between then refuses what it writes: the
        secure channel writes its batch itself before it closes).

        Several calls with one callback before it runs may call it once or once each:
        it should do nothing when it has nothing left to write. Different callbacks are
        each called. An exception from ``callback`` is logged; the driver goes on.
        """
        self._loop.call_soon(callback)

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until the write buffer is below its limit."""

    def bytes_in_flight(self) -> int:
        """
        Bytes written to this connection that the peer hasn't taken yet, as far as the
        driver can tell: its write buffer and, over TCP on Linux, the kernel's unsent and
        unacknowledged bytes. Liveness takes a fall as progress: the peer is reading
        what we sent. 0 when the driver can't tell.
        """
        return 0

    def path_view(self) -> PathView | None:
        """
        TCP's view of the connection's path now, for the stall rules (a closed window,
        segments resent; :mod:`trustp2p.protocol.path`): read on Linux by the drivers
        that run on TCP, ``None`` when the driver can't tell (then no grace applies).
        """
        return None

    async def send(self, data: bytes) -> None:
        """
        Send one binary message, waiting if the write buffer is full.

        Raises:
            ConnectionClosed: If the connection is closing or closed.

        """
        self.write(data)
        await self.drain()

    @abc.abstractmethod
    def close_soon(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """
        Start closing the connection with a code and reason; doesn't block.

        Does nothing if it is already closing. After ``close_timeout``, the connection
        is dropped whatever the peer does.

        """

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection and wait until it is closed."""
        self.close_soon(code, reason)
        await self.wait_closed()

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""

    @abc.abstractmethod
    def pause_reading(self) -> None:
        """Stop calling ``on_message`` until :meth:`resume_reading`; backpressure."""

    @abc.abstractmethod
    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""

    def _closed_exc(self) -> ConnectionClosed:
        return ConnectionClosed(self.close_code, self.close_reason)

    def _deliver(self, data: bytes | str) -> None:
        """Report one received message to the listener. The driver set
        :attr:`last_seen` when the bytes arrived: the loop's clock isn't read per
        message (a turn's is, after a message that more of the read follow: ``read_turn``).
        (The picows driver's frame loop has a copy, and the tcp driver's loop,
        ``DataFrames.deliver``, a variant that counts a read's messages after them: change
        them together.)"""
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(data.encode()) if isinstance(data, str) else len(data)
        try:
            self._listener.on_message(self, data)
        except Exception:  # a bug in the listener must not break the transport
            logger.error("! listener failed on a message from %s", self.peer, exc_info=True)

    def _report_accept(self) -> bool:
        """For drivers: tell the listener of this inbound connection at accept, if it is
        an :class:`AcceptListener`. Returns whether it was: it must then hear
        ``on_close`` for this socket whatever happens."""
        hook = accept_hook(self._listener)
        if hook is None:
            return False
        try:
            hook(self)
        except Exception:
            logger.error("! listener failed in on_accept for %s", self.peer, exc_info=True)
        return True

    def _report(self, name: str, *args: object) -> None:
        """Call a listener callback, logging a failure instead of raising it."""
        try:
            getattr(self._listener, name)(self, *args)
        except Exception:
            logger.error("! listener failed in %s for %s", name, self.peer, exc_info=True)


class Listening(abc.ABC):
    """A server listening for connections."""

    url: str
    """A URL peers can dial to reach it, e.g. ``ws://127.0.0.1:1107``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop accepting connections; open connections stay open."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the listening socket is closed."""


class Driver(abc.ABC):
    """A transport: listens for and dials connections that carry binary messages."""

    scheme: ClassVar[str]
    """The URL scheme this driver dials, e.g. ``"ws"``."""

    def __init__(self, options: DriverOptions | None = None) -> None:
        self.options = options if options is not None else DriverOptions()

    @abc.abstractmethod
    async def listen(self, host: str, port: int, listener: Listener) -> Listening:
        """
        Start listening; ``port=0`` picks a free port.

        Raises:
            DriverError: If listening fails.

        """

    @abc.abstractmethod
    async def connect(self, url: str, listener: Listener) -> Socket:
        """
        Dial ``url`` and return the open socket; the listener's ``on_open`` has fired.

        Raises:
            DriverError: If the URL is invalid or the connection fails or times out.

        """
