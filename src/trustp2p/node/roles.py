"""
The two roles of a node: the server (peers that dialled us) and the client (peers we
dial). Each role sees its own connections and offers the deliver API on them.

"""

from __future__ import annotations

__all__ = ["BroadcastResult", "ClientRole", "Role", "ServerRole", "check_timeout"]

import asyncio
import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from ..drivers.base import Socket
from ..exceptions import NodeStateError, PeerIdMismatch
from ..protocol.deliver import ConnId
from ..protocol.handshake import VERSION_EVENT
from ..protocol.package import REQUEST_TYPES, Body, Package, PackageType, build_package
from ..protocol.urls import address_of, split_peer_url
from .dialer import Dialer

if TYPE_CHECKING:
    from .node import Node

_BROADCAST_TYPES = REQUEST_TYPES | {PackageType.TALK}

BroadcastResult = dict[Socket, Body | Exception | None]
"""
What :meth:`Role.broadcast` returns: each peer's outcome, keyed by its socket.

A plain ``dict`` (this name is an alias: ``help()`` shows dict's help). It has one key
per socket broadcast to (a socket given twice gets one package), in the order they were
given, or the role's connections at the call when ``sockets`` is ``None``; an empty
dict when there was none. Each value is:

- ``None``: a talk (``PackageType.TALK``) was written to that peer;
- the response body (a ``dict``): a request (``REQUEST`` or ``HEARTBEAT_PING``) was
  answered;
- the exception that peer's talk or request met, which ``broadcast()`` never raises:
  :exc:`~trustp2p.ConnectionClosed` (closed or lost), :exc:`~trustp2p.RequestTimeout`,
  :exc:`~trustp2p.RemoteError` (the peer answered ``{"error": ...}``),
  :exc:`~trustp2p.PackageTooLarge` (a request over ``max_package_size``, not sent), or
  whatever else :meth:`Role.request` raises for that socket.

Check a value with ``isinstance(outcome, Exception)`` before reading it as a body::

    results = await node.server.broadcast("status", {}, package_type=PackageType.REQUEST)
    answers = {s: r for s, r in results.items() if not isinstance(r, Exception)}

"""

logger = logging.getLogger(__name__)


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

    async def wait_connected(self, count: int = 1, *, timeout: float | None = None) -> None:
        """
        Wait until this role has at least ``count`` open connections (a peer that
        dialled this node too may keep its connection to us instead: that one is the
        server role's).

        Called before :meth:`~trustp2p.Node.start`, it waits for the start too.

        Raises:
            TimeoutError: If it hasn't within ``timeout`` seconds (None: wait as long as
                it takes; against a server that is down, for ever: found by a tester).
                A client's says why the last dials of up to three URLs failed.
            NodeStateError: If the node is stopping or stopped, at once, or stops while
                this waits (found by a tester: a waiter outlived the node, for ever).
            ValueError: If ``count`` or ``timeout`` is negative (or NaN).

        """
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        check_timeout(timeout)
        if len(self._sockets) >= count:
            return
        self.check_waitable()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            have = len(self._sockets)
            raise TimeoutError(
                f"{count} connection(s) not open within {timeout} s (this role has {have})"
                + self._why_not()
            ) from None
        finally:
            self._waiters.remove((count, future))

    def _why_not(self) -> str:
        """What a wait's TimeoutError adds: why connections it waited for didn't come."""
        return ""

    async def request(
        self,
        socket: Socket,
        event: str,
        body: Body,
        *,
        package_type: PackageType = PackageType.REQUEST,
        reroute: bool = False,
        timeout: float | None = None,
        payload: bytes | None = None,
    ) -> Body:
        """
        Send a request and return the body of its response.

        Identical requests (same type, event and body, no payload) to one peer while one
        is pending go on the wire once; every caller gets its answer (rerouted if one asked).

        Args:
            socket: The peer to ask.
            event: The event name.
            body: The request body, a JSON object.
            package_type: ``REQUEST`` or ``HEARTBEAT_PING``.
            reroute: Client side only: when no response comes in ``stalled_timeout``,
                or the connection is lost (before the call too), or the server has no
                handler for it, send it to the next connected server not yet tried;
                the first response wins (a slow handler may run on several servers).
            timeout: Seconds to wait, for room to send too; ``response_timeout`` by default.
            payload: Binary data beside the body (wire field 7), for a trustp2p peer
                (the original ignores it): the handler reads ``package.payload``. To get
                the response's payload, use :meth:`request_package`.

        Returns:
            The response body.

        Raises:
            RemoteError: If the peer answered with an error (``{"error": ...}``); the
                raw answer is ``exc.body``.
            RequestTimeout: If no response arrives within the timeout.
            ConnectionClosed: If the connection is lost before the response (and, when
                rerouting, no other server is connected).
            ValueError: If ``package_type`` is not a request type, or ``reroute`` is on
                on the server role.
            TypeError: If ``body`` is not a JSON-serializable dict, or ``socket`` or
                ``timeout`` of the wrong type.

        """
        if reroute and self.inbound:
            raise ValueError("reroute is only available on the client role")
        node = self.node
        socket = node.check_open(socket, reroute=reroute)  # Node.request's, a frame fewer
        response = await node.requests.request_package(
            socket,
            event,
            body,
            package_type=package_type,
            reroute=reroute,
            timeout=timeout,
            payload=payload,
        )
        return response.body

    async def request_package(
        self,
        socket: Socket,
        event: str,
        body: Body,
        *,
        package_type: PackageType = PackageType.REQUEST,
        reroute: bool = False,
        timeout: float | None = None,
        payload: bytes | None = None,
    ) -> Package:
        """
        Send a request and return its whole response: body, payload and the rest.

        The same as :meth:`request` (same arguments and errors) but for what it returns.
        A method of its own rather than a flag on :meth:`request`: each returns one type,
        which the type checker sees, and :meth:`request` stays as it was.

        Returns:
            The response package; its ``payload`` is ``b""`` when the peer sent none.

        """
        if reroute and self.inbound:
            raise ValueError("reroute is only available on the client role")
        node = self.node
        socket = node.check_open(socket, reroute=reroute)
        return await node.requests.request_package(
            socket,
            event,
            body,
            package_type=package_type,
            reroute=reroute,
            timeout=timeout,
            payload=payload,
        )

    async def send_response(
        self,
        socket: Socket,
        event: str,
        body: Body,
        tag: str,
        *,
        package_type: PackageType = PackageType.RESPONSE,
        payload: bytes | None = None,
    ) -> None:
        """
        Answer a request explicitly, with its tag, and ``payload`` beside the body if
        given.

        Raises:
            ConnectionClosed: If the connection is closed.

        """
        package = build_package(
            package_type,
            event,
            body,
            tag=tag,
            alt=self.node.options.alt,
            payload=payload or b"",
        )
        explicit = self.node.handlers.explicit
        if explicit.add(socket.id, tag) and explicit.first_double("send_response()", event):
            logger.warning(
                "! request %r (tag %s) answered twice with send_response(): the peer keeps"
                " the first and counts the others as unmatched (said once)",
                event,
                tag,
            )
        await self.node.send(socket, package)

    async def send_talk(
        self, socket: Socket, subject: str, body: Body, *, payload: bytes | None = None
    ) -> None:
        """
        Send a TALK: a message that expects no answer; ``payload``, if given, goes beside
        its body (a trustp2p peer's handler reads it as ``package.payload``).

        Raises:
            ConnectionClosed: If the connection is closed.
            PackageTooLarge: If the talk is larger than the peer takes (its
                introduction says; a secure peer's is waited for: a tester's talk was
                sent, and the peer closed the connection, 1009).

        """
        package = build_package(
            PackageType.TALK,
            subject,
            body,
            alt=self.node.options.alt,
            payload=payload or b"",
        )
        await self.node.requests.fit(socket, package)
        await self.node.send(socket, package)

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
        await self.send_talk(socket, VERSION_EVENT, self.node.clock_watch.version_body())

    async def broadcast(
        self,
        event: str,
        body: Body,
        *,
        sockets: Iterable[Socket] | None = None,
        package_type: PackageType = PackageType.TALK,
        timeout: float | None = None,
        payload: bytes | None = None,
    ) -> BroadcastResult:
        """
        Send one package to many peers: all of this role's peers by default. ``payload``,
        if given, goes beside the body to every peer (the results hold the response
        bodies, not their payloads).

        With ``package_type=PackageType.TALK`` it sends a talk to each peer; with
        ``REQUEST`` it sends a request to each peer and collects the responses. Peers are
        served concurrently: a peer whose write buffer is full is waited for (the
        broadcast returns when every talk was written, or a peer that reads nothing is
        disconnected after ``send_stall_timeout``) while the others get theirs at once.
        It never raises because of one peer: each peer's outcome is in the result.

        Returns:
            A :data:`BroadcastResult`, a dict with one entry per socket: ``None`` when
            the talk was written, the response body when the request was answered, or
            the exception that peer met (:exc:`ConnectionClosed`, :exc:`RequestTimeout`,
            :exc:`RemoteError`...), never raised.

        Raises:
            ValueError: If ``package_type`` is neither ``TALK`` nor a request type.
            NodeStateError: If the node isn't running (an empty result would hide it).
        """
        if package_type not in _BROADCAST_TYPES:
            raise ValueError(f"broadcast sends a TALK or a request type, not {package_type!r}")
        node = self.node
        if not node.running:
            raise NodeStateError(f"the node is {node.state.value}, not running")
        targets = list(dict.fromkeys(self._sockets.values() if sockets is None else sockets))
        results: BroadcastResult = {}
        data = payload or b""
        if package_type is PackageType.TALK:
            package = build_package(package_type, event, body, alt=node.options.alt, payload=data)
            outcomes: list[Body | BaseException | None] = await asyncio.gather(
                *(node.send(s, package) for s in targets), return_exceptions=True
            )
        else:
            outcomes = await asyncio.gather(
                *(
                    node.request(
                        s, event, body, package_type=package_type, timeout=timeout, payload=data
                    )
                    for s in targets
                ),
                return_exceptions=True,
            )
        for socket, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # CancelledError and friends
            results[socket] = outcome
        return results

    # Bookkeeping: the node reports its connections and its stop here.

    def check_waitable(self) -> None:
        """Raise :exc:`NodeStateError` if the node is stopping or stopped: nothing it
        waits for can come any more (before the start, it can)."""
        state = self.node.state.value
        if state in ("stopping", "stopped"):
            raise NodeStateError(f"the node is {state}, not running")

    def node_stopping(self) -> None:
        """The node began to stop: every waiter gets :exc:`NodeStateError`."""
        error = NodeStateError("the node is stopping, not running")
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)

    def connection_opened(self, socket: Socket) -> None:
        self._sockets[socket.id] = socket
        count = len(self._sockets)
        for wanted, future in self._waiters:
            if count >= wanted and not future.done():
                future.set_result(None)

    def connection_closed(self, socket: Socket) -> None:
        self._sockets.pop(socket.id, None)


class ServerRole(Role):
    """The server side of a node: the peers that connected to us."""

    inbound = True

    @property
    def url(self) -> str | None:
        """The URL peers dial to reach this node, once it listens."""
        return self.node.url


class ClientRole(Role):
    """
    The client side of a node: the servers we dial.

    URLs given to :meth:`connect` (and the node's ``peers``) are dialled for as long as
    the node runs: when a dial fails or a connection drops, the client dials again after
    a delay that grows from ``reconnect_initial`` to ``reconnect_max``, with jitter. A
    URL may end in ``/p2p/<peer-id>``: the peer there must prove that identity.

    Beyond those, the client keeps ``target_outbound`` connections, drawing on the peer
    store (filled by peer exchange): at most ``max_outbound_per_netgroup`` per /16
    (IPv4) or /32 (IPv6) network, loopback exempt; a URL that fails waits longer before
    it is tried again. One connection per URL and per peer: a peer already connected
    isn't dialled again, blocked peers never are. The rules are
    :class:`~trustp2p.protocol.outbound.OutboundPolicy`'s; :attr:`dialer` carries them out.

    """

    inbound = False

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.dialer = Dialer(node)
        self._by_url: dict[str, Socket] = {}  # by address (address_of)
        self._url_waiters: dict[str, list[asyncio.Future[Socket]]] = {}  # by address

    def _why_not(self) -> str:
        failures = [
            f"{url}: {reason}"
            for url in self.dialer.urls
            if self.socket_for(url) is None and (reason := self.dialer.last_failure(url))
        ]
        return f"; the last dials: {'; '.join(failures[:3])}" if failures else ""

    @property
    def urls(self) -> list[str]:
        """The URLs this client dials: those given to :meth:`connect` (and the node's
        ``peers``) as given, then those from the store being dialled."""
        return self.dialer.urls

    def socket_for(self, url: str) -> Socket | None:
        """The open connection to ``url`` (any spelling of its address), if any; when
        ``url`` names a peer (``/p2p/<id>``), only if it is to that peer (tester31 F4:
        one to another peer at that address was returned). ValueError: a ``/p2p/``
        part that is not a peer id."""
        expected = split_peer_url(url)[1]
        socket = self._by_url.get(address_of(url))
        if socket is None or expected is None or socket.peer_id == expected:
            return socket
        return None

    async def connection_to(self, url: str, *, timeout: float | None = None) -> Socket:
        """
        Wait for an open connection to ``url`` (any spelling of its address; dial it
        with :meth:`connect` or the node's ``peers``) and return it. After
        :meth:`wait_connected`, ``sockets[0]`` is whichever server connected first,
        maybe one the peer store led to (found by a new-user tester).

        Raises:
            TimeoutError: If there is none within ``timeout`` seconds (None: wait as
                long as it takes; a URL nobody dials, or a server that is down, is
                waited for for ever: found by a tester). Its text ends with why the
                last dial of the URL failed, if one did.
            NodeStateError: As :meth:`~Role.wait_connected` raises it: the node is
                stopping or stopped, or stops while this waits.
            PeerIdMismatch: If ``url`` names a peer (``/p2p/<id>``) and the connection
                to its address is to another (dialled without the pin, say: tester31
                F4, it was returned).
            ValueError: If ``timeout`` is negative (or NaN), or the ``/p2p/`` part is
                not a peer id.

        """
        check_timeout(timeout)
        expected = split_peer_url(url)[1]
        address = address_of(url)
        socket = self._by_url.get(address)
        if socket is None:
            socket = await self._wait_for(url, address, timeout)
        if expected is not None and socket.peer_id != expected:
            error = PeerIdMismatch(
                f"the connection to {address} is to peer {socket.peer_id}, "
                f"not {expected}, which {url!r} names"
            )
            error.peer = socket.peer
            raise error
        return socket

    async def _wait_for(self, url: str, address: str, timeout: float | None) -> Socket:
        """Wait for a connection to ``address`` (:meth:`connection_to`'s wait)."""
        self.check_waitable()
        future: asyncio.Future[Socket] = asyncio.get_running_loop().create_future()
        waiters = self._url_waiters.setdefault(address, [])
        waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            reason = self.dialer.last_failure(url)
            why = f"; the last dial: {reason}" if reason else ""
            raise TimeoutError(f"no connection to {url} within {timeout} s{why}") from None
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters and self._url_waiters.get(address) is waiters:
                del self._url_waiters[address]

    def connect(self, url: str) -> None:
        """
        Start dialling ``url`` and keep connected to it; does nothing if its address is
        dialled already (whatever the spelling), but if ``url`` names a peer
        (``/p2p/<id>``) that the URL dialled doesn't, its next dials are pinned; a
        connection there to another peer stays until it closes, said at WARNING
        (:meth:`disconnect` the address to drop it now). Before
        :meth:`~trustp2p.Node.start`, the dialling begins when the node starts.

        Raises:
            InvalidURL: If the URL can't work, as ``NodeOptions.peers`` checks it: no
                scheme or one no driver has, no host, no port or one out of range,
                credentials, a path, or a ``/p2p/`` part that is not a peer id. It is
                both a :exc:`~trustp2p.DriverError` and a :exc:`ValueError`.
            DriverError: If the driver its scheme needs isn't installed.
            NodeStateError: If the node has stopped.

        """
        self.dialer.connect(url)

    async def disconnect(self, url: str) -> None:
        """Stop dialling ``url`` and close its connection, if any (any spelling of
        its address)."""
        await self.dialer.disconnect(url)
        socket = self._by_url.pop(address_of(url), None)
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

    def reroute_target(self, tried: Collection[ConnId]) -> ConnId | None:
        """The connection a request tried on ``tried`` goes to next (the request table's
        ``reroute_target``), if any."""
        socket = self.find_next_server(tried)
        return socket.id if socket is not None else None

    def wake(self) -> None:
        """Look for more servers now (peer exchange calls this when it learns some)."""
        self.dialer.wake()

    def start(self) -> None:
        self.dialer.start()

    async def stop(self) -> None:
        await self.dialer.stop()

    # Bookkeeping: the node reports its connections, dials and stop here.

    def node_stopping(self) -> None:
        super().node_stopping()
        error = NodeStateError("the node is stopping, not running")
        for waiters in self._url_waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(error)

    def connection_opened(self, socket: Socket) -> None:
        address = address_of(socket.peer)
        self._by_url[address] = socket
        self.dialer.connection_opened(socket)
        super().connection_opened(socket)
        for future in self._url_waiters.pop(address, ()):
            if not future.done():
                future.set_result(socket)

    def connection_closed(self, socket: Socket) -> None:
        address = address_of(socket.peer)
        if self._by_url.get(address) is socket:
            del self._by_url[address]
        super().connection_closed(socket)
        self.dialer.connection_closed(socket)

    def remember_peer(self, url: str, peer_id: str) -> None:
        """Note that ``peer_id`` answers at ``url``, so that the client doesn't dial that
        URL again while the peer is connected (the node reports duplicates here)."""
        self.dialer.policy.remember_peer(url, peer_id)

    def duplicate_dialled(self, socket: Socket, peer_id: str) -> None:
        """A connection we dialled reached ``peer_id``, connected already, and the node
        refused it (one connection per peer): see :meth:`Dialer.duplicate_dialled`."""
        self.dialer.duplicate_dialled(socket, peer_id)

    async def record_connected(self, socket: Socket) -> None:
        """Tell the peer store that ``socket``, which we dialled, reached its peer
        (:meth:`Dialer.record_connected <trustp2p.node.dialer.Dialer.record_connected>`)."""
        await self.dialer.record_connected(socket)

    def dial_failed(self, url: str, error: Exception) -> None:
        """A dial or its handshake failed: count it; the store remembers it."""
        self.dialer.dial_failed(url, error)


def check_timeout(timeout: float | None) -> None:
    """Refuse a negative (or NaN) ``timeout`` of a wait: ``-1`` timed out at once, as if
    the connection had failed to come (a tester). ``0`` is allowed: "is it there now?"."""
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or at least 0, not {timeout}")
