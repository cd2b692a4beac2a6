"""
The WebSocket driver, on the Sans-I/O layer of the ``websockets`` library.

``websockets`` parses and writes the protocol (handshake, frames, closing handshake,
UTF-8 checks, size limits); this module is the asyncio glue, in the way the websockets
guide "Integrate the Sans-I/O layer" describes. Running the Sans-I/O layer directly
rather than the library's asyncio connection lets each message go to the node from
``data_received`` without a task switch, and writes happen synchronously. One package
travels per binary frame; compression is off (``docs/original-wire-format.md``).

"""

from __future__ import annotations

__all__ = ["WsDriver", "WsListening", "WsSocket"]

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import (
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Side, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from ..exceptions import DriverError
from ..protocol.limits import TokenBucket, is_loopback
from ._deadline import FrameDeadline
from ._stream import ReceiveBuffer, ServerListening, StreamSocket, lost_error, serve
from ._upgrade import real_ip, upgrade_refusal
from ._wsframes import binary_frame_parts
from .base import (
    FRAME_PROGRESS,
    UPGRADE_FAILED,
    CloseCode,
    Driver,
    DriverOptions,
    Listener,
    Listening,
    Socket,
    turn_length,
)

logger = logging.getLogger(__name__)

_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY)


class _InfoAtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' server protocol logs "connection closed" at INFO for each connection;
    the node logs its closes itself, with the peer and the code: that line goes to DEBUG."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_SERVER_PROTOCOL_LOGGER = _InfoAtDebug(logging.getLogger("websockets.server"), {})


# The receive buffer of this thread's WebSocket connections; buffer_updated() hands
# websockets a view of what it read, which websockets copies into its own buffer. As
# large as asyncio's reads for a plain protocol: a large message in few reads.
_receive_buffer = ReceiveBuffer(2**18)
_SLICE = 2**16  # bytes of a read parsed before the frames' budget is checked


def _answer_hint(failed: BaseException | None) -> str:
    """What a dial's failed upgrade says of the server there (tester37 F7: a ``ws://``
    dial of an admin port said only "HTTP 200", of a ``tcp://`` server "did not receive
    a valid HTTP response"); tester39 F1: a node's refusal repeated within a moment,
    which it drops unanswered, read as a protocol mismatch)."""
    if isinstance(failed, InvalidStatus) and failed.response.status_code == 200:
        return " (an HTTP server, not a peer: is it a node's admin port?)"
    if isinstance(failed, InvalidMessage):
        if _sent(failed):
            return " (not HTTP: does it listen on tcp://?)"
        return (
            " (closed unanswered: a stopping or overloaded server, or a node refusing an"
            " address whose dials it has just refused, e.g. for connecting too often)"
        )
    return ""


def _sent(failed: BaseException | None) -> bool:
    """Whether a failed upgrade had bytes from the peer: not a TCP health check, which
    connects and closes (websockets says how many bytes came before the end of the
    stream: "stream ends after 0 bytes, before end of line")."""
    if failed is None:
        return False
    ended = failed.__cause__
    if not isinstance(ended, EOFError):
        return True
    return not str(ended.__cause__ or "").startswith("stream ends after 0 bytes")


class WsSocket(FrameDeadline, StreamSocket):
    """A WebSocket connection; also the asyncio protocol of its transport."""

    __slots__ = (
        "_accepted",
        "_close_on_open",
        "_closing",
        "_control_budget",
        "_flooded",
        "_fragment_text",
        "_fragments",
        "_frame_started",
        "_frame_timer",
        "_head",
        "_held",
        "_open_waiter",
        "_opened",
        "_protocol",
        "_refusal",
        "_request",
        "_turn",
    )
    _receive_buffer = _receive_buffer
    _logger = logger

    def __init__(
        self,
        *,
        listener: Listener,
        options: DriverOptions,
        inbound: bool,
        protocol: ServerProtocol | ClientProtocol,
        peer: str = "",
        request: Request | None = None,
    ) -> None:
        super().__init__(listener=listener, options=options, inbound=inbound, peer=peer)
        self._protocol = protocol
        self._request = request  # the handshake request to send, client side
        self._opened = False
        self._open_waiter: asyncio.Future[None] = self._loop.create_future()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closing = False  # we sent a close frame: drop what arrives after it
        self._frame_started: float | None = None  # see FrameDeadline
        self._frame_timer: asyncio.TimerHandle | None = None
        self._control_budget: TokenBucket | None = None  # see FrameDeadline
        self._flooded = False
        # An inbound connection's first bytes, until they show an upgrade may follow.
        self._head: bytes | None = b"" if inbound else None
        self._refusal = ""  # why they can't: the connection was closed at once
        # Frames read before a pause_reading(); made on the first (an empty deque per
        # idle connection was about 0.6 KiB).
        self._held: deque[Frame] | None = None
        self._accepted = False  # the listener heard on_accept: it hears on_close too
        # close_soon() before the upgrade (server side): sent right after the upgrade.
        self._close_on_open: tuple[int, str] | None = None
        self._turn = turn_length(options)  # see DriverOptions.read_turn

    # Socket API

    @property
    def closed(self) -> bool:
        return self._protocol.state is not State.OPEN

    def write(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.state is not State.OPEN:
            raise self._closed_exc()
        # The frame is written here, not by websockets: its header, and its data as it
        # is (masked, from a client), not copied into one piece (a large message is
        # then written without a copy, see _write_out), and a third of websockets'
        # cost for a small one. One final binary frame, as websockets would write: we
        # never fragment, and no extension is on.
        if type(data) is not bytes:
            data = bytes(data)  # it is sent later: don't let the caller change it
        frames = protocol.data_to_send()  # control frames queued before it go first
        frames += binary_frame_parts(data, masked=protocol.side is Side.CLIENT)
        self._queue(frames, len(data))

    def close_soon(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        state = self._protocol.state
        if state is State.OPEN:
            self._run_before_out()  # while it still takes writes: they go before the close
            self._closing = True
            self._protocol.send_close(code, reason)
            self._flush()
            self._set_close_timer()
        elif state is State.CONNECTING:
            if self.inbound and not self._aborted:
                # Finish the upgrade to deliver the code and reason: a client that can't
                # be served learns why (within open_timeout, else it is dropped).
                if self._close_on_open is None:
                    self._close_on_open = (code, reason)
            else:
                self.abort()
        else:  # the peer closed, or the connection ended: deliver no more of what is held
            self._closing = True
            self._end_now()

    def pause_reading(self) -> None:
        self._stop_frame_clock()
        super().pause_reading()

    def _stop_reading(self) -> None:
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def _resume_transport(self) -> None:
        if not self._flooded:
            super()._resume_transport()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._timer = self._loop.call_later(self._options.open_timeout, self._open_timed_out)
        if self.inbound:
            self._accepted = self._report_accept()
        if self._request is not None:
            assert isinstance(self._protocol, ClientProtocol)
            self._protocol.send_request(self._request)
            self._request = None
            self._flush()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_receive_buffer.view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.last_seen = now = self._loop.time()  # any bytes are life, a partial frame too
        if self._head is not None and not self._may_upgrade(data):
            return  # closed
        turn_end = perf_counter() + self._turn  # (DriverOptions.read_turn)
        if len(data) <= _SLICE or self._control_budget is None:
            self._read(data, now, turn_end)
        else:
            # In slices, once the peer sent frames that carry no package: a read of tiny
            # frames stops at the one past the budget, not 40,000 frames later (found by
            # an attacker: 0.9 s of parsing a read). Not before: slices cost a large
            # package's reads about 100 us a round trip of 256 KiB.
            view = memoryview(data)
            for start in range(0, len(data), _SLICE):
                if self._flooded:
                    break  # (reading stopped: what follows is dropped)
                self._read(view[start : start + _SLICE], now, turn_end)
        if self._held is not None and not self._paused_reading:
            self._next_turn()

    def _read(self, data: bytes | memoryview, now: float, turn_end: float) -> None:
        protocol = self._protocol
        # websockets copies what it gets (bytearray += data): a view does as well.
        protocol.receive_data(data)  # type: ignore[arg-type]
        events = protocol.events_received()
        # To a peer that doesn't read what we send, what websockets has to send now is
        # pongs (and, once we closed, an EOF): skipped, not buffered without bound (RFC
        # 6455 lets an endpoint skip pongs).
        self._flush(pongs=self.write_paused and (protocol.state is State.OPEN or self._closing))
        for event in events:
            if type(event) is Frame:
                if event.opcode in _DATA_OPCODES or event.opcode is Opcode.CONT:
                    if not event.fin and len(event.data) < FRAME_PROGRESS:
                        if not self._small_frame(now):  # a tiny fragment: as a ping
                            break  # (closing: what follows is dropped)
                    if self._paused_reading or self._held is not None:
                        if self._held is None:
                            self._held = deque()
                        self._held.append(event)  # (behind those a turn's end held)
                    else:
                        self._receive_frame(event)
                        # The rest waits for the next turn (the clock read if more follow).
                        if event is not events[-1] and perf_counter() > turn_end:
                            self._held = deque()
                elif event.opcode is not Opcode.CLOSE and not self._small_frame(now):
                    break
                elif self._fragments:  # a ping inside a message: no progress of it
                    self._control_frame_read(len(event.data), now)
            elif isinstance(event, Request):
                self._accept(event)
            elif isinstance(event, Response):
                self._handshake_done()
        if events and not self._fragments:
            self._frame_started = None  # _watch_frames(True, ...), inline: once a read
        elif self._opened and not self._paused_reading:
            # A frame in progress, or a fragmented message (see FrameDeadline).
            self._watch_frames(False, now, len(data))
        if self._timer is None and protocol.close_expected():
            self._set_close_timer()

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._protocol.events_received()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._opened and not self._closing and self._end_waits(exc):
            self._protocol.receive_eof()  # closed: write() raises
            self._connection_ended()  # drain() raises
            self._stop_frame_clock(cancel=True)
        else:
            self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        protocol = self._protocol
        protocol.receive_eof()  # idempotent; makes the state CLOSED
        self._connection_ended()
        self._stop_frame_clock(cancel=True)
        if protocol.close_rcvd is not None:
            self.close_code = protocol.close_rcvd.code
            self.close_reason = protocol.close_rcvd.reason
        elif protocol.close_sent is not None and not self._aborted:
            # We failed the connection (e.g. message too big): websockets discards
            # what follows, including the peer's answer, and the TCP connection ends.
            self.close_code = protocol.close_sent.code
            self.close_reason = protocol.close_sent.reason
        else:
            sent = protocol.close_sent
            self._ended_abnormally(None if sent is None else (sent.code, sent.reason))
            failed = protocol.handshake_exc
            if self.inbound and self._accepted and not self._opened:
                if self._refusal or _sent(failed):  # (the node says it)
                    self.close_reason = f"{UPGRADE_FAILED}: {self._refusal or failed}"
        if self._held is not None:
            self._held.clear()  # in place: a _deliver_held() under way stops
            self._held = None
        if not self._open_waiter.done():
            error = protocol.handshake_exc or exc
            reason = f": {error}" if error is not None else ""
            hint = "" if self.inbound else _answer_hint(error)
            self._open_waiter.set_exception(
                DriverError(f"connection closed during handshake{reason}{hint}")
            )
            # Nobody else awaits it on the server side.
            self._open_waiter.exception()
        if self._opened:
            # When we dropped it ourselves, the abrupt end is no news.
            parsed = protocol.parser_exc  # websockets' EOFError once the connection ends
            if isinstance(parsed, EOFError) and exc is not None:
                parsed = exc  # the system's reason (a reset) says more
            # Once the peer's close arrived, how its answer fared is no news (as tcp); a
            # frame that broke the protocol is news, even if the peer then ignored our
            # close and we aborted at the close timeout.
            broke = isinstance(parsed, (ProtocolError, PayloadTooBig))
            quiet = (self._aborted and not broke) or protocol.close_rcvd is not None
            error = None if quiet else parsed or exc
            if error is not None:
                self._report("on_error", self._describe_error(error))
        if self._opened or self._accepted:
            self._report("on_close")
        self._lost_waiter.set_result(None)

    # Internals

    async def _opening(self) -> None:
        await self._open_waiter

    def _may_upgrade(self, data: bytes | memoryview) -> bool:
        """Whether an inbound connection's first bytes may begin a WebSocket upgrade; if
        they can't, close it at once (websockets would wait for a line end: a tcp://
        frame without one was held until open_timeout)."""
        assert self._head is not None
        head = self._head + bytes(data[:4])
        refusal = upgrade_refusal(head)
        self._head = head if refusal is None and len(head) < 4 else None
        if refusal is not None and self._transport is not None:
            self._refusal = refusal
            self._transport.close()
        return refusal is None

    def _flush(self, *, pongs: bool = False) -> None:
        """Write what the protocol has to send now (handshake, control frames, EOF);
        ``pongs``: it is pongs, to skip, and maybe an EOF."""
        transport = self._transport
        assert transport is not None
        self._write_out()  # frames written before go first
        frames = self._protocol.data_to_send()
        if len(frames) > 1:  # a ping flood's pongs: one write (found by an attacker:
            # a write each, and asyncio's WARNING for each once the peer had reset)
            end = [frames.pop()] if not frames[-1] else []
            frames = [b"".join(frames), *end]
        for data in frames:
            if data:
                if not pongs and not transport.is_closing():
                    transport.write(data)
            elif transport.can_write_eof():
                self._eof_sent = True
                transport.write_eof()
            else:  # pragma: no cover - TLS
                transport.close()

    def _receive_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            data = b"".join(self._fragments)
            self._fragments, self._frame_started = [], None  # the next: its own deadline
            text = self._fragment_text
        elif not frame.fin:
            self._fragments = [bytes(frame.data)]
            self._fragment_text = frame.opcode is Opcode.TEXT
            return
        else:
            data = bytes(frame.data)
            text = frame.opcode is Opcode.TEXT
        if self._closing or self._aborted:
            return  # drop what the peer sent after our close frame, or once we aborted
        if not text:
            self._deliver(data)
            return
        try:
            message = data.decode()  # websockets' protocol doesn't check it
        except UnicodeDecodeError:
            reason = "invalid UTF-8 in a text message"
            self._report("on_error", DriverError(reason))
            self._closing = True  # what follows is dropped
            self._protocol.fail(CloseCode.INVALID_DATA, reason)
            self._flush()
            self._set_close_timer()
            return
        self._deliver(message)

    def _has_held(self) -> bool:
        return bool(self._held)

    def _held_description(self) -> str:
        return f"{len(self._held or ())} frame(s)"

    def _deliver_held(self) -> None:
        held = self._held
        turn_end = perf_counter() + self._turn
        while held and not self._paused_reading:
            self._receive_frame(held.popleft())
            if held and perf_counter() > turn_end:
                self._next_turn()
                return
        if not held:
            self._held = None
            self._end_now()  # if the connection ended meanwhile: nothing is held now
        if not self._paused_reading:
            self._resume_transport()

    def _accept(self, request: Request) -> None:
        protocol = self._protocol
        assert isinstance(protocol, ServerProtocol)
        response = protocol.accept(request)
        if response.status_code == 101 and self._options.trust_real_ip and is_loopback(self.host):
            real_ips = request.headers.get_all("X-Real-IP")
            if real_ips:
                try:
                    self.host = real_ip(real_ips)
                except ValueError:
                    response = protocol.reject(400, "Invalid X-Real-IP header.\n")
        protocol.send_response(response)
        # websockets' parser keeps the request for the connection's life (a local of its
        # generator); its headers are read: 2 KiB a peer, let go of them.
        request.headers.clear()
        self._flush()
        if response.status_code != 101:
            return
        if self._close_on_open is not None:
            self._close_after_upgrade(*self._close_on_open)
        else:
            self._handshake_done()

    def _close_after_upgrade(self, code: int, reason: str) -> None:
        """The listener closed this connection before its upgrade: close it now, without
        reporting it open."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closing = True
        self._protocol.send_close(code, reason)
        self._flush()
        self._set_close_timer()

    def _handshake_done(self) -> None:
        protocol = self._protocol
        if protocol.handshake_exc is not None or protocol.state is State.CONNECTING:
            # The server sent a bad response; connection_lost() reports it.
            self.abort()
            return
        # Open, or closing already: a server may close right after the upgrade (one
        # that can't take us says why); the close then completes as usual.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._opened = True
        self.last_seen = self._loop.time()
        if not self._open_waiter.done():  # connect() may have given up on it
            self._open_waiter.set_result(None)
        self._report("on_connection" if self.inbound else "on_open")

    def _close_timed_out(self) -> None:
        if self._held and not self._closing and self._transport is not None:
            # The peer's close came behind messages still held (a turn's end, a pause):
            # they are its, delivered before the end whatever the close's timing
            # (review93 M1): drop the connection, not them (EndAfterHeld).
            self._timer = None
            self._transport.abort()
            return
        super()._close_timed_out()

    def _open_timed_out(self) -> None:
        self._timer = None
        logger.debug("! handshake with %s timed out", self.peer)
        self.abort()

    def _describe_error(self, error: Exception) -> DriverError:
        if not isinstance(error, PayloadTooBig):
            return lost_error(error)  # (websockets' EOFError: "unexpected end of stream")
        exc = DriverError(f"message too big: {error}")
        exc.__cause__ = error
        return exc


class WsListening(ServerListening):
    """A WebSocket server listening for connections."""


class WsDriver(Driver):
    """
    WebSocket (``ws://``, ``wss://``) driver.

    The limits of :class:`DriverOptions` apply: a message over ``max_message_size``
    closes the connection with code 1009, as the WebSocket protocol prescribes (the
    frame can't be skipped without reading it).

    """

    scheme = "ws"

    async def listen(self, host: str, port: int, listener: Listener) -> Listening:
        options = self.options

        def factory() -> WsSocket:
            protocol = ServerProtocol(
                max_size=options.max_message_size, logger=_SERVER_PROTOCOL_LOGGER
            )
            return WsSocket(listener=listener, options=options, inbound=True, protocol=protocol)

        server, address = await serve(
            factory, host, port, accept_retry_max=options.accept_retry_max
        )
        listening = WsListening(server, f"ws://{address}")
        listener.on_start(listening)
        return listening

    async def connect(self, url: str, listener: Listener) -> Socket:
        try:
            uri = parse_uri(url)
        except (InvalidURI, ValueError) as exc:  # parse_uri() raises both
            raise DriverError(f"invalid WebSocket URL {url!r}: {exc}") from exc
        protocol = ClientProtocol(uri, max_size=self.options.max_message_size)
        request = protocol.connect()
        request.headers["User-Agent"] = "trustp2p"
        socket = WsSocket(
            listener=listener,
            options=self.options,
            inbound=False,
            protocol=protocol,
            peer=url,
            request=request,
        )
        await socket.dial(uri.host, uri.port, ssl=True if uri.secure else None)
        return socket
