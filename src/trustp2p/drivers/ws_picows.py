"""
A WebSocket driver on ``picows``, a WebSocket library written in Cython.

Optional: ``pip install 'trustp2p[fast]'`` installs ``picows`` (and ``uvloop``). Ask for it
by name, ``NodeOptions(driver="picows")`` or ``--driver picows``: the node then listens
and dials ``ws://`` and ``wss://`` URLs with it. Either end may use either WebSocket driver.

``picows`` parses frames and writes them in C; this module adds what the driver contract
asks for and ``picows`` leaves to its user: the closing handshake (echo the peer's close
frame, close the TCP connection, a deadline), messages in fragments, UTF-8 checks of text
messages, ``pause_reading`` (``picows`` delivers every frame of one read; what comes after
a pause is held), messages written in one event loop iteration sent together at its end
(picows sends each message with a system call of its own: several are framed here),
``last_seen`` on every read (a partial frame too), and the accept hook and accept loop
of the other stream drivers (:mod:`._accept`).

"""

from __future__ import annotations

__all__ = ["PicowsDriver", "PicowsSocket"]

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
)
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from ..exceptions import DriverError
from ..protocol.limits import TokenBucket
from ..protocol.path import PathView
from . import _tcp_info
from ._deadline import FrameDeadline
from ._picows_protocol import PicowsProtocol, real_ip_listener, retrieve_failure
from ._stream import (
    COALESCE_LIMIT,
    DrainWaiters,
    EndAfterHeld,
    ServerListening,
    WriteBatches,
    connect_error,
    dial_timed_out,
    format_address,
    in_flight,
    lost_error,
    serve,
)
from ._wsframes import binary_frames
from .base import (
    FRAME_PROGRESS,
    UPGRADE_FAILED,
    CloseCode,
    Driver,
    DriverOptions,
    Listener,
    Listening,
    Socket,
    fit_reason,
    turn_length,
)

logger = logging.getLogger(__name__)

_CONTROL = (WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE)
_NO_STATUS_RCVD = 1005  # a close frame without a code, as websockets reports it
_TOO_BIG = re.compile(r"(\d+) > (\d+)$")  # the end of picows' reason for code 1009


class PicowsSocket(EndAfterHeld, FrameDeadline, DrainWaiters, WriteBatches, WSListener):
    """A WebSocket connection on picows; also the picows listener of its connection."""

    def __init__(
        self, *, listener: Listener, options: DriverOptions, inbound: bool, peer: str = ""
    ) -> None:
        super().__init__(listener=listener, inbound=inbound, peer=peer, host="")
        self._options = options
        self._frame_started: float | None = None  # see FrameDeadline
        self._frame_timer: asyncio.TimerHandle | None = None
        self._control_budget: TokenBucket | None = None  # see FrameDeadline
        self._flooded = False
        self.frames_read = 0  # frames picows handed over (on_ws_frame), control ones too
        self._ws: WSTransport | None = None
        self._tcp: asyncio.Transport | None = None
        self._open = False  # open and neither side sent a close frame: writable
        self._opened = False  # the listener heard on_connection / on_open
        self._accepted = False  # the listener heard on_accept: it hears on_close too
        self._upgrade_bytes = 0  # read while not open (a failed upgrade's, if it stays so)
        self._refusal, self._aborted = "", False  # why refuse_upgrade() closed it
        self._end: tuple[Exception | None, asyncio.TimerHandle] | None = None  # EndAfterHeld
        self._close_sent = False  # by this driver (picows sends one on its own errors)
        self._close_on_open: tuple[int, str] | None = None
        self._error: DriverError | None = None  # why this driver failed the connection
        self._timer: asyncio.TimerHandle | None = None  # the closing deadline
        self._lost_waiter: asyncio.Future[None] = self._loop.create_future()
        self._paused_reading, self._paused_since = False, 0.0  # (EndAfterHeld)
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._drop_all = False  # a close frame went out: drop data frames
        self._held: deque[bytes | str] = deque()  # read before pause_reading(), a turn's end
        # DriverOptions.read_turn; _turned: this read's turn is over, the rest is held.
        self._turn, self._turn_end, self._turned = turn_length(options), 0.0, False
        self._held_close: WSTransport | None = None  # the peer's close, behind them
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._out: list[bytes] | None = None  # written in this event loop iteration
        self._out_size = 0
        self._before_out: list[Callable[[], object]] | None = None  # see write_soon()

    # Socket API

    @property
    def closed(self) -> bool:
        return not self._open

    @property
    def write_buffer_size(self) -> int:
        tcp = self._tcp
        return self._out_size + (tcp.get_write_buffer_size() if tcp is not None else 0)

    def write(self, data: bytes) -> None:
        if not self._open:
            raise self._closed_exc()
        if type(data) is not bytes:
            data = bytes(data)  # it is sent later: don't let the caller change it
        # WriteBatches._queue, written out (a call less per message).
        size = len(data)
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += size
        out = self._out
        if out is None:
            self._out = [data]
            self._out_size = size
            self._loop.call_soon(self._write_out)
        else:
            out.append(data)
            self._out_size += size
            if self._out_size > COALESCE_LIMIT:
                self._write_out()  # send now: the peer can start, drain() sees the buffer

    def bytes_in_flight(self) -> int:
        return in_flight(self._tcp, self._out_size)

    def path_view(self) -> PathView | None:
        return _tcp_info.path_view(self._tcp)

    def close_soon(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        if self._open:
            self._send_close(code, reason)
        elif not self._opened and not self._lost_waiter.done():
            if self.inbound and not self._aborted and self._tcp is not None:
                # Finish the upgrade to deliver the code and reason: a client that can't
                # be served learns why (within open_timeout, else it is dropped).
                if self._close_on_open is None:
                    self._close_on_open = (code, reason)
            else:
                self.abort()
        elif self._end is not None:
            self._end_now()  # it ended with messages held: we let go of them

    def abort(self) -> None:
        self._aborted = True
        self._open = False
        if self._tcp is not None:
            self._tcp.abort()
        self._end_now()  # if the connection ended already: we let go of what it held

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost_waiter)

    def pause_reading(self) -> None:
        self._stop_frame_clock()
        if not self._paused_reading:
            self._paused_reading, self._paused_since = True, self._loop.time()
        tcp = self._tcp
        if tcp is not None and tcp.is_reading():
            tcp.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused_reading:
            return
        self._paused_reading = False
        if self._held:
            # Deliver what was read before the pause first, outside the caller's frame.
            self._loop.call_soon(self._deliver_held)
        else:
            self._resume_transport()

    # picows' WSListener

    def on_ws_connected(self, transport: WSTransport) -> None:
        if self._close_on_open is not None:
            # The listener closed it at accept: close now, without reporting it open.
            self._open = True
            self._send_close(*self._close_on_open)
            return
        self._open = self._opened = True
        self.last_seen = self._loop.time()
        self._report("on_connection" if self.inbound else "on_open")

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.frames_read += 1
        kind = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension is negotiated (§5.2)
            if self._open:  # picows leaves this check to us
                self._fail(CloseCode.PROTOCOL_ERROR, "protocol error: reserved bits set")
            return
        if (
            kind is WSMsgType.BINARY
            and frame.fin
            and self._open  # not aborted, no close frame from us or the peer
            and not (self._fragments or self._paused_reading or self._turned)
            and not transport.is_close_frame_sent
        ):
            # The common case: Socket._deliver, written out (a call less per message).
            data = frame.get_payload_as_bytes()
            stats = self.stats
            stats.messages_in += 1
            stats.bytes_in += len(data)
            try:
                self._listener.on_message(self, data)
            except Exception:  # a bug in the listener must not break the transport
                logger.error("! listener failed on a message from %s", self.peer, exc_info=True)
            self._turned = perf_counter() > self._turn_end  # the rest: the next iteration
            return
        self.last_seen = now = self._loop.time()
        small = kind in _CONTROL or (not frame.fin and frame.payload_size < FRAME_PROGRESS)
        if small and kind is not WSMsgType.CLOSE and not self._small_frame(now):
            return  # (closing: what follows is dropped)
        if self._fragments and kind in _CONTROL:  # a ping inside a message: no progress
            self._control_frame_read(frame.payload_size, self.last_seen)
        if kind is WSMsgType.CLOSE:
            if self._held:  # read with messages still held: it comes after them
                self._held_close = transport
            else:
                self._close_received(transport)
        elif kind is WSMsgType.PING:
            if self._open and not self.write_paused:  # (RFC 6455 lets us skip pongs)
                transport.send_pong(frame.get_payload_as_bytes())
        elif transport.is_close_frame_sent and self._dropping(frame):
            return
        elif kind is WSMsgType.BINARY and frame.fin and not self._fragments:
            self._receive(frame.get_payload_as_bytes())
        elif kind in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
            self._receive_fragment(frame)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain_waiters()

    def _dropping(self, frame: WSFrame) -> bool:
        """Once a close frame went out, whether to drop this data frame: all of them
        after ours; after picows failed the connection for a frame over the size limit,
        that frame (it parses on and delivers it) and all that follow. The frame it
        parsed before that one comes first, and arrives."""
        if not self._drop_all:
            limit = self._options.max_message_size
            too_big = limit is not None and frame.payload_size > limit
            self._drop_all = self._close_sent or too_big
        return self._drop_all

    # For the protocol and the driver

    def transport_made(self, tcp: asyncio.Transport, ws: WSTransport) -> None:
        """The TCP connection is up (``connection_made``): the handshake starts."""
        self._tcp = tcp
        self._ws = ws
        tcp.set_write_buffer_limits(high=self._options.write_limit)
        peername = tcp.get_extra_info("peername")
        if peername is not None:
            self.host = peername[0]
            if self.inbound:
                self.peer = format_address(peername[0], peername[1])
        if self.inbound:
            self._accepted = self._report_accept()

    @property
    def driver_options(self) -> DriverOptions:
        """The options it was made with."""
        return self._options

    def start_turn(self) -> None:  # a read starts: its messages' DriverOptions.read_turn
        self._turn_end, self._turned = perf_counter() + self._turn, False

    def read_complete(self, now: float, nbytes: int) -> None:
        """A read (``buffer_updated``) completed a frame: no frame deadline runs, unless
        a fragmented message is still open (see FrameDeadline), or a turn ended."""
        if self._held and not self._paused_reading:
            self._next_turn()  # a turn's end held the rest
        elif not self._fragments:
            self._frame_started = None
        elif not self._paused_reading:
            self._watch_frames(False, now, nbytes)

    def read_incomplete(self, now: float, nbytes: int) -> None:
        """A read (``buffer_updated``) completed no frame: progress, or a new deadline."""
        if not self._opened:
            self._upgrade_bytes += nbytes
        if not self._paused_reading:
            self._watch_frames(False, now, nbytes)

    def refuse_upgrade(self, reason: str) -> None:
        """Close now: its first bytes can't begin an upgrade (see PicowsProtocol)."""
        self._refusal = reason
        if self._tcp is not None:
            self._tcp.close()

    def transport_lost(self, exc: Exception | None) -> None:
        """The TCP connection ended (``connection_lost``): report the close, after the
        messages held by a pause (:class:`EndAfterHeld`)."""
        self._open = False
        self._stop_frame_clock(cancel=True)
        self.write_paused = False
        self._wake_drain_waiters()  # drain() raises: closed
        if not (self._opened and not self._close_sent and self._end_waits(exc)):
            self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._set_close_code()
        if self._accepted and not self._opened and self._close_on_open is None:
            self._upgrade_failed()
        self._held.clear()  # in place: a _deliver_held() under way stops
        self._held_close = None
        if self._ws is not None and not self.inbound:
            retrieve_failure(self._ws)
        if self._opened:
            error = None if self._aborted else self._error or self._picows_error(exc)
            if error is not None:
                self._report("on_error", error)
        if self._opened or self._accepted:
            self._report("on_close")
        self._lost_waiter.set_result(None)

    def _upgrade_failed(self) -> None:
        """An accepted connection ended before its upgrade: if the peer sent bytes (a
        TCP health check connects and closes), say so in the close reason, which the
        node reports (as the ws driver does; a tester: a tcp:// dial left no trace).
        picows doesn't say what was wrong with a GET request (refuse_upgrade does)."""
        if self._refusal or self._upgrade_bytes:
            unsaid = f"{self._upgrade_bytes} bytes and no WebSocket upgrade (an HTTP client?)"
            self.close_reason = f"{UPGRADE_FAILED}: {self._refusal or unsaid}"

    def server_listener(self, request: WSUpgradeRequest) -> Any:
        """picows' listener factory, server side: check ``X-Real-IP`` and upgrade."""
        return real_ip_listener(self, request, self._options)

    def client_listener(self) -> PicowsSocket:
        return self  # picows' listener factory, client side

    async def dial(self, protocol: PicowsProtocol, host: str, port: int, ssl: bool | None) -> None:
        """Connect to ``host`` and ``port`` and wait for the upgrade, within
        ``open_timeout``. Errors name the URL it dials.

        Raises:
            DriverError: If the connection fails, or times out (:func:`dial_timed_out`)."""
        url, timeout, connected = self.peer, self._options.open_timeout, False
        try:
            async with asyncio.timeout(timeout):
                await self._loop.create_connection(lambda: protocol, host, port, ssl=ssl)
                connected = True
                await protocol.wait_until_handshake_complete()
        except TimeoutError:
            self.abort()
            raise dial_timed_out(url, timeout, connected=connected) from None
        except OSError as exc:
            raise connect_error(url, exc, ssl=ssl) from exc
        except WSError as exc:
            raise DriverError(f"can't connect to {url}: {exc}") from exc
        except asyncio.CancelledError:
            self.abort()
            raise
        if not self._opened:
            raise DriverError(f"can't connect to {url}: connection closed during handshake")

    # Internals

    def _receive(self, data: bytes | str) -> None:
        if self._close_sent or self._aborted:
            return  # drop what the peer sent after our close frame, or once we aborted
        if self._paused_reading or self._turned or self._held:
            self._held.append(data)
        else:
            self._deliver(data)
            self._turned = perf_counter() > self._turn_end

    def _receive_fragment(self, frame: WSFrame) -> None:
        kind = frame.msg_type
        continued = kind is WSMsgType.CONTINUATION
        if continued != bool(self._fragments):
            what = "continuation without a message" if continued else "interleaved message"
            self._fail(CloseCode.PROTOCOL_ERROR, f"protocol error: {what}")
            return
        if not continued:
            self._fragment_text = kind is WSMsgType.TEXT
        self._fragments.append(frame.get_payload_as_bytes())
        size = sum(map(len, self._fragments))
        limit = self._options.max_message_size
        if limit is not None and size > limit:
            self._fail(CloseCode.MESSAGE_TOO_BIG, f"{size} bytes exceeds limit of {limit} bytes")
            return
        if not frame.fin:
            return
        data = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        self._fragments, self._frame_started = [], None  # the next message: its own deadline
        if not self._fragment_text:
            self._receive(data)
            return
        try:
            self._receive(data.decode())
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")

    def _close_received(self, ws: WSTransport) -> None:
        self._run_before_out()  # answers to what came before the close go before ours
        self._open = False
        if not self._close_sent and ws.close_handshake.sent is None:
            received = ws.close_handshake.recv
            code = received.code.value if received is not None else 0
            reason = (received.reason if received is not None else "") or ""
            self._write_out()
            self._close_sent = True  # nothing more reaches the listener
            ws.send_close(WSCloseCode(code), reason.encode())
        if self.inbound:
            ws.disconnect()  # the server closes the TCP connection first (RFC 6455 §7.1.1)
        else:
            self._set_close_timer()

    def _send_close(self, code: int, reason: str) -> None:
        self._write_close(code, reason)
        self._set_close_timer()

    def _write_close(self, code: int, reason: str) -> None:
        """What is queued, then the close frame; nothing more is sent after it."""
        ws = self._ws
        assert ws is not None
        self._run_before_out()  # while it still takes writes
        self._open = False
        self._write_out()
        self._close_sent = True
        ws.send_close(WSCloseCode(code), fit_reason(reason).encode())

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection for a peer's error: close frame, then TCP close."""
        message = f"message too big: {reason}" if code == CloseCode.MESSAGE_TOO_BIG else reason
        self._error = DriverError(message)
        self._fragments = []
        self._write_close(code, reason)
        assert self._ws is not None
        self._ws.disconnect()

    def _picows_error(self, exc: Exception | None) -> DriverError | None:
        """The error picows failed the connection for (it sent a close frame that this
        driver didn't), or the transport's own, or the peer's dropping it, if any."""
        ws = self._ws
        handshake = ws.close_handshake if ws is not None else None
        sent = handshake.sent if handshake else None
        if sent is not None and not self._close_sent:
            reason = sent.reason or ""
            if sent.code.value == CloseCode.MESSAGE_TOO_BIG:
                match = _TOO_BIG.search(reason)
                if match:
                    reason = f"{match[1]} bytes exceeds limit of {match[2]} bytes"
                return DriverError(f"message too big: {reason}")
            return DriverError(reason or f"protocol error (close code {sent.code.value})")
        if handshake is not None and handshake.recv is not None:
            return None  # the peer closed: how our answer fared is no news (as tcp)
        return lost_error(exc)

    def _set_close_code(self) -> None:
        ws = self._ws
        handshake = ws.close_handshake if ws is not None else None
        recv, sent = (handshake.recv, handshake.sent) if handshake is not None else (None, None)
        if recv is not None:
            self.close_code = recv.code.value or _NO_STATUS_RCVD
            self.close_reason = recv.reason or ""
        elif sent is not None and not self._aborted:
            # We failed the connection (e.g. message too big) and it ended before the
            # peer's answer, or the peer dropped it.
            self.close_code, self.close_reason = sent.code.value, sent.reason or ""
        else:
            self._ended_abnormally(None if sent is None else (sent.code.value, sent.reason or ""))

    def _send_out(self, out: list[bytes], size: int) -> None:
        """One message alone through picows, several framed here and written at once
        (one system call, not one each)."""
        ws, tcp = self._ws, self._tcp
        if ws is None or tcp is None or ws.is_close_frame_sent or tcp.is_closing():
            return
        if len(out) == 1:
            ws.send(WSMsgType.BINARY, out[0])
            limit = self._options.write_limit
            if not self.write_paused and tcp.get_write_buffer_size() > limit:
                # picows sends a server's message over 8 KiB with writelines(), which
                # paused no protocol before CPython 3.12.9 and 3.13.2 (gh-127655): on
                # 3.12.1 drain() never waited, however much the peer left unread. Setting
                # the limits checks the buffer, and pauses us as write() would have.
                tcp.set_write_buffer_limits(high=limit)
        else:
            tcp.write(binary_frames(out, masked=not self.inbound))

    def _has_held(self) -> bool:
        return bool(self._held)

    def _held_description(self) -> str:
        return f"{len(self._held)} message(s)"

    def _deliver_held(self) -> None:
        held, turn_end = self._held, perf_counter() + self._turn
        while held and not self._paused_reading:
            if self._close_sent or self._aborted:  # we closed: drop the rest, as _receive
                held.clear()
                break
            self._deliver(held.popleft())
            if held and perf_counter() > turn_end:
                self._next_turn()
                return
        if not held and self._held_close is not None:
            ws, self._held_close = self._held_close, None
            if self._end is None:  # else the connection ended: nothing to answer on
                self._close_received(ws)
        if not held:
            self._end_now()  # if the connection ended meanwhile: nothing is held now
        if not self._paused_reading:
            self._resume_transport()

    def _resume_transport(self) -> None:
        tcp = self._tcp
        if tcp is not None and not tcp.is_reading() and not tcp.is_closing():
            if not self._flooded:
                tcp.resume_reading()

    def _stop_reading(self) -> None:
        if self._tcp is not None and self._tcp.is_reading():
            self._tcp.pause_reading()

    def _set_close_timer(self) -> None:
        if self._timer is None and not self._lost_waiter.done():
            self._timer = self._loop.call_later(self._options.close_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        logger.debug("! closing handshake with %s timed out", self.peer)
        self.abort()


class PicowsDriver(Driver):
    """
    WebSocket (``ws://``, ``wss://``) driver on ``picows``; needs ``trustp2p[fast]``.

    The same contract as :class:`~trustp2p.drivers.ws.WsDriver`: a message over
    ``max_message_size`` closes the connection with code 1009.

    """

    scheme = "ws"

    async def listen(self, host: str, port: int, listener: Listener) -> Listening:
        options = self.options

        def factory() -> PicowsProtocol:
            socket = PicowsSocket(listener=listener, options=options, inbound=True)
            return PicowsProtocol(socket, None, "/", socket.server_listener)

        server, address = await serve(
            factory, host, port, accept_retry_max=options.accept_retry_max
        )
        listening = ServerListening(server, f"ws://{address}")
        listener.on_start(listening)
        return listening

    async def connect(self, url: str, listener: Listener) -> Socket:
        try:
            uri = parse_uri(url)
        except (InvalidURI, ValueError) as exc:  # parse_uri() raises both
            raise DriverError(f"invalid WebSocket URL {url!r}: {exc}") from exc
        socket = PicowsSocket(listener=listener, options=self.options, inbound=False, peer=url)
        host_port = format_address(uri.host, uri.port)
        protocol = PicowsProtocol(socket, host_port, uri.resource_name, socket.client_listener)
        await socket.dial(protocol, uri.host, uri.port, ssl=True if uri.secure else None)
        return socket
