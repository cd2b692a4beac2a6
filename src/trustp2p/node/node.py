"""
The node: lifecycle and wiring of its parts, and the API applications and threads use.

The parts, each owning its state: :class:`~trustp2p.node.connections.Connections` (the
drivers' listener, each connection's protocol, inbox and worker, the send path),
:class:`~trustp2p.node.requests.Requests` (futures and the timer over the request
table), :class:`~trustp2p.node.handlers.HandlerRegistry`, the roles (request, send,
broadcast), gossip, and one :class:`~trustp2p.node.tasks.TaskOwner` for background
tasks. See ``docs/architecture.md``.

"""

from __future__ import annotations

__all__ = ["Node", "NodeState", "PeerConnection"]

import asyncio
import enum
import logging
import secrets
import sys
from pathlib import Path
from typing import IO, Any

from .._version import __version__
from ..admin import AdminServer, Metrics, current_node
from ..drivers import Driver, DriverSet
from ..drivers.base import Listener, Listening, Socket
from ..exceptions import ConnectionClosed, NodeStateError, UsageError
from ..identity import KEY_FILE, Identity, claim_identity, key_path, lock_path
from ..options import NodeOptions
from ..protocol.close import CloseCode
from ..protocol.deliver import ConnId
from ..protocol.handshake import HELLO_EVENT, VERSION_EVENT, version_body
from ..protocol.hosts import host_of, may_announce
from ..protocol.limits import FIRST_ADDRESSES, AddressBudget
from ..protocol.package import Body, Package, PackageType, build_package
from ..protocol.urls import is_unspecified, split_peer_url
from ..security.channel import SecureLayer
from ..storage import data_dir
from ..storage.peerstore import PeerStore
from ..tasks import TaskOwner
from ..threads.base import Thread
from ..threads.loader import start_thread
from .clock_watch import ClockWatch
from .connections import Connections
from .dispatch import call_thread
from .gossip import Gossip, GossipHandler
from .handlers import HandlerRegistry
from .lifecycle import (
    load_threads,
    made_by_start,
    make_requests,
    make_secure_layer,
    open_store,
    say_started,
    stop_parts,
)
from .liveness import Heartbeat, LoopWatchdog
from .peer import PeerConnection
from .requests import Requests
from .roles import ClientRole, ServerRole
from .stopping import StopWaits


class NodeState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Node:
    """
    A trustp2p node: a server, a client, or both.

    Create one with :func:`create_server`, :func:`create_client` or :func:`create_node`,
    or build it from :class:`NodeOptions` and ``await node.start()``. ``async with node``
    starts and stops it.

    Attributes:
        options: The node's options.
        server: The server role, or ``None`` if the node doesn't accept peers.
        client: The client role, or ``None`` if the node doesn't dial peers.
        threads: The running threads, in load order.
        log: The node's logger, ``trustp2p.node``.
        state: Where the node is in its lifecycle.
        metrics: The node's counters (:class:`~trustp2p.admin.counters.Metrics`).
        admin: The admin listener, if ``options.admin`` is set, once started.
        data_dir: Where the node keeps its peer store and message log, once started:
            ``<cwd>/data`` (``<cwd>/data/<name>`` for a named node), or ``None``
            without ``cwd``. A thread keeps its own files there, one per node.
        clock_watch: Its wall clock against its peers' (their version talks' ``time``;
            :class:`~trustp2p.node.clock_watch.ClockWatch`).
        stop_waits: What its stop waits for (:class:`~trustp2p.node.stopping.StopWaits`):
            ``stop_waits.hurry()`` cuts the stop short (the CLI's second SIGTERM).

    """

    def __init__(self, options: NodeOptions | None = None, **kwargs: Any) -> None:
        if options is None or kwargs:
            options = NodeOptions.from_kwargs(options, **kwargs)
        self.options = options
        self.log = logging.getLogger(__name__)
        self.context_key = object()  # what its tasks' contexts carry (admin.current_node)
        self.metrics = Metrics()
        self.admin = AdminServer(self) if options.admin is not None else None
        self.server = ServerRole(self) if options.server else None
        self.client = ClientRole(self) if options.client else None
        self.gossip = Gossip(self) if options.gossip else None
        self.threads: list[Thread] = []
        self.state = NodeState.NEW
        self.nonce = secrets.token_hex(8)
        """Random, drawn once per node and sent in its version talk: a connection whose
        peer sends it back is a connection to ourselves."""
        self.version_body = version_body(
            library_version=__version__,
            alt=options.alt,
            program=options.program,
            program_version=options.program_version,
            nonce=self.nonce,
            max_package_size=options.max_package_size,
        )
        self.clock_watch = ClockWatch(self)
        self.handlers = HandlerRegistry()
        """Which thread handles which (package type, event), once threads are loaded."""
        self.heartbeat = Heartbeat(self)
        """The heartbeat round: liveness of every connection, on both sides."""
        self.connections = Connections(self)
        """The open connections; iterate for :class:`PeerConnection` objects."""
        self.address_budget = AddressBudget(
            rate=options.address_rate,
            burst=options.address_burst,
            initial=min(FIRST_ADDRESSES, options.address_burst),
        )
        """How many new addresses each peer may make us store (:meth:`learned_urls`)."""
        self._requests: Requests | None = None
        self.drivers = DriverSet(options.driver, options.driver_options())
        """The node's drivers, each made when first used."""
        self._listening: Listening | None = None
        self.identity: Identity | None = None
        self.data_dir: Path | None = None
        self._identity_name = options.name or "node"  # its key: identity/<name>.key
        self._identity_lock: IO[bytes] | None = None
        self._made: list[Path] = []  # files this start made: a failed start removes them
        self._stopping: asyncio.Future[None] | None = None  # stop()'s work, once begun
        self._start_ended: asyncio.Future[bool] | None = None  # start()'s end: ok?
        self._starter: asyncio.Task[Any] | None = None
        self.store: PeerStore | None = None
        self._secure: SecureLayer | None = None
        self.tasks = TaskOwner(self.log)
        """The owner of the node's background tasks; threads and parts spawn here."""
        self.stop_waits = StopWaits(self.log)

    def __repr__(self) -> str:
        roles = "+".join(r for r, on in (("server", self.server), ("client", self.client)) if on)
        where = f" {self.url}" if self.url else ""
        return f"<Node {roles}{where} {self.state.value}>"

    @property
    def url(self) -> str | None:
        """The URL peers dial to reach this node, once it listens."""
        return self._listening.url if self._listening is not None else None

    @property
    def admin_url(self) -> str | None:
        """The URL of the admin listener (its real port), once it listens."""
        return self.admin.url if self.admin is not None else None

    @property
    def running(self) -> bool:
        """True between the end of :meth:`start` and the beginning of :meth:`stop`."""
        return self.state is NodeState.RUNNING

    @property
    def requests(self) -> Requests:
        """The requests in flight (:exc:`NodeStateError` before the node is started)."""
        if self._requests is None:
            raise NodeStateError("the node is not started")
        return self._requests

    @property
    def sockets(self) -> list[Socket]:
        """Every open connection, both roles."""
        return [conn.socket for conn in self.connections]

    @property
    def peer_id(self) -> str | None:
        """This node's peer id, once started."""
        return self.identity.peer_id if self.identity is not None else None

    @property
    def listen_urls(self) -> list[str]:
        """The URLs this node announces to its peers: ``listen_urls``, or the URL it
        listens on unless that is the unspecified address (``0.0.0.0``, ``::``)."""
        if self.options.listen_urls:
            return list(self.options.listen_urls)
        return [self.url] if self.url is not None and not is_unspecified(self.url) else []

    # Publish/subscribe (the node's gossip service)

    def _gossip(self) -> Gossip:
        if self.gossip is None:
            raise NodeStateError("this node runs without gossip (gossip=False)")
        if self.state in (NodeState.NEW, NodeState.STOPPED):  # stopping: gossip says
            raise NodeStateError(f"the node is {self.state.value}, not running")
        return self.gossip

    async def publish(self, topic: str, body: Body) -> str:
        """
        Sign ``body`` and publish it on ``topic`` to every subscribed node.

        Returns:
            The message id.

        Raises:
            NodeStateError: If the node isn't running (a stopping node publishes until
                its threads' ``stop()`` returned), or runs without gossip.
            ValueError: If the topic is empty or too long, or ``body`` holds NaN.
            TypeError: If ``body`` is not a JSON-serializable dict.

        """
        return await self._gossip().publish(topic, body)

    def subscribe(self, topic: str, handler: GossipHandler | None = None) -> None:
        """
        Receive ``topic``'s messages: ``handler(message)`` (sync or async) is called once
        for each, in per-origin order (ValueError: an invalid topic, or past 1,000, what
        peers accept; TypeError: a handler that isn't callable with one positional
        argument, checked here as threads' handlers are at load). Threads may name the
        topic in their event map: ``GOSSIP`` type.
        """
        if self.gossip is None:
            raise NodeStateError("this node runs without gossip (gossip=False)")
        self.gossip.subscribe(topic, handler)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``; its subscribe() handlers are forgotten."""
        if self.gossip is None:
            raise NodeStateError("this node runs without gossip (gossip=False)")
        self.gossip.unsubscribe(topic)

    def socket_by_id(self, conn_id: ConnId) -> Socket | None:
        """The open connection with this id, if any."""
        conn = self.connections.get(conn_id)
        return conn.socket if conn is not None else None

    @property
    def secure_layer(self) -> SecureLayer | None:
        """The secure channel layer in secure mode; ``None`` in plain mode."""
        return self._secure

    def connection(self, socket: Socket) -> PeerConnection | None:
        """What the node knows of an open connection's peer; ``None`` once it closed."""
        return self.connections.get(socket.id)

    def connected_peer_ids(self) -> set[str]:
        """The authenticated peer ids of the open connections (secure mode)."""
        return self.connections.peer_ids()

    def socket_for_peer(self, peer_id: str) -> Socket | None:
        """The open connection to an authenticated peer, if any."""
        conn = self.connections.by_peer_id(peer_id)
        return conn.socket if conn is not None else None

    # Lifecycle

    async def start(self) -> None:
        """
        Load the threads, start them, then listen and dial.

        Raises:
            ThreadLoadError: If a thread file can't be loaded (nothing is started), or a
                thread's ``start()`` raises (the threads started before it are stopped).
            DriverError: If listening fails; the threads are stopped again.
            NodeStateError: If the node was already started, or is starting.

        """
        if self._start_ended is not None and not self._start_ended.done():
            raise NodeStateError("can't start a node that is starting")
        if self.state is not NodeState.NEW:
            raise NodeStateError(f"can't start a node that is {self.state.value}")
        self._start_ended = asyncio.get_running_loop().create_future()
        self._starter = asyncio.current_task()
        try:
            await self._start(self._start_ended)
        finally:
            if not self._start_ended.done():  # (a failed start ends it before its stop)
                self._start_ended.set_result(True)

    async def _start(self, ended: asyncio.Future[bool]) -> None:
        options = self.options
        current_node.set(self.context_key)  # the tasks and transports started here are ours
        if self.admin is not None:
            self.admin.collect_warnings()  # the start's own too
        self._requests = make_requests(self)
        self.threads = load_threads(self)
        started = 0
        try:
            self.identity = options.identity or await self._load_identity()
            options.check_own_urls(self.identity.peer_id)  # (one loaded from cwd too)
            self.data_dir = self._data_dir()
            if self.data_dir is not None:
                self._made += made_by_start(self.data_dir)
            if options.secure:
                self._secure = make_secure_layer(self, self.identity)
            self.store = await open_store(self)
            if self.gossip is not None:
                await self.gossip.start()
            self.state = NodeState.RUNNING
            self.tasks.spawn(self.heartbeat.run(), "heartbeat")
            for thread in self.threads:
                await start_thread(thread)
                started += 1
            if self.gossip is not None:  # once the threads started: to their handlers
                self.gossip.replay()
            if self.server is not None:
                driver = self.drivers.get(options.driver or "ws")
                self._listening = await driver.listen(options.host, options.port, self.listener)
            if self.client is not None:
                self.client.start()
            if self.admin is not None:
                await self.admin.start()
        except BaseException as exc:
            failed: BaseException | None = exc
        else:
            failed = None
        if failed is not None:  # (undone outside the except: compiled, a cancelled start
            # re-raised from there after awaiting its stop crashed the process)
            del self.threads[started:]  # a thread whose start() didn't return isn't stopped
            if self.state is NodeState.NEW:  # what started before RUNNING: stop() undoes it
                self.state = NodeState.RUNNING
            ended.set_result(False)  # for stop(): no "stopping node" (found by a tester)
            await self.stop()
            raise failed
        say_started(self)
        # Once started: a slow start (its stores, its threads' start()) isn't a block.
        LoopWatchdog.watch(self)

    async def stop(self) -> None:
        """
        Stop the node: stop accepting and dialling, start no gossip handler, call every
        thread's ``stop()`` (for ``close_timeout`` each at most) while the handlers
        running finish (``close_timeout`` at most), close every connection with code
        1001, then cancel and await remaining tasks. What it waits for is said after 3 s
        and given up by ``stop_waits.hurry()``; work cancelled that goes on (it caught
        its CancelledError) is left running past the stop, said at WARNING. Safe to call
        more than once, from any task: each call waits for the same stop. Cancelling a
        caller doesn't cancel the stop, which goes on to its end; the caller gets its
        :exc:`asyncio.CancelledError`.
        Called during :meth:`start`, it waits for the start to end, then stops; called
        within the start (by a thread's ``start()``), it raises :exc:`NodeStateError`.
        """
        ended = self._start_ended
        if ended is not None and not ended.done():
            if asyncio.current_task() is self._starter:  # (it would wait for itself)
                raise NodeStateError("stop() within start(): raise in the thread's start()")
            await asyncio.shield(ended)
        if self.state is NodeState.RUNNING:
            self.state = NodeState.STOPPING
            self._stopping = asyncio.ensure_future(self._stop(asyncio.current_task()))
        elif self.state is NodeState.STOPPING and self.gossip is not None:
            self.gossip.stopped_again()  # (from a handler: its message is delivered)
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    async def _stop(self, caller: asyncio.Task[Any] | None) -> None:
        started = self._start_ended is None or self._start_ended.result()
        self.log.info("x stopping node" if started else "x undoing a failed start")
        LoopWatchdog.unwatch(self)
        lock, listening = self._identity_lock, self._listening
        made = () if started else self._made
        await stop_parts(
            self,
            caller,
            listening=listening,
            identity_lock=lock,
            requests=self._requests,
            made=made,
        )
        self._identity_lock = None  # (closed)
        self.connections.inbound.stop_logging()
        self.state = NodeState.STOPPED
        self.log.info("x node stopped" if started else "x failed start undone")

    async def __aenter__(self) -> Node:
        if self.state is NodeState.NEW:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def listener(self) -> Listener:
        """What the drivers report to: the secure layer, or the node's connections."""
        return self._secure if self._secure is not None else self.connections

    async def _load_identity(self) -> Identity:
        options = self.options
        if options.cwd is None:
            return Identity.generate()
        keys = set((options.cwd / KEY_FILE.parent).glob(f"*{KEY_FILE.suffix}"))
        claimed = await claim_identity(options.cwd, self.log, options.name)
        identity, self._identity_name, self._identity_lock = claimed
        path = key_path(options.cwd, self._identity_name)
        if path not in keys:  # made now (tester27 F8: a start that failed left a node
            self._made.append(path)  # `peers` listed)
            if sys.platform != "win32":  # its lock too, unlinked while held (review33,
                self._made.append(lock_path(path))  # tester48 F9); Windows: kept
        return identity

    def _data_dir(self) -> Path | None:
        """Where the peer store and message log live: ``<cwd>/data``, or
        ``<cwd>/data/node-<n>`` for the n-th node running in one directory."""
        cwd = self.options.cwd
        return data_dir(cwd, self._identity_name) if cwd is not None else None

    # Threads and connections: the API threads use

    async def call_hooks(self, name: str, *args: Any) -> None:
        """Call hook ``name`` (e.g. ``on_socket_error``) of every thread, in load order."""
        for thread in self.threads:
            await call_thread(thread, name, *args)

    def learned_urls(self, socket: Socket, urls: list[str], *, own: bool = False) -> list[str]:
        """
        Of URLs the peer on ``socket`` gave us (hello, ``my_url``, a ``get_peers``
        answer), those to store: the ones the store knows already, and new ones within
        the peer's budget (``address_rate`` per second, up to ``address_burst``). Call
        it just before ``store.add_urls()``; the others are dropped.

        Args:
            own: The URLs are the ones the peer announced for itself (hello,
                ``my_url``): only those on the host it connects from are kept
                (:func:`~trustp2p.protocol.hosts.may_announce`), or on the host we
                dialled it at.
        """
        if own:
            urls = self._on_peer_host(socket, urls)
        store = self.store
        known = store.knows_url if store is not None else frozenset[str]().__contains__
        # By address (an IPv6 /48), not id: ids are free (attacker39 E1: each fresh
        # server id brought a full answer of made-up URLs); local peers by id.
        connections = self.connections
        key = connections.share_group(socket) or connections.budget_key(socket)
        now = asyncio.get_running_loop().time()
        kept = self.address_budget.take(key, urls, now, known=known)
        if len(kept) < len(urls):
            self.log.debug("! %s: kept %d of %d new URLs", socket.peer, len(kept), len(urls))
        return kept

    def _on_peer_host(self, socket: Socket, urls: list[str]) -> list[str]:
        dialled = "" if socket.inbound else host_of(socket.peer)
        kept = [u for u in urls if may_announce(u, socket.host) or host_of(u) == dialled != ""]
        if len(kept) < len(urls):
            self.log.debug(
                "! %s: dropped %d URLs not on its host %s",
                socket.peer,
                len(urls) - len(kept),
                socket.host,
            )
        return kept

    def penalize(self, socket: Socket, reason: str) -> None:
        """
        Count one invalid package against a peer, as the node does for bad input; past
        the block policy's ratio the peer is blocked and disconnected. For threads that
        find a peer's message invalid at their level.
        """
        self.connections.penalize(socket, reason)

    def introduction(self) -> Package:
        """Our version talk (plain mode), or hello (secure mode) with our id and URLs."""
        ours = self.clock_watch.version_body()  # (with our wall clock)
        if self._secure is None:
            return build_package(PackageType.TALK, VERSION_EVENT, ours, alt=self.options.alt)
        body = {**ours, "peer_id": self.peer_id, "listen_urls": self.listen_urls}
        return build_package(PackageType.TALK, HELLO_EVENT, body, alt=self.options.alt)

    # Sending

    def send_package(self, socket: Socket, package: Package) -> None:
        """
        Write ``package`` to ``socket`` without waiting for it to drain.

        Raises:
            ConnectionClosed: If the socket is closed, or the peer left more than
                ``max_send_queue`` packages, or ``max_send_bytes``, unread (it is then
                disconnected).
            PackageTooLarge: If the package is over ``max_package_size`` (not sent).

        """
        self.connections.send_package(socket, package)

    async def send(self, socket: Socket, package: Package) -> None:
        """
        Write ``package`` to ``socket`` once its write buffer has room: a burst slows
        the caller down and never disconnects the peer.

        Raises:
            ConnectionClosed: If the socket is closed.

        """
        await self.connections.send(socket, package)

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
        """Send a request on ``socket`` and return its response's body. The roles'
        :meth:`~trustp2p.node.roles.Role.request` documents the arguments and errors;
        this raises :exc:`NodeStateError` too if the node was never started."""
        response = await self.request_package(
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
        """Send a request on ``socket`` and return its whole response (body and payload);
        :meth:`~trustp2p.node.roles.Role.request_package` documents it and its errors."""
        socket = self.check_open(socket, reroute=reroute)
        return await self.requests.request_package(
            socket,
            event,
            body,
            package_type=package_type,
            reroute=reroute,
            timeout=timeout,
            payload=payload,
        )

    def check_open(self, socket: Socket, *, reroute: bool = False) -> Socket:
        """
        Raise unless a request may go out on ``socket`` now; return the socket it goes
        out on: with ``reroute``, the next server if ``socket`` closed before the call.

        Raises:
            ConnectionClosed: If the connection is closed, or the node is stopping.
            NodeStateError: If the node was never started.
            UsageError: If ``socket`` is open but not a connection of this node.
            TypeError: If ``socket`` is not a :class:`Socket`.

        """
        if self.state is not NodeState.RUNNING:
            if self.state is NodeState.NEW:
                raise NodeStateError("the node is not started")
            raise ConnectionClosed(CloseCode.GOING_AWAY, "node stopping")
        try:
            if reroute and socket.closed and self.client is not None:
                socket = self.client.find_next_server((socket.id,)) or socket
            if self.connections.get(socket.id) is None:
                if not socket.closed:  # (another node's)
                    raise UsageError(f"{socket!r} is not a connection of this node")
                raise ConnectionClosed(socket.close_code, socket.close_reason)
        except AttributeError:
            if isinstance(socket, Socket):
                raise
            # (A tester: socket_for() gave None, and request(None, ...) said
            # "'NoneType' object has no attribute 'id'".)
            what = "None (not connected?)" if socket is None else type(socket).__name__
            raise TypeError(f"socket must be a Socket, not {what}") from None
        return socket

    # Drivers

    def driver_for_url(self, url: str) -> Driver:
        """The driver that dials ``url`` (see :class:`~trustp2p.drivers.DriverSet`)."""
        return self.drivers.for_url(split_peer_url(url)[0])
