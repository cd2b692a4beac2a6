"""
The TCP driver: length-prefixed messages over plain TCP (``tcp://host:port``).

There is no handshake: both sides may send once the TCP connection is up (the secure
channel, when on, runs first inside it). asyncio glue around a small parser: it reads
into one buffer per thread, as ``ws`` does, and coalesces an iteration's writes.

Wire format
-----------

A connection carries frames in both directions. Each frame is a 4-byte big-endian
header followed by its payload::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-------------------------------------------------------------+
    |C|             payload length L (31 bits, in bytes)            |
    +-+-------------------------------------------------------------+
    |                     payload (L bytes) ...                     |
    +---------------------------------------------------------------+

- ``C = 0``: a **data frame**; the payload is one message (``0 <= L < 2**31``). A
  receiver checks ``L`` against ``max_message_size`` as soon as it has the header, before
  it stores any of the payload; a larger ``L`` fails the connection with code 1009.
- ``C = 1``: a **control frame**, ``1 <= L <= 126``. The first payload byte is its type
  (:class:`ControlType`); any other type fails the connection with code 1002.

  - ``0x01`` CLOSE: a 2-byte big-endian close code, then the close reason in UTF-8
    (0 to 123 bytes, as in RFC 6455 §5.5), so ``L = 3 + len(reason)``. Valid codes are
    those a WebSocket endpoint may send: 1000-1003, 1007-1014 and 3000-4999.

For example, the message ``b"hi"`` is ``00 00 00 02 68 69`` and a normal closure with
the reason ``"bye"`` is ``80 00 00 06 01 03 e8 62 79 65``.

Closing handshake
-----------------

It follows RFC 6455 §7, with a TCP half-close where WebSocket relies on HTTP's:

1. The closing side sends CLOSE and no data frame after it; it keeps reading, drops
   data frames, and waits for the answer.
2. A side that receives CLOSE answers with a CLOSE with the same code and reason (unless
   it already sent one), shuts down its writing side (TCP FIN), and ignores whatever
   follows. The code and reason it received are the connection's.
3. Each side closes its socket once it has read the peer's FIN, so neither resets the
   connection with unread data. A side that hasn't finished after ``close_timeout``
   drops the connection; the close code is then 1006 unless a CLOSE was received.

A connection that ends without a CLOSE has code 1006, and unless this side dropped it
(:meth:`TcpSocket.abort`, ``close_timeout``), ``on_error`` says how; a dial that sent and
heard nothing has the reason "closed with no reply: does it listen on ws://?".

**Failing the connection.** On an oversized message (code 1009, reason ``"message too
big"``), a malformed control frame (1002, ``"protocol error"``) or a stalled frame (1008,
``"frame stalled"``), the receiver reports ``on_error``, sends CLOSE with that code and
reason, shuts down its writing side, and discards all it reads afterwards. Its close
code is the one it sent, or 1006 if the peer doesn't end it within ``close_timeout``.

**Frame deadline.** Once the first byte of a frame has arrived, the frame must keep to
16 KiB per ``frame_timeout`` (default 10 s) on average, with ``frame_timeout`` of slack
(``_deadline.py``), else the connection fails with code 1008 (policy violation: the
bytes are well-formed, the peer is just too slow). Time between frames is unlimited;
the deadline is suspended while :meth:`TcpSocket.pause_reading` holds the connection.

"""

from __future__ import annotations

__all__ = ["MAX_LENGTH", "ControlType", "TcpDriver", "TcpListening", "TcpSocket"]

import asyncio
import enum
import logging
import struct

from ..exceptions import ConnectionDropped, DriverError
from ._deadline import FrameDeadline
from ._stream import (
    COALESCE_LIMIT,
    ReceiveBuffer,
    ServerListening,
    StreamSocket,
    lost_error,
    serve,
)
from ._tcp_frames import DataFrames
from ._tcp_url import parse_url
from .base import (
    DROPPED,
    FRAME_PROGRESS,
    CloseCode,
    Driver,
    DriverOptions,
    Listener,
    Listening,
    Socket,
    turn_length,
)

logger = logging.getLogger(__name__)


class ControlType(enum.IntEnum):
    """The first payload byte of a control frame."""

    CLOSE = 0x01


_HEADER = struct.Struct(">I")
_CONTROL_BIT = 0x8000_0000
_LENGTH_MASK = 0x7FFF_FFFF
MAX_LENGTH = _LENGTH_MASK
"""Largest payload a data frame can carry, in bytes."""
_MAX_CONTROL_LENGTH = 126  # type byte + close code + 123 bytes of reason
_MAX_REASON_LENGTH = 123
_HTTP = (b"GET ", b"HTTP", b"POST", b"HEAD", b"PUT ", b"<!DO", b"<!do", b"<htm", b"<HTM")
"""Headers that are HTTP: a WebSocket peer's request or answer, a web server's page."""

# _ENDING: the connection ended with messages held by a pause (EndAfterHeld): they are
# delivered, nothing can be sent.
_OPEN, _ENDING, _CLOSING, _CLOSED = range(4)


def _is_valid_close_code(code: int) -> bool:
    # The codes RFC 6455 §7.4 lets an endpoint send (as websockets checks them).
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _close_frame(code: int, reason: bytes) -> bytes:
    header = _HEADER.pack(_CONTROL_BIT | (3 + len(reason)))
    return header + bytes((ControlType.CLOSE,)) + code.to_bytes(2, "big") + reason


# The receive buffer of this thread's TCP connections. It has asyncio's read size, 256 KiB:
# measured on loopback, 64 KiB messages echoed twice as fast as with 64 KiB, and small
# messages no slower.
_receive_buffer = ReceiveBuffer(2**18)


class TcpSocket(FrameDeadline, StreamSocket):
    """A TCP connection; also the asyncio protocol of its transport."""

    __slots__ = (
        *("_chunks", "_close_rcvd", "_close_sent", "_control", "_discarding", "_drop_error"),
        *("_error_reported", "_failed", "_frame_started", "_frame_timer", "_frames", "_got"),
        *("_head", "_heard", "_limit", "_pending", "_size", "_state"),
    )
    _receive_buffer = _receive_buffer
    _logger = logger

    def __init__(
        self, *, listener: Listener, options: DriverOptions, inbound: bool, peer: str = ""
    ) -> None:
        super().__init__(listener=listener, options=options, inbound=inbound, peer=peer)
        limit = options.max_message_size
        self._limit = MAX_LENGTH if limit is None else limit
        self._state = _OPEN
        self._close_sent: tuple[int, str] | None = None
        self._close_rcvd: tuple[int, str] | None = None
        self._failed = False  # we failed the connection: our close code stands
        self._discarding = False  # read and drop everything (after a close or a failure)
        self._error_reported = False
        self._drop_error: DriverError | None = None  # the peer ended TCP without a close
        # The frame being read: its partial header, or its payload so far.
        self._head = b""
        self._size = -1  # payload length once the header is complete, else -1
        self._control = False
        self._chunks: list[bytes] = []
        self._got = 0
        self._frame_started: float | None = None  # see FrameDeadline
        self._frame_timer: asyncio.TimerHandle | None = None
        # Bytes read before a pause_reading() or a turn's end, from a frame boundary.
        self._pending: bytes | memoryview = b""
        self._heard = False  # any byte came
        self._frames = DataFrames(listener, self.stats, self._limit, turn_length(options))

    # Socket API

    @property
    def closed(self) -> bool:
        return self._state != _OPEN

    def write(self, data: bytes) -> None:
        """
        Queue one binary message for sending; doesn't block.

        Raises:
            ConnectionClosed: If the connection is closing or closed.
            ValueError: If the message is longer than a frame can carry (2 GiB - 1).

        """
        if self._state != _OPEN:
            raise self._closed_exc()
        size = len(data)
        if size > MAX_LENGTH:
            raise ValueError(f"message of {size} bytes exceeds limit of {MAX_LENGTH} bytes")
        if type(data) is not bytes:
            data = bytes(data)  # it is sent later: don't let the caller change it
        # WriteBatches._queue, written out (a call less per message).
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += size
        out = self._out
        if out is None:
            self._out = [_HEADER.pack(size), data]
            self._out_size = size
            self._loop.call_soon(self._write_out)
        else:
            out += (_HEADER.pack(size), data)
            self._out_size += size
            if self._out_size > COALESCE_LIMIT:
                self._write_out()  # send now: the peer can start, drain() sees the buffer

    def close_soon(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """
        Start the closing handshake; doesn't block.

        Raises:
            ValueError: If ``code`` isn't a close code an endpoint may send, or ``reason``
                is longer than 123 bytes in UTF-8.

        """
        if self._state != _OPEN:
            if self._state == _ENDING:
                self._end_now()  # we let go of what it held
            return
        if not _is_valid_close_code(code):
            raise ValueError(f"invalid close code {code}")
        encoded = reason.encode()
        if len(encoded) > _MAX_REASON_LENGTH:
            raise ValueError(
                f"close reason of {len(encoded)} bytes exceeds limit of {_MAX_REASON_LENGTH} bytes"
            )
        self._send_close(code, reason, encoded)
        self._set_close_timer()
        if self._paused_reading:
            # Read on to find the answer: data frames are dropped from now on, so the
            # pause has nothing left to hold back.
            self._paused_reading = False
            self._loop.call_soon(self._deliver_held)

    def abort(self) -> None:
        self._discarding = self._frames.stop = True
        super().abort()

    def pause_reading(self) -> None:
        if self._discarding:
            return  # nothing left to deliver; keep reading to see the peer's FIN
        self._stop_frame_clock()
        self._frames.stop = True
        super().pause_reading()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.last_seen = self._loop.time()
        if self.inbound:
            # There is no handshake: accepted and open at once, unless the listener
            # closed it on accept (connection_lost() reports on_close either way).
            self._report_accept()
            if self._state != _OPEN or self._aborted:
                return
        self._report("on_connection" if self.inbound else "on_open")

    def buffer_updated(self, nbytes: int) -> None:
        self.last_seen = self._loop.time()  # any bytes are life, a partial frame too
        self._heard = True
        if self._discarding:
            return
        view = _receive_buffer.view
        pos = 0
        self._frames.start_turn()
        if self._size >= 0 or self._head:
            pos = self._continue_frame(view, nbytes)
            if pos < 0:
                return
        self._parse(view, pos, nbytes)

    def eof_received(self) -> None:
        self._write_out()
        if not self._discarding and self._close_rcvd is None:
            if self._size >= 0:
                detail = f": {self._got} of {self._size} payload bytes received"
            elif self._head:
                detail = f": {len(self._head)} of 4 header bytes received"
            else:
                detail = ""
            self._drop_error = ConnectionDropped(f"{DROPPED}{detail}")
        # Returning None closes the transport, after the write buffer is flushed.

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _OPEN and self._end_waits(exc):
            self._state = _ENDING
            self._connection_ended()  # drain() raises: closed
            self._stop_frame_clock(cancel=True)
        else:
            self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._discarding = self._frames.stop = True
        self._connection_ended()
        self._stop_frame_clock(cancel=True)
        if self._close_rcvd is not None:
            self.close_code, self.close_reason = self._close_rcvd
        elif self._failed and self._close_sent is not None and not self._aborted:
            self.close_code, self.close_reason = self._close_sent
        else:
            self._ended_abnormally(self._close_sent)
            if not (self.inbound or self._heard or self.close_reason) and self.stats.bytes_out:
                self.close_reason = "closed with no reply: does it listen on ws://?"
        self._out = None
        self._out_size = 0
        self._pending = self._head = b""
        self._chunks = []
        # When we dropped it ourselves, or the closing handshake completed, the end of
        # the TCP connection is no news.
        if not (self._aborted or self._error_reported or self._close_rcvd is not None):
            error = self._drop_error
            if error is None and exc is not None:
                error = lost_error(exc)
            if error is not None:
                self._report("on_error", error)
        self._report("on_close")
        self._lost_waiter.set_result(None)

    # Reading

    def _parse(self, view: memoryview, pos: int, end: int) -> None:
        """Handle the frames in ``view[pos:end]``, which starts at a frame boundary."""
        frames = self._frames
        while pos < end:
            # A callback paused or closed, or the turn is over (DriverOptions.read_turn).
            if self._paused_reading or self._discarding or frames.turned:
                if not self._discarding:
                    # (held bytes are kept as they are: a turn after a turn copies none)
                    held = isinstance(view.obj, bytes)
                    self._pending = view[pos:end] if held else bytes(view[pos:end])
                    if frames.turned and not self._paused_reading:
                        self._next_turn()
                return
            if self._state <= _ENDING:  # else we sent a close: drop what follows
                frames.stop = False
                pos = frames.deliver(self, view, pos, end)  # the whole data frames from pos
                if pos == end or frames.stop or frames.turned:
                    continue
            # A partial frame, a control frame, one over the limit, or data after our close.
            if end - pos < 4:
                self._head = bytes(view[pos:end])
                self._start_frame_clock(self._loop.time())
                return
            (length,) = _HEADER.unpack_from(view, pos)
            if length > self._limit and not self._check_header(length):
                return
            start = pos + 4
            stop = start + (length & _LENGTH_MASK)
            if stop > end:
                self._size = length & _LENGTH_MASK
                self._control = length > _LENGTH_MASK
                self._chunks = [bytes(view[start:end])]
                self._got = end - start
                self._start_frame_clock(self._loop.time())
                return
            pos = stop
            if length > _LENGTH_MASK:
                self._receive_control(bytes(view[start:stop]))
        self._frame_started = None

    def _continue_frame(self, view: memoryview, end: int) -> int:
        """
        Go on with the frame in progress; return where the next frame starts in ``view``,
        or -1 if the frame is still incomplete or the connection failed.

        """
        pos = 0
        if self._size < 0:
            head = self._head
            need = 4 - len(head)
            if end < need:
                self._head = head + bytes(view[:end])
                return -1
            (length,) = _HEADER.unpack(head + bytes(view[:need]))
            self._head = b""
            if length > self._limit and not self._check_header(length):
                return -1
            pos = need
            self._size = length & _LENGTH_MASK
            self._control = length > _LENGTH_MASK
            self._chunks = []
            self._got = 0
        missing = self._size - self._got
        if end - pos < missing:
            self._chunks.append(bytes(view[pos:end]))
            self._got += end - pos
            self._frame_progress(end - pos, self.last_seen)
            return -1
        chunks = self._chunks
        chunks.append(bytes(view[pos : pos + missing]))
        payload = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = -1
        self._frame_started = None
        if self._control:
            self._receive_control(payload)
        elif self._state <= _ENDING:  # else we sent a close: drop what follows
            self._deliver(payload)
        return pos + missing

    def _check_header(self, length: int) -> bool:
        """Check a header over the data limit: True for a well-formed control frame."""
        if length <= _LENGTH_MASK:
            if _HEADER.pack(length) in _HTTP:  # (a tester: "message too big", each redial)
                hint = "does the peer dial ws://?" if self.inbound else "does it listen on ws://?"
                self._protocol_error(f"HTTP, not a tcp:// frame: {hint}")
                return False
            limit = self._limit
            error = DriverError(f"message too big: {length} bytes exceeds limit of {limit} bytes")
            self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big", error)
            return False
        size = length & _LENGTH_MASK
        if size == 0:
            self._protocol_error("empty control frame")
            return False
        if size > _MAX_CONTROL_LENGTH:
            limit = _MAX_CONTROL_LENGTH
            self._protocol_error(f"control frame of {size} bytes exceeds limit of {limit} bytes")
            return False
        return True

    def _receive_control(self, payload: bytes) -> None:
        kind = payload[0]
        if kind != ControlType.CLOSE:
            self._protocol_error(f"unknown control frame type {kind}")
            return
        if len(payload) < 3:
            self._protocol_error(f"close frame of {len(payload)} bytes lacks a close code")
            return
        code = int.from_bytes(payload[1:3], "big")
        if not _is_valid_close_code(code):
            self._protocol_error(f"invalid close code {code}")
            return
        try:
            reason = payload[3:].decode()
        except UnicodeDecodeError:
            self._protocol_error("close reason isn't valid UTF-8")
            return
        self._close_rcvd = (code, reason)
        if self._state == _OPEN:
            self._send_close(code, reason, payload[3:])  # the answer
        # Nothing may follow a close frame: read on only to see the peer's FIN.
        self._discard()
        self._shutdown_write()
        self._set_close_timer()

    def _has_held(self) -> bool:
        return bool(self._pending)

    def _held_description(self) -> str:
        return f"{len(self._pending)} byte(s) of frames"

    def _deliver_held(self) -> None:
        if self._paused_reading:
            return
        pending = self._pending
        if pending and not self._discarding:
            self._pending = b""
            self._frames.start_turn()
            self._parse(memoryview(pending), 0, len(pending))
        if not self._pending:
            self._end_now()  # if the connection ended meanwhile: nothing is held now
            if not self._paused_reading:
                self._resume_transport()

    def _stop_reading(self) -> None:
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def _resume_transport(self) -> None:
        if self._size >= 0 or self._head:
            self._start_frame_clock(self._loop.time())  # the frame's deadline starts over
        super()._resume_transport()

    def _frames_watched(self) -> bool:
        return not self._discarding

    def _frame_stalled(self, timeout: float) -> None:
        if self._size >= 0:
            detail = f"{self._got} of {self._size} payload bytes received"
        else:
            detail = f"{len(self._head)} of 4 header bytes received"
        detail += f", under {FRAME_PROGRESS} more in {timeout:g} s"
        error = DriverError(f"frame stalled: {detail}")
        self._fail(CloseCode.POLICY_VIOLATION, "frame stalled", error)

    # Writing and closing

    def _send_close(self, code: int, reason: str, encoded: bytes) -> None:
        self._run_before_out()  # while it still takes writes: they go before the close
        self._state = _CLOSING
        self._frames.stop = True  # data frames are dropped from now on
        self._close_sent = (code, reason)
        frame = _close_frame(code, encoded)
        if self._out is None:
            self._out = [frame]
        else:
            self._out.append(frame)  # behind the messages written before
        self._write_out()

    def _fail(self, code: int, reason: str, error: DriverError) -> None:
        """Report ``error`` and close with ``code``, discarding what the peer sends."""
        if self._discarding:
            return
        self._error_reported = True
        self._report("on_error", error)
        self._failed = True
        if self._state == _OPEN:
            self._send_close(code, reason, reason.encode())
        self._discard()
        self._shutdown_write()
        self._set_close_timer()

    def _protocol_error(self, message: str) -> None:
        self._fail(CloseCode.PROTOCOL_ERROR, "protocol error", DriverError(message))

    def _discard(self) -> None:
        self._discarding = self._frames.stop = True
        self._paused_reading = False
        self._pending = self._head = b""
        self._size = -1
        self._chunks = []
        self._frame_started = None
        self._resume_transport()  # read on to see the peer's FIN

    def _shutdown_write(self) -> None:
        self._write_out()
        transport = self._transport
        if not self._eof_sent and transport is not None and not transport.is_closing():
            self._eof_sent = True
            transport.write_eof()


class TcpListening(ServerListening):
    """A TCP server listening for connections."""


class TcpDriver(Driver):
    """
    TCP (``tcp://host:port``) driver; the wire format is in the module docstring.

    The limits of :class:`DriverOptions` apply: a message over ``max_message_size``
    closes the connection with code 1009 as soon as its length is read, and a message
    that neither completes nor brings 16 KiB more within ``frame_timeout`` closes it
    with code 1008. A URL
    may have a path (such as ``/p2p/<peer-id>``); the driver ignores it.

    Raises:
        ValueError: If ``max_message_size`` is ``2**31`` or more, which frames can't
            carry (``None`` means that limit).

    """

    scheme = "tcp"

    def __init__(self, options: DriverOptions | None = None) -> None:
        super().__init__(options)
        limit = self.options.max_message_size
        if limit is not None and limit > MAX_LENGTH:
            raise ValueError(
                f"max_message_size of {limit} bytes exceeds the TCP frame limit of "
                f"{MAX_LENGTH} bytes"
            )

    async def listen(self, host: str, port: int, listener: Listener) -> Listening:
        options = self.options

        def factory() -> TcpSocket:
            return TcpSocket(listener=listener, options=options, inbound=True)

        server, address = await serve(
            factory, host, port, accept_retry_max=options.accept_retry_max
        )
        listening = TcpListening(server, f"tcp://{address}")
        listener.on_start(listening)
        return listening

    async def connect(self, url: str, listener: Listener) -> Socket:
        host, port = parse_url(url)
        socket = TcpSocket(listener=listener, options=self.options, inbound=False, peer=url)
        await socket.dial(host, port)
        return socket
