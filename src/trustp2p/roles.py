"""
The two roles of a node: the server (peers that dialled us) and the client (peers we
dial). Each role sees its own connections and offers the deliver API on them.

"""

from __future__ import annotations

__all__ = ["BroadcastResult", "ClientRole", "Role", "ServerRole"]

import asyncio
import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from .drivers.base import Socket
from .exceptions import DriverError
from .protocol.backoff import backoff
from .protocol.deliver import ConnId
from .protocol.handshake import VERSION_EVENT
from .protocol.package import Body, PackageType, build_package

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger("trustp2p.node")

BroadcastResult = dict[Socket, Body | Exception | None]
"""Per peer: ``None`` (talk sent), the response body (request answered), or the error."""


class Role:
    """What a node does on one side of its connections. Get it as ``node.server`` or
    ``node.client``."""

    inbound: bool

    def __init__(self, node: Node) -> None:
        self.node = node
        self._sockets: dict[ConnId, Socket] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def sockets(self) -> list[Socket]:
        """The open connections of this role, oldest first."""
        return list(self._sockets.values())

    async def wait_connected(self, count: int = 1) -> None:
        """Wait until this role has at least ``count`` open connections."""
        if len(self._sockets) >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        try:
            await future
        finally:
            self._waiters.remove((count, future))

    async def request(
        self,
        socket: Socket,
        event: str,
        body: Body,
        *,
        type: PackageType = PackageType.REQUEST,
        reroute: bool = False,
        timeout: float | None = None,
    ) -> Body:
        """
        Send a request and return the body of its response.

        Identical requests (same type, event and body) to the same peer while one is
        pending go on the wire once; every caller gets the response.

        Args:
            socket: The peer to ask.
            event: The event name.
            body: The request body, a JSON object.
            type: ``REQUEST`` or ``HEARTBEAT_PING``.
            reroute: Client side only: when no response arrives within
                ``stalled_timeout``, or the connection is lost, send the request to the
                next connected server not yet tried; the first response wins.
            timeout: Seconds to wait; defaults to ``response_timeout``.

        Returns:
            The response body. A peer that can't handle the request answers
            ``{"error": "..."}``; that is returned too.

        Raises:
            RequestTimeout: If no response arrives within the timeout.
            ConnectionClosed: If the connection is closed or lost before a response
                arrives (and, when rerouting, no other server is connected).
            ValueError: If ``type`` is not a request type, or ``reroute`` is used on the
                server role.
            TypeError: If ``body`` is not a JSON-serializable dict.

        """
        if reroute and self.inbound:
            raise ValueError("reroute is only available on the client role")
        return await self.node._request(
            socket, event, body, type=type, reroute=reroute, timeout=timeout
        )

    async def send_response(
        self,
        socket: Socket,
        event: str,
        body: Body,
        tag: str,
        *,
        type: PackageType = PackageType.RESPONSE,
    ) -> None:
        """
        Answer a request explicitly, with its tag.

        Raises:
            ConnectionClosed: If the connection is closed.

        """
        await self.node._send(
            socket, build_package(type, event, body, tag=tag, alt=self.node.options.alt)
        )

    async def send_talk(self, socket: Socket, subject: str, body: Body) -> None:
        """
        Send a TALK: a message that expects no answer.

        Raises:
            ConnectionClosed: If the connection is closed.

        """
        await self.node._send(
            socket, build_package(PackageType.TALK, subject, body, alt=self.node.options.alt)
        )

    async def send_error(self, socket: Socket, error: str) -> None:
        """Send the TALK ``error`` with body ``{"error": error}``."""
        await self.send_talk(socket, "error", {"error": error})

    async def send_info(self, socket: Socket, info: Body) -> None:
        """Send the TALK ``info`` with ``info`` as body."""
        await self.send_talk(socket, "info", info)

    async def send_result(self, socket: Socket, result: Body) -> None:
        """Send the TALK ``result`` with ``result`` as body."""
        await self.send_talk(socket, "result", result)

    async def send_version(self, socket: Socket) -> None:
        """Send our version talk (the node does this itself when a connection opens)."""
        await self.send_talk(socket, VERSION_EVENT, self.node.version_body)

    async def broadcast(
        self,
        event: str,
        body: Body,
        *,
        sockets: Iterable[Socket] | None = None,
        type: PackageType = PackageType.TALK,
        timeout: float | None = None,
    ) -> BroadcastResult:
        """
        Send one package to many peers: all of this role's peers by default.

        With ``type=PackageType.TALK`` it sends a talk; with ``REQUEST`` it sends a
        request to each peer concurrently and collects the responses. It never raises
        because of one peer: each peer's outcome is in the result.

        Returns:
            Per socket: ``None`` when the talk was sent, the response body of a request,
            or the exception that peer met (e.g. :exc:`ConnectionClosed`).

        """
        targets = list(self._sockets.values() if sockets is None else sockets)
        results: BroadcastResult = {}
        if type is PackageType.TALK:
            package = build_package(type, event, body, alt=self.node.options.alt)
            for socket in targets:
                try:
                    await self.node._send(socket, package)
                except Exception as exc:
                    results[socket] = exc
                else:
                    results[socket] = None
            return results
        outcomes = await asyncio.gather(
            *(self.node._request(s, event, body, type=type, timeout=timeout) for s in targets),
            return_exceptions=True,
        )
        for socket, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # CancelledError and friends
            results[socket] = outcome
        return results

    # Bookkeeping, called by the node.

    def _add(self, socket: Socket) -> None:
        self._sockets[socket.id] = socket
        count = len(self._sockets)
        for wanted, future in self._waiters:
            if count >= wanted and not future.done():
                future.set_result(None)

    def _remove(self, socket: Socket) -> None:
        self._sockets.pop(socket.id, None)


class ServerRole(Role):
    """The server side of a node: the peers that connected to us."""

    inbound = True

    @property
    def url(self) -> str | None:
        """The URL peers dial to reach this node, once it listens."""
        listening = self.node._listening
        return listening.url if listening is not None else None


class ClientRole(Role):
    """
    The client side of a node: the servers we dial.

    The client keeps one connection per URL. When a dial fails or a connection drops, it
    dials again after a delay that grows from ``reconnect_initial`` to ``reconnect_max``
    with jitter.

    """

    inbound = False

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._by_url: dict[str, Socket] = {}

    @property
    def urls(self) -> list[str]:
        """The URLs this client dials."""
        return list(self._dialers)

    def socket_for(self, url: str) -> Socket | None:
        """The open connection to ``url``, if any."""
        return self._by_url.get(url)

    def connect(self, url: str) -> None:
        """
        Start dialling ``url`` and keep connected to it; does nothing if already done.

        Raises:
            DriverError: If no driver handles the URL's scheme.

        """
        if url in self._dialers:
            return
        self.node._driver_for_url(url)  # fail now on an unknown scheme
        self._dialers[url] = asyncio.create_task(self._dial_forever(url), name=f"dial {url}")

    async def disconnect(self, url: str) -> None:
        """Stop dialling ``url`` and close its connection, if any."""
        task = self._dialers.pop(url, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        socket = self._by_url.pop(url, None)
        if socket is not None:
            await socket.close(1000, "disconnected")

    def find_next_server(self, excluding: Collection[Socket | ConnId] = ()) -> Socket | None:
        """
        The first connected server not in ``excluding``, for rerouting a request.

        The original's ``findNextServer`` returned the very socket it was given, so
        requests never actually rerouted.

        """
        for socket in self._sockets.values():
            if socket.closed or socket in excluding or socket.id in excluding:
                continue
            return socket
        return None

    async def _stop(self) -> None:
        tasks = list(self._dialers.values())
        self._dialers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _dial_forever(self, url: str) -> None:
        options = self.node.options

        def delays() -> Iterable[float]:
            return backoff(
                options.reconnect_initial,
                options.reconnect_max,
                options.reconnect_factor,
                options.reconnect_jitter,
            )

        loop = asyncio.get_running_loop()
        retry = iter(delays())
        while True:
            try:
                socket = await self.node._driver_for_url(url).connect(url, self.node)
            except DriverError as exc:
                delay = next(retry)
                logger.info("! %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            opened = loop.time()
            self._by_url[url] = socket
            try:
                await socket.wait_closed()
            finally:
                if self._by_url.get(url) is socket:
                    del self._by_url[url]
            delay = next(retry)
            if loop.time() - opened >= delay:
                # It stayed up a while: start over from the shortest delay.
                retry = iter(delays())
                delay = next(retry)
            logger.info(
                "= connection to %s closed (%s %s); redialling in %.1f s",
                url,
                socket.close_code,
                socket.close_reason or "-",
                delay,
            )
            await asyncio.sleep(delay)
