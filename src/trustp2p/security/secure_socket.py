"""
The secure socket: a connection after the Noise handshake, its packages encrypted.

:class:`~trustp2p.security.channel.SecureLayer` runs the handshake and hands the node a
:class:`SecureSocket`; this module is the socket, which seals what is written (in
batches where the handshake agreed on them) and opens what arrives.

"""

from __future__ import annotations

__all__ = ["SecureSocket", "with_peer"]

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..drivers.base import CloseCode, Listener, Socket, fit_reason
from ..exceptions import ChannelError, ConnectionClosed, ProtocolError
from ..identity import PeerId
from .noise import MAX_NOISE_MESSAGE, NoiseTransport

if TYPE_CHECKING:
    from ..protocol.path import PathView

# The channel's logger: the socket's records keep the name they had inside channel.py.
logger = logging.getLogger("trustp2p.security.channel")


_E = TypeVar("_E", bound=ProtocolError)


class SecureSocket(Socket):
    """
    A connection after the secure handshake: packages in and out are encrypted.

    Where the handshake agreed on batches, the packages written in one iteration of the
    event loop are sealed together at its end, as few batch messages as hold them (one
    AEAD call and one frame for many), just before the raw socket sends what was
    written in that iteration (:meth:`Socket.write_soon`): in the same system call, no
    later than it would have sent them one by one (with the drivers that gather an
    iteration's writes; the memory driver seals them in the next iteration). A batch
    received while reading is paused keeps the packages not yet delivered until reading
    resumes, as the drivers keep the frames they read; once we close or abort, the rest
    of a batch is dropped, as the drivers drop what arrives after our close. The peer's
    close doesn't drop what it sent before it.

    Attributes:
        raw: The driver's socket underneath.
        peer_id: The peer's authenticated id.
        public_key: The peer's Ed25519 public key.
        static_key: The peer's Noise static public key: one per start of a node, so
            two connections of one peer id under two keys come from two processes.

    """

    def __init__(
        self,
        raw: Socket,
        transport: NoiseTransport,
        *,
        peer_id: PeerId,
        public_key: bytes,
        static_key: bytes,
        listener: Listener,
        max_size: int | None,
    ) -> None:
        super().__init__(listener=listener, inbound=raw.inbound, peer=raw.peer, host=raw.host)
        self.raw = raw
        self.peer_id = peer_id
        self.public_key = public_key
        self.static_key = static_key
        self._transport = transport
        self._max_size = max_size
        self._pending: list[bytes] | None = None  # written this iteration, to batch
        self._pending_size = 0
        self._paused = False
        self._held: deque[bytes] | None = None  # received in a batch, while paused
        self._closing = False  # we closed or aborted: deliver no more
        # The raw connection's end, waiting for the packages held (end_after_held()).
        self._end: tuple[Callable[[], None], asyncio.TimerHandle] | None = None
        self._ended: asyncio.Future[None] = self._loop.create_future()  # on_close forwarded
        self._errors: list[Callable[[], None]] = []  # the raw's, behind the held packages

    @property
    def last_seen(self) -> float:
        """When bytes last arrived on the raw connection: every Noise message of a
        package in progress counts, as any read does."""
        return self.raw.last_seen

    @last_seen.setter
    def last_seen(self, value: float) -> None:
        pass  # the raw socket keeps it

    @property
    def closed(self) -> bool:
        return self.raw.closed

    @property
    def close_code(self) -> int | None:
        """The raw connection's, once closed."""
        return self.raw.close_code

    @close_code.setter
    def close_code(self, value: int | None) -> None:
        pass  # the raw socket keeps it

    @property
    def close_reason(self) -> str:
        """The raw connection's, once closed."""
        return self.raw.close_reason

    @close_reason.setter
    def close_reason(self, value: str) -> None:
        pass  # the raw socket keeps it

    def bytes_in_flight(self) -> int:
        return self.raw.bytes_in_flight() + self._pending_size

    def path_view(self) -> PathView | None:
        return self.raw.path_view()

    @property
    def write_paused(self) -> bool:
        return self.raw.write_paused

    @property
    def write_buffer_size(self) -> int:
        return self.raw.write_buffer_size + self._pending_size

    def write(self, data: bytes) -> None:
        transport = self._transport
        raw = self.raw
        if transport.batches:
            if raw.closed:
                raise ConnectionClosed(raw.close_code, raw.close_reason)
            if transport.exhausted:
                raise with_peer(raw, ChannelError("nonces exhausted: 2**64 - 1 messages sent"))
            if type(data) is not bytes:
                data = bytes(data)  # sealed later: don't let the caller change it
            pending = self._pending
            if pending is None:
                self._pending = [data]
                self._pending_size = len(data)
                raw.write_soon(self.flush)
            else:
                pending.append(data)
                self._pending_size += len(data)
                if self._pending_size >= MAX_NOISE_MESSAGE:
                    self.flush()  # a full batch: the peer can start on it
        else:
            try:
                messages = transport.seal(data)
            except ChannelError as exc:
                exc.peer = self.peer
                raise
            for message in messages:
                raw.write(message)  # raises ConnectionClosed once closed
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += len(data)

    def flush(self) -> None:
        """Seal the packages written so far and write them to the raw socket, which
        sends them with what else was written in this iteration."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._pending_size = 0
        raw = self.raw
        try:
            messages = self._transport.seal_all(pending)
        except ChannelError as exc:  # nonces ran out within the batch
            logger.error("! can't send to %s: %s", self.peer, exc)
            self._closing = True
            raw.close_soon(CloseCode.INTERNAL_ERROR, fit_reason(str(exc)))
            return
        try:
            for message in messages:
                raw.write(message)
        except ConnectionClosed:
            pass  # aborted or lost meanwhile: the raw socket drops what it holds too

    async def drain(self) -> None:
        await self.raw.drain()

    def close_soon(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        self.flush()  # what was written goes out before the close
        self._closing = True
        self.raw.close_soon(code, reason)
        self._end_now()  # if the raw connection ended already: we let go of what is held

    def abort(self) -> None:
        self._closing = True
        self._pending = None
        self._pending_size = 0
        self.raw.abort()
        self._end_now()

    def end_after_held(self, report: Callable[[], None], *, within: float) -> None:
        """
        The raw connection ended: call ``report`` now or, if packages of a batch are
        held by a pause, once :meth:`resume_reading` delivered them, as the drivers do
        with what they read (:class:`~trustp2p.drivers._stream.EndAfterHeld`). At once
        if we close or abort meanwhile; past ``within`` seconds, they are dropped with
        a WARNING. The :class:`SecureLayer` calls it.
        """
        report = functools.partial(self._report_end, report)
        if not self._held or self._closing:
            self._held = None
            self._report_errors()  # (any the held packages kept back)
            report()
            return
        timer = self._loop.call_later(within, self._held_too_long, within)
        self._end = (report, timer)

    def _report_end(self, report: Callable[[], None]) -> None:
        try:
            report()
        finally:
            if not self._ended.done():
                self._ended.set_result(None)

    def _end_now(self) -> None:
        end = self._end
        if end is not None:
            self._end = None
            end[1].cancel()
            self._held = None
            self._report_errors()
            end[0]()

    def _held_too_long(self, waited: float) -> None:
        end = self._end
        if end is None:
            return
        if self._held and not self._paused:  # just resumed: its _deliver_held() ends it
            self._end = (end[0], self._loop.call_later(waited, self._held_too_long, waited))
            return
        logger.warning(
            "! dropped %d package(s) from %s read before the connection ended: reading "
            "stayed paused %g s after it",
            len(self._held or ()),
            self.peer,
            waited,
        )
        self._end_now()

    def report_error(self, report: Callable[[], None]) -> None:
        """Report an error of the raw connection (``report`` it) after the packages of a
        batch held by a pause, which came before it; at once if none are held."""
        if self._held:
            self._errors.append(report)
        else:
            report()

    def _report_errors(self) -> None:
        errors, self._errors = self._errors, []
        for report in errors:
            report()

    async def wait_closed(self) -> None:
        await self.raw.wait_closed()
        await asyncio.shield(self._ended)

    def pause_reading(self) -> None:
        self._paused = True
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._held is None:
            self.raw.resume_reading()
        else:
            # Deliver what waits first, outside the caller's frame (as the drivers do):
            # the handler that resumed finishes, and its answers go out, before more come.
            self._loop.call_soon(self._deliver_held)
            # The raw socket resumes now: what it delivers next comes in a later callback,
            # behind these (or waits in _held); its timers see a reader that resumed.
            self.raw.resume_reading()

    def _deliver_held(self) -> None:
        held = self._held
        while held and not self._paused:
            if self._closing:  # we closed meanwhile: drop the rest, as drivers do
                held.clear()
                break
            self._deliver(held.popleft())
        if not held:
            self._held = None
            self._report_errors()  # of the raw connection, after what came before them
            self._end_now()  # if the raw connection ended meanwhile
        if not self._paused:
            self.raw.resume_reading()

    def feed_data(self, message: bytes | str) -> None:
        """
        Decrypt one Noise message from the raw socket; deliver a package once complete.

        The :class:`SecureLayer` calls it for each message the raw socket receives.

        Raises:
            ChannelError: If the message is a text frame or doesn't open (see
                :meth:`NoiseTransport.open`).

        """
        if isinstance(message, str):
            raise ChannelError("text frame on a secure connection")
        packages = self._transport.open(message, max_size=self._max_size)
        if self._held is not None:  # still paused: behind what waits
            self._held.extend(packages)
            return
        for i, data in enumerate(packages):
            if self._paused:  # a handler paused reading within a batch
                self._held = deque(packages[i:])
                return
            if i and self._closing:  # a handler closed the connection within a batch
                return  # the rest is dropped, as a driver drops what follows our close
            self._deliver(data)

    def _deliver(self, data: bytes | str) -> None:
        # As Socket._deliver, less the clock: the raw socket keeps last_seen.
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(data)
        try:
            self._listener.on_message(self, data)
        except Exception:  # a bug in the listener must not break the transport
            logger.error("! listener failed on a message from %s", self.peer, exc_info=True)


def with_peer(raw: Socket, error: _E) -> _E:
    """Name the connection's peer on a protocol error, and return it."""
    error.peer = raw.peer
    return error
