"""
The two roles of a node: the server (peers that dialled us) and the client (peers we
dial). Each role sees its own connections and offers the deliver API on them.

"""

from __future__ import annotations

__all__ = ["BroadcastResult", "ClientRole", "Role", "ServerRole"]

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..drivers.base import Socket
from ..exceptions import DriverError
from ..protocol.backoff import backoff
from ..protocol.deliver import ConnId
from ..protocol.handshake import VERSION_EVENT
from ..protocol.limits import is_loopback, netgroup
from ..protocol.package import Body, PackageType, build_package
from ..protocol.peers import is_address_key
from ..protocol.urls import address_of, split_peer_url

if TYPE_CHECKING:
    from ..storage.peerstore import PeerStore
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
        return await self.node.request(
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
        await self.node.send(
            socket, build_package(type, event, body, tag=tag, alt=self.node.options.alt)
        )

    async def send_talk(self, socket: Socket, subject: str, body: Body) -> None:
        """
        Send a TALK: a message that expects no answer.

        Raises:
            ConnectionClosed: If the connection is closed.

        """
        await self.node.send(
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

        With ``type=PackageType.TALK`` it sends a talk to each peer without waiting for
        slow ones (a peer that doesn't read is disconnected past ``max_send_queue``);
        with ``REQUEST`` it sends a request to each peer concurrently and collects the
        responses. It never raises because of one peer: each peer's outcome is in the
        result.

        Returns:
            Per socket: ``None`` when the talk was sent, the response body of a request,
            or the exception that peer met (e.g. :exc:`ConnectionClosed`).

        """
        targets = list(self._sockets.values() if sockets is None else sockets)
        results: BroadcastResult = {}
        if type is PackageType.TALK:
            package = build_package(type, event, body, alt=self.node.options.alt)
            for socket in targets:
                # No waiting for a slow peer here: one that doesn't read is disconnected
                # once max_send_queue packages wait for it, and the others go on.
                try:
                    self.node.send_package(socket, package)
                except Exception as exc:
                    results[socket] = exc
                else:
                    results[socket] = None
            return results
        outcomes = await asyncio.gather(
            *(self.node.request(s, event, body, type=type, timeout=timeout) for s in targets),
            return_exceptions=True,
        )
        for socket, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # CancelledError and friends
            results[socket] = outcome
        return results

    # Bookkeeping: the node reports its connections here.

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
    isn't dialled again, blocked peers never are.

    """

    inbound = False

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self._dialers: dict[str, asyncio.Task[None]] = {}  # persistent, by URL as given
        self._managed: dict[str, asyncio.Task[None]] = {}  # from the store, by dial URL
        self._by_url: dict[str, Socket] = {}
        self._peer_of_url: dict[str, str] = {}  # dial URL -> peer id met there
        # dial URL -> the store's URL being dialled there by the outbound manager (with
        # its /p2p/<id>, if it has one), so that the outcome is recorded for that entry
        self._store_url: dict[str, str] = {}
        self._failures: dict[str, int] = {}  # dial URL -> failures in a row
        self._retry_at: dict[str, float] = {}  # dial URL -> earliest next managed try
        self._manager: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._opened_at: dict[ConnId, float] = {}  # loop time each connection opened
        self._anchoring: str | None = None  # the URL last dialled as an anchor

    @property
    def urls(self) -> list[str]:
        """The URLs this client dials."""
        return [*self._dialers, *self._managed]

    def socket_for(self, url: str) -> Socket | None:
        """The open connection to ``url``, if any."""
        return self._by_url.get(split_peer_url(url)[0])

    def connect(self, url: str) -> None:
        """
        Start dialling ``url`` and keep connected to it; does nothing if already done.

        Raises:
            DriverError: If no driver handles the URL's scheme.
            ValueError: If the URL's ``/p2p/`` part is not a peer id.

        """
        if url in self._dialers:
            return
        self.node.driver_for_url(url)  # fail now on an unknown scheme
        self._dialers[url] = asyncio.create_task(self._dial_forever(url), name=f"dial {url}")

    async def disconnect(self, url: str) -> None:
        """Stop dialling ``url`` and close its connection, if any."""
        task = self._dialers.pop(url, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        socket = self._by_url.pop(split_peer_url(url)[0], None)
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

    def wake(self) -> None:
        """Look for more servers now (peer exchange calls this when it learns some)."""
        self._wakeup.set()

    # Bookkeeping: the node reports its connections here.

    def connection_opened(self, socket: Socket) -> None:
        self._opened_at[socket.id] = asyncio.get_running_loop().time()
        self._by_url[socket.peer] = socket
        if socket.peer_id is not None:
            self._peer_of_url[socket.peer] = socket.peer_id
        self._failures.pop(self.store_url(socket.peer), None)
        self._retry_at.pop(self.store_url(socket.peer), None)
        super().connection_opened(socket)

    def connection_closed(self, socket: Socket) -> None:
        self._opened_at.pop(socket.id, None)
        if self._by_url.get(socket.peer) is socket:
            del self._by_url[socket.peer]
        super().connection_closed(socket)
        self._wakeup.set()

    def _known_peer(self, url: str) -> str | None:
        """The peer id met at ``url``, in this run or (from the store) before."""
        known = self._peer_of_url.get(url)
        if known is None and self.node.store is not None:
            known = self.node.store.peer_id_of(url)
            if known is not None and is_address_key(known):
                known = None
        return known

    def remember_peer(self, url: str, peer_id: str) -> None:
        """Note that ``peer_id`` answers at ``url``, so that the client doesn't dial that
        URL again while the peer is connected (the node reports duplicates here)."""
        self._peer_of_url[url] = peer_id

    def store_url(self, dial_url: str) -> str:
        """The peer store's URL for a connection dialled at ``dial_url``: the URL with
        its ``/p2p/<id>`` when the outbound manager dialled a store entry that has one."""
        return self._store_url.get(dial_url, dial_url)

    def dial_failed(self, url: str, error: Exception) -> None:
        """A dial or its handshake failed: count it; the store remembers it."""
        url = self.store_url(url)
        failures = self._failures[url] = self._failures.get(url, 0) + 1
        options = self.node.options
        delay = min(options.reconnect_max, options.reconnect_initial * 2 ** (failures - 1))
        self._retry_at[url] = asyncio.get_running_loop().time() + delay
        store = self.node.store
        if store is not None:
            self.node.tasks.spawn(store.record_failure(url), f"record failure {url}")

    def start(self) -> None:
        for url in self.node.options.peers:
            self.connect(url)
        if self.node.options.target_outbound > 0:
            self._manager = asyncio.create_task(self._manage(), name="outbound manager")

    async def stop(self) -> None:
        tasks = [*self._dialers.values(), *self._managed.values()]
        if self._manager is not None:
            tasks.append(self._manager)
            self._manager = None
        self._dialers.clear()
        self._managed.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Dialling

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
        dial_url, expected = split_peer_url(url)
        while True:
            known = expected or self._known_peer(dial_url)
            store = self.node.store
            host = urlsplit(dial_url).hostname or ""
            if store is not None and store.is_blocked(address=host) and not is_loopback(host):
                await asyncio.sleep(next(retry))
                continue
            if known is not None:
                other = self.node.socket_for_peer(known)
                if other is not None:
                    # Already connected to that peer (maybe it dialled us): one
                    # connection per peer. Dial again when that one closes.
                    await other.wait_closed()
                    continue
                store = self.node.store
                if store is not None and store.is_blocked(peer_id=known):
                    await asyncio.sleep(next(retry))
                    continue
            try:
                socket = await self._dial(dial_url, expected)
            except DriverError as exc:
                self.dial_failed(dial_url, exc)
                delay = next(retry)
                logger.info("! %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            opened = loop.time()
            await socket.wait_closed()
            delay = next(retry)
            if loop.time() - opened >= delay:
                # It stayed up a while: start over from the shortest delay.
                retry = iter(delays())
                delay = next(retry)
            logger.info(
                "= connection to %s closed (%s %s); redialling in %.1f s",
                dial_url,
                socket.close_code,
                socket.close_reason or "-",
                delay,
            )
            await asyncio.sleep(delay)

    async def _dial(self, url: str, expected: str | None) -> Socket:
        """Open a connection (for a secure node, the handshake follows on its own)."""
        node = self.node
        secure = node.secure_layer
        if secure is not None:
            secure.expect(url, expected)  # type: ignore[arg-type]
        return await node.driver_for_url(url).connect(url, node.listener)

    async def _dial_once(self, url: str) -> None:
        """
        Dial a URL from the store once, and stay until the connection closes. A URL
        with ``/p2p/<id>`` (as peer lists give them) is dialled expecting that peer:
        another key there fails the handshake, and the failure counts against that
        entry only, not against the same address given without an id or with another.
        """
        dial_url, expected = split_peer_url(url)
        self._store_url[dial_url] = url
        try:
            try:
                socket = await self._dial(dial_url, expected)
            except DriverError as exc:
                self.dial_failed(url, exc)
                logger.debug("! %s", exc)
                return
            await socket.wait_closed()
        finally:
            if self._store_url.get(dial_url) == url:
                del self._store_url[dial_url]
            self._managed_done(url)

    async def _manage(self) -> None:
        """Keep ``target_outbound`` servers, drawing on the peer store."""
        node = self.node
        options = node.options
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(options.exchange_interval):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            store = node.store
            if store is None:
                continue
            await self._anchor(store)
            dialling = sum(1 for url in self._managed if split_peer_url(url)[0] not in self._by_url)
            missing = options.target_outbound - len(self._sockets) - dialling
            if missing <= 0:
                continue
            busy = self._busy()
            connected_ids = node.connected_peer_ids()
            if node.peer_id is not None:
                connected_ids.add(node.peer_id)
            candidates = await store.candidates(
                missing * 4, exclude_urls=busy, exclude_ids=connected_ids
            )
            # Pick at random among the best: if every node dialled the best-known peers,
            # those would fill up with inbound connections and never find outbound ones.
            random.shuffle(candidates)
            # Dials under way count too, or the next round would pick more of a group.
            groups = Counter(
                self._netgroup(url)
                for url in {
                    *(s.peer for s in self._sockets.values()),
                    *(split_peer_url(u)[0] for u in self._managed),
                }
            )
            now = loop.time()
            for url in candidates:
                if missing <= 0:
                    break
                if not self._dialable(url, busy, connected_ids, now):
                    continue
                group = self._netgroup(url)
                if group is not None and groups[group] >= options.max_outbound_per_netgroup:
                    continue
                if group is not None:
                    groups[group] += 1
                missing -= 1
                busy.add(address_of(url))  # one dial per address, whatever the id
                self._managed[url] = asyncio.create_task(self._dial_once(url), name=f"dial {url}")

    def _busy(self) -> set[str]:
        """Addresses not to dial from the store: dialled, connected, or our own, each
        spelled by :func:`~trustp2p.protocol.urls.address_of` (``ws://H:1/`` is
        ``ws://h:1``)."""
        urls = (*self._dialers, *self._managed, *self._by_url, *self.node.listen_urls)
        return {address_of(url) for url in urls}

    def _dialable(self, url: str, busy: set[str], connected_ids: set[str], now: float) -> bool:
        """Whether a store URL may be dialled now: its address is not busy, it is not
        waiting for a retry, and neither the peer met there nor the one its ``/p2p/``
        part names (for this entry only) is connected or blocked."""
        store = self.node.store
        dial_url, claimed = split_peer_url(url)
        if address_of(url) in busy or self._retry_at.get(url, 0) > now:
            return False
        for peer_id in (self._known_peer(dial_url), claimed):
            if peer_id is not None and (
                peer_id in connected_ids
                or (store is not None and store.is_blocked(peer_id=peer_id))
            ):
                return False
        return True

    def _is_anchor(self, socket: Socket, now: float) -> bool:
        """A connection that anchors us: to a bootstrap URL or peer, to a peer we had
        connected to before, or open for ``anchor_age``."""
        store = self.node.store
        return (
            socket.peer in self._bootstrap_urls()
            or now - self._opened_at.get(socket.id, now) >= self.node.options.anchor_age
            or (
                socket.peer_id is not None and store is not None and store.is_anchor(socket.peer_id)
            )
        )

    def _bootstrap_urls(self) -> set[str]:
        return {split_peer_url(url)[0] for url in self.node.options.peers}

    async def _anchor(self, store: PeerStore) -> None:
        """
        Eclipse resistance: when no outbound connection goes to a bootstrap or
        long-lived peer, dial one of those (one at a time, even past the target), so
        that peers learned from others can't be all we have.
        """
        now = asyncio.get_running_loop().time()
        if not self._sockets or any(self._is_anchor(s, now) for s in self._sockets.values()):
            return
        bootstrap = self._bootstrap_urls()
        if any(url in bootstrap or url == self._anchoring for url in self._managed):
            return  # one on the way
        node = self.node
        exclude_ids = node.connected_peer_ids()
        if node.peer_id is not None:
            exclude_ids.add(node.peer_id)
        busy = self._busy()
        for url in await store.anchor_candidates(8, exclude_urls=busy, exclude_ids=exclude_ids):
            if not self._dialable(url, busy, exclude_ids, now):
                continue
            logger.info("= no outbound peer is a bootstrap or long-lived one: dialling %s", url)
            self._anchoring = url
            self._managed[url] = asyncio.create_task(self._dial_once(url), name=f"dial {url}")
            return

    def _managed_done(self, url: str) -> None:
        self._managed.pop(url, None)
        self._wakeup.set()

    @staticmethod
    def _netgroup(url: str) -> str | None:
        """The network group of a URL's host; ``None`` (no limit) for loopback."""
        host = urlsplit(url).hostname or ""
        if is_loopback(host) or host == "memory":
            return None
        return netgroup(host)
