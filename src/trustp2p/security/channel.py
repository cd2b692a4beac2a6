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
from collections.abc import Callable

from ..drivers.base import CloseCode, Listener, Listening, Socket, accept_hook, fit_reason
from ..exceptions import (
    ChannelError,
    ConnectionClosed,
    ConnectionDropped,
    HandshakeClosed,
    HandshakeError,
    PackageError,
    SelfDialError,
    UsageError,
)
from ..identity import Identity, PeerId
from ..protocol.deliver import ConnId
from ..protocol.handshake import HANDSHAKE_MAGIC, PLAIN_PEER, SELF_DIAL
from ..protocol.package import decode
from .noise import NoiseHandshake, NoiseKey
from .secure_socket import SecureSocket, with_peer

logger = logging.getLogger(__name__)


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
            # After what a batch holds for a paused reader, as a driver would.
            report = functools.partial(self._listener.on_close, secure)
            secure.end_after_held(report, within=self._close_timeout)
            return
        handshake = self._handshakes.pop(raw.id, None)
        if handshake is not None:
            if handshake.timer is not None:
                handshake.timer.cancel()
            reason = raw.close_reason or f"code {raw.close_code}"
            error = HandshakeClosed(
                f"connection closed during handshake ({reason})",
                code=raw.close_code,
                reason=raw.close_reason,
            )
            self._failed(raw, with_peer(raw, error))
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
            # Plain: the original trustp2p's first frame is an empty text frame (a
            # tester: "text frame during the secure handshake" said nothing of it).
            raise HandshakeError(PLAIN_PEER)
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
        assert noise.remote_static_key is not None
        if noise.remote_peer_id == self._identity.peer_id:
            self._fail(raw, SelfDialError(SELF_DIAL))
            return
        secure = SecureSocket(
            raw,
            noise.transport(),
            peer_id=noise.remote_peer_id,
            public_key=noise.remote_public_key,
            static_key=noise.remote_static_key,
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
        self._failed(raw, with_peer(raw, exc))
        raw.close_soon(CloseCode.POLICY_VIOLATION, fit_reason(str(exc)))

    def _violation(self, raw: Socket, secure: SecureSocket, exc: ChannelError) -> None:
        self._listener.on_error(secure, with_peer(raw, exc))
        # Through the secure socket: what was written before goes out first.
        code = CloseCode.POLICY_VIOLATION if exc.tampering else CloseCode.MESSAGE_TOO_BIG
        secure.close_soon(code, fit_reason(str(exc)))


def _is_package(data: bytes) -> bool:
    try:
        decode(data)
    except PackageError:
        return False
    return True
