"""
The secure channel over any driver: a Noise XX handshake, then encrypted packages.

:class:`SecureLayer` sits between a driver and the node. It is the driver's listener:
it passes each accepted raw connection on to the node at once (``on_accept``, so that
limits count it from its first byte), has the node admit or refuse it before any
cryptography, runs the handshake, and only then tells the node about the connection, as
a :class:`SecureSocket` that knows the peer's authenticated id. Nothing else reaches the
node, and so no thread, before the handshake completes.

The dialler speaks first: ``HANDSHAKE_MAGIC`` + Noise message 1. A plain node knows the
magic, a secure node a plain package: the two modes refuse each other with a reason.

A failed handshake is a :exc:`~trustp2p.exceptions.HandshakeError` (``SelfDialError``:
we dialled ourselves; ``HandshakeClosed``: the peer closed); a transport message that
breaks the channel afterwards is a ``ChannelError``. Both have the ``peer``.

"""

from __future__ import annotations

__all__ = ["SecureLayer", "SecureSocket"]

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from ..drivers.base import CloseCode, Listener, Listening, Socket, accept_hook, fit_reason
from ..exceptions import (
    ChannelError,
    ConnectionClosed,
    ConnectionDropped,
    HandshakeClosed,
    HandshakeError,
    PackageError,
    ProtocolError,
    SelfDialError,
    UsageError,
)
from ..identity import Identity, PeerId
from ..protocol.deliver import ConnId
from ..protocol.handshake import HANDSHAKE_MAGIC, PLAIN_PEER, SELF_DIAL
from ..protocol.package import decode
from .noise import MAX_NOISE_MESSAGE, NoiseHandshake, NoiseKey, NoiseTransport

logger = logging.getLogger(__name__)


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

    """

    def __init__(
        self,
        raw: Socket,
        transport: NoiseTransport,
        *,
        peer_id: PeerId,
        public_key: bytes,
        listener: Listener,
        max_size: int | None,
    ) -> None:
        super().__init__(listener=listener, inbound=raw.inbound, peer=raw.peer, host=raw.host)
        self.raw = raw
        self.peer_id = peer_id
        self.public_key = public_key
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

    def bytes_in_flight(self) -> int:
        return self.raw.bytes_in_flight() + self._pending_size

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
                raise _with_peer(raw, ChannelError("nonces exhausted: 2**64 - 1 messages sent"))
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


class _Handshake:
    __slots__ = ("noise", "raw", "timer")

    def __init__(
        self, raw: Socket, noise: NoiseHandshake, timer: asyncio.TimerHandle | None
    ) -> None:
        self.raw = raw
        self.noise = noise
        self.timer = timer


class SecureLayer:
    """
    The driver-side listener of a secure node.

    If ``listener`` is an :class:`~trustp2p.drivers.base.AcceptListener`, it hears
    ``on_accept`` for each inbound raw connection as the driver accepts it, and
    ``on_close`` for every inbound raw socket that closes before it is secure (for a
    secure one, ``on_close`` names the :class:`SecureSocket`).

    Args:
        listener: The node: it hears of connections once they are secure.
        identity: Our identity, proven in each handshake. The layer makes the node's
            Noise static key and signs it with ``identity`` once, for all handshakes.
        admit: Called for each inbound raw connection once the driver opened it, before
            any cryptography; returns ``None`` to go on, or ``(code, reason)`` to close
            it at once.
        failed: Called when a handshake fails, with the raw socket and the error (its
            ``peer`` set to the raw socket's).
        handshake_timeout: Seconds a handshake may take.
        close_timeout: How long the end of a connection waits for the packages of a
            batch held by a pause (:meth:`SecureSocket.end_after_held`), as the drivers
            wait for what they hold (the node's ``close_timeout``).
        time_inbound: Run that deadline on inbound handshakes too. A node passes
            ``False``: its own deadline, from TCP accept, covers them (it calls
            :meth:`fail` when it passes).
        max_package_size: Limit on a reassembled package, in bytes.
        noise_key: The node's Noise static key, signed by ``identity``, if made
            already; the layer makes one otherwise.

    """

    def __init__(
        self,
        listener: Listener,
        identity: Identity,
        *,
        admit: Callable[[Socket], tuple[int, str] | None],
        failed: Callable[[Socket, HandshakeError], None],
        handshake_timeout: float = 10.0,
        close_timeout: float = 10.0,
        time_inbound: bool = True,
        max_package_size: int | None = 2**20,
        noise_key: NoiseKey | None = None,
    ) -> None:
        self._listener = listener
        self._on_accept = accept_hook(listener)
        self._time_inbound = time_inbound
        self._identity = identity
        if noise_key is None:
            noise_key = NoiseKey(identity)  # once per node: its static key, signed
        elif noise_key.identity is not identity:
            raise UsageError("noise_key is signed by another identity")
        self._key = noise_key
        self._admit = admit
        self._failed = failed
        self._timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._max_size = max_package_size
        self._handshakes: dict[ConnId, _Handshake] = {}
        self._secure: dict[ConnId, SecureSocket] = {}
        self._raw: dict[ConnId, Socket] = {}  # every raw connection until it closes
        self._expected: dict[str, PeerId] = {}

    @property
    def handshaking(self) -> int:
        """Connections whose handshake is under way."""
        return len(self._handshakes)

    def close_all(self, code: int, reason: str) -> None:
        """Close the connections still in their handshake (the node is stopping)."""
        handshakes = list(self._handshakes.values())
        self._handshakes.clear()
        for handshake in handshakes:
            if handshake.timer is not None:
                handshake.timer.cancel()
            handshake.raw.close_soon(code, reason)

    def expect(self, url: str, peer_id: PeerId | None) -> None:
        """Require the peer dialled at ``url`` to prove ``peer_id`` (from ``/p2p/<id>``)."""
        if peer_id is None:
            self._expected.pop(url, None)
        else:
            self._expected[url] = peer_id

    # Listener

    def on_start(self, listening: Listening) -> None:
        self._listener.on_start(listening)

    @property
    def raw_sockets(self) -> list[Socket]:
        """Every connection not closed yet: refused, in handshake, or secure."""
        return list(self._raw.values())

    def on_accept(self, raw: Socket) -> None:
        self._raw[raw.id] = raw
        if self._on_accept is not None:
            self._on_accept(raw)

    def on_connection(self, raw: Socket) -> None:
        self._raw[raw.id] = raw
        refusal = self._admit(raw)
        if refusal is not None:
            raw.close_soon(*refusal)
            return
        self._begin(raw, NoiseHandshake(self._key, initiator=False))

    def on_open(self, raw: Socket) -> None:
        self._raw[raw.id] = raw
        noise = NoiseHandshake(
            self._key, initiator=True, expected_peer_id=self._expected.get(raw.peer)
        )
        self._begin(raw, noise)
        try:
            raw.write(HANDSHAKE_MAGIC + noise.write_message())
        except ConnectionClosed:
            pass

    def on_message(self, raw: Socket, data: bytes | str) -> None:
        secure = self._secure.get(raw.id)
        if secure is not None:
            try:
                secure.feed_data(data)
            except ChannelError as exc:
                self._violation(raw, secure, exc)
            return
        handshake = self._handshakes.get(raw.id)
        if handshake is None:
            return  # failed already; the connection is closing
        try:
            self._step(raw, handshake.noise, data)
        except HandshakeError as exc:
            self._fail(raw, exc)

    def on_error(self, raw: Socket, error: Exception) -> None:
        secure = self._secure.get(raw.id)
        if secure is not None:
            secure.report_error(functools.partial(self._listener.on_error, secure, error))
        elif raw.id in self._handshakes:
            logger.debug("! handshake with %s: %s", raw.peer, error)
            if not isinstance(error, ConnectionDropped):  # it broke a rule: an offence
                self._fail(raw, HandshakeError(f"handshake failed: {error}"))

    def on_close(self, raw: Socket) -> None:
        self._raw.pop(raw.id, None)
        secure = self._secure.pop(raw.id, None)
        if secure is not None:
            secure.close_code, secure.close_reason = raw.close_code, raw.close_reason
            # After what a batch holds for a paused reader, as a driver would.
            report = functools.partial(self._listener.on_close, secure)
            secure.end_after_held(report, within=self._close_timeout)
            return
        handshake = self._handshakes.pop(raw.id, None)
        if handshake is not None:
            if handshake.timer is not None:
                handshake.timer.cancel()
            reason = raw.close_reason or f"code {raw.close_code}"
            error = HandshakeClosed(f"connection closed during handshake ({reason})")
            self._failed(raw, _with_peer(raw, error))
        if raw.inbound and self._on_accept is not None:
            self._listener.on_close(raw)  # it counted the connection: it hears the end

    # Handshake

    def _begin(self, raw: Socket, noise: NoiseHandshake) -> None:
        timer = None
        if self._time_inbound or not raw.inbound:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._timeout, self._timed_out, raw)
        self._handshakes[raw.id] = _Handshake(raw, noise, timer)

    def _step(self, raw: Socket, noise: NoiseHandshake, data: bytes | str) -> None:
        if isinstance(data, str):
            raise HandshakeError("text frame during the secure handshake")
        if not noise.initiator and noise.step == 0:
            if not data.startswith(HANDSHAKE_MAGIC):
                raise HandshakeError(PLAIN_PEER if _is_package(data) else "invalid handshake")
            data = data[len(HANDSHAKE_MAGIC) :]
        try:
            try:
                noise.read_message(data)
            except HandshakeError:
                # A plain node answers our message 1 with a package, which can't be a
                # valid message 2: look for one only then, not in every message 2.
                if noise.initiator and noise.step == 1 and _is_package(data):
                    raise HandshakeError(PLAIN_PEER) from None
                raise
            if not noise.complete:
                raw.write(noise.write_message())
        except ConnectionClosed:
            return
        if noise.complete:
            self._complete(raw, noise)

    def _complete(self, raw: Socket, noise: NoiseHandshake) -> None:
        handshake = self._handshakes.pop(raw.id)
        if handshake.timer is not None:
            handshake.timer.cancel()
        assert noise.remote_peer_id is not None
        assert noise.remote_public_key is not None
        if noise.remote_peer_id == self._identity.peer_id:
            self._fail(raw, SelfDialError(SELF_DIAL))
            return
        secure = SecureSocket(
            raw,
            noise.transport(),
            peer_id=noise.remote_peer_id,
            public_key=noise.remote_public_key,
            listener=self._listener,
            max_size=self._max_size,
        )
        self._secure[raw.id] = secure
        if raw.inbound:
            self._listener.on_connection(secure)
        else:
            self._listener.on_open(secure)

    def _timed_out(self, raw: Socket) -> None:
        self.fail(raw, HandshakeError(f"handshake not complete within {self._timeout:g} s"))

    def fail(self, raw: Socket, error: HandshakeError) -> bool:
        """
        Fail the handshake under way on ``raw`` (its deadline passed, say): report
        ``error`` to ``failed`` and close with code 1008 and the error's text.

        Returns:
            Whether a handshake was under way on ``raw``; if not, nothing happens.

        """
        if raw.id not in self._handshakes:
            return False
        self._fail(raw, error)
        return True

    def _fail(self, raw: Socket, exc: HandshakeError) -> None:
        handshake = self._handshakes.pop(raw.id, None)
        if handshake is not None and handshake.timer is not None:
            handshake.timer.cancel()
        self._failed(raw, _with_peer(raw, exc))
        raw.close_soon(CloseCode.POLICY_VIOLATION, fit_reason(str(exc)))

    def _violation(self, raw: Socket, secure: SecureSocket, exc: ChannelError) -> None:
        self._listener.on_error(secure, _with_peer(raw, exc))
        # Through the secure socket: what was written before goes out first.
        code = CloseCode.POLICY_VIOLATION if exc.tampering else CloseCode.MESSAGE_TOO_BIG
        secure.close_soon(code, fit_reason(str(exc)))


def _with_peer(raw: Socket, error: _E) -> _E:
    """Name the connection's peer on a protocol error, and return it."""
    error.peer = raw.peer
    return error


def _is_package(data: bytes) -> bool:
    try:
        decode(data)
    except PackageError:
        return False
    return True
