"""
picows' protocol for :mod:`.ws_picows`: it tells its socket when the TCP connection
starts and ends and when bytes arrive, and keeps picows' own log at DEBUG.

"""

from __future__ import annotations

__all__ = ["PicowsProtocol", "real_ip_listener", "retrieve_failure"]

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from picows import (
    WSAutoPingStrategy,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..protocol.limits import is_loopback
from ._upgrade import real_ip, upgrade_refusal
from .base import DriverOptions

if TYPE_CHECKING:
    from .ws_picows import PicowsSocket

logger = logging.getLogger("trustp2p.drivers.ws_picows")

# picows' first read buffer per connection (16 KiB by default); it doubles when a read
# fills it, so a pipeline or a big message grows it, and idle peers cost little.
_READ_BUFFER = 4096
_NO_LIMIT = 2**62  # picows wants a number for its frame size limit


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows' log, at DEBUG: it logs each connection at INFO, and a peer's protocol
    error at ERROR; the driver reports both its own way."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.log(min(level, logging.DEBUG), msg, *args, **kwargs)


_picows_log = _QuietLog(logger, {})


def retrieve_failure(ws: WSTransport) -> None:
    """Take the exception picows keeps for ``wait_disconnected()`` when it failed an
    outbound connection (else asyncio logs it); the socket reports the failure itself."""
    waiting = ws.wait_disconnected()
    try:
        waiting.send(None)  # the connection is lost: the future is done
    except BaseException:  # StopIteration, or picows' error
        pass
    finally:
        waiting.close()


class PicowsProtocol(WSProtocol):  # type: ignore[misc]
    """picows' protocol, telling its socket when the TCP connection starts and ends."""

    def __init__(
        self, socket: PicowsSocket, host_port: str | None, path: str, factory: object
    ) -> None:
        options = socket.driver_options
        limit = options.max_message_size
        super().__init__(
            host_port,
            path,
            not socket.inbound,
            factory,
            _picows_log,
            True,  # disconnect_on_exception; the socket catches them all
            options.open_timeout,
            False,  # enable_auto_ping: the node runs a heartbeat
            10,
            10,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: PicowsSocket answers, unless its peer doesn't read
            _NO_LIMIT if limit is None else limit,
            {"User-Agent": "trustp2p"} if not socket.inbound else None,
            _READ_BUFFER,
        )
        self.socket = socket
        self._loop_time = asyncio.get_running_loop().time
        # An inbound connection's first bytes, until they show an upgrade may follow.
        self._head: bytes | None = b"" if socket.inbound else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.socket.transport_made(cast(asyncio.Transport, transport), self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.socket.transport_lost(exc)

    def buffer_updated(self, nbytes: int) -> None:
        socket = self.socket
        socket.last_seen = now = self._loop_time()  # any bytes are life, a partial frame too
        if self._head is not None and not self._may_upgrade(nbytes):
            return  # closed
        before = socket.frames_read
        socket.start_turn()
        super().buffer_updated(nbytes)  # on_ws_frame() for each frame completed
        if socket.frames_read == before:
            socket.read_incomplete(now, nbytes)
        else:
            socket.read_complete(now, nbytes)

    def _may_upgrade(self, nbytes: int) -> bool:
        """Whether an inbound connection's first bytes may begin a WebSocket upgrade.
        If they can't, the socket closes the connection at once, with the reason the ws
        driver gives: picows waits for the end of an HTTP request until open_timeout
        (tester47 F1: a tcp:// dial's frame or a TLS ClientHello held for 10 s)."""
        # The bytes read went to the start of the buffer that get_buffer() gives.
        head = (self._head or b"") + bytes(self.get_buffer(-1)[: min(nbytes, 4)])
        refusal = upgrade_refusal(head)
        self._head = head if refusal is None and len(head) < 4 else None
        if refusal is not None:
            self.socket.refuse_upgrade(refusal)
        return refusal is None


def real_ip_listener(
    socket: PicowsSocket, request: WSUpgradeRequest, options: DriverOptions
) -> Any:
    """picows' listener factory, server side: take a loopback proxy's ``X-Real-IP``
    (``trust_real_ip``) as ``socket``'s host, and upgrade to ``socket``; refuse a
    header that is invalid or repeated."""
    if options.trust_real_ip and is_loopback(socket.host):
        real_ips = request.headers.getall("X-Real-IP", [])
        if real_ips:
            try:
                socket.host = real_ip(real_ips)
            except ValueError:
                response = WSUpgradeResponse.create_error_response(
                    400, b"Invalid X-Real-IP header.\n"
                )
                return WSUpgradeResponseWithListener(response, None)
    return socket
