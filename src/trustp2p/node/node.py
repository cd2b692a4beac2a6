"""
The node: owns the drivers, the request table, the threads and every task.

It is the :class:`~trustp2p.drivers.base.Listener` of its drivers: each received
message is decoded and dispatched from the driver's callback. Responses resolve waiting
requests at once; other packages go to a per-connection inbox that one worker task
drains in order, calling thread handlers. A slow handler delays only its own
connection; when too many packages wait, the node stops reading from that peer.

"""

from __future__ import annotations

__all__ = ["Node", "NodeState", "PeerConnection", "create_client", "create_node", "create_server"]

import asyncio
import enum
import inspect
import json
import logging
import sys
from collections import deque
from collections.abc import Collection, Coroutine, MutableMapping
from pathlib import Path
from typing import IO, Any

from .. import __version__
from ..drivers import Driver, driver_class, scheme_of
from ..drivers.base import CloseCode, Listener, Listening, Socket, fit_reason
from ..exceptions import (
    ConnectionClosed,
    HandshakeError,
    NodeStateError,
    PackageError,
    RequestTimeout,
    ThreadLoadError,
)
from ..identity import Identity, short_id
from ..options import NodeOptions
from ..peerstore import DATA_DIR, STORE_FILE, BlockPolicy, PeerSource, PeerStore
from ..protocol.deliver import (
    ConnId,
    DeliverEvent,
    RequestExpired,
    RequestFailed,
    RequestRerouted,
    RequestTable,
    RerouteUnavailable,
    ResponseReceived,
    ResponseUnmatched,
    WaiterId,
)
from ..protocol.handshake import HELLO_EVENT, VERSION_EVENT, check_version, version_body
from ..protocol.limits import AddressLimiter, TokenBucket, is_loopback
from ..protocol.package import (
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Body,
    Package,
    PackageType,
    build_package,
    decode,
    encode,
)
from ..protocol.urls import split_peer_url, validate_urls
from ..security.channel import SECURE_PEER, HandshakeFailed, SecureLayer, SecureSocket
from ..security.noise import HANDSHAKE_MAGIC, NoiseError
from ..threads.base import Thread
from ..threads.loader import THREADS_ENABLED, load_thread_classes
from ..threads.peer_exchange import PeerExchangeThread
from .gossip import Gossip, GossipHandler
from .gossip_thread import GossipThread
from .handlers import HandlerRegistry
from .roles import ClientRole, Role, ServerRole
from .tasks import TaskOwner

_RESPONSE_TYPE = {
    PackageType.REQUEST: PackageType.RESPONSE,
    PackageType.HEARTBEAT_PING: PackageType.HEARTBEAT_PONG,
}

# A peer's first invalid packages are logged at WARNING; the rest at DEBUG, so that a
# peer can't flood the log.
_WARN_INVALID = 10


class NodeState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _PeerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the peer and puts it in ``extra``, as websockets does."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = self.extra
        return f"[{self.extra['peer']}] {msg}", kwargs


class _Hook:
    """A thread hook waiting in a connection's inbox, behind that connection's packages."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name
        self.args = args


class PeerConnection:
    """
    What the node keeps per open connection; get it with :meth:`Node.connection`.

    Attributes:
        socket: The connection.
        role: The role it belongs to (``node.server`` or ``node.client``).
        listen_urls: The URLs the peer said it listens on (hello or ``my_url``).
        peer_version: The peer's version or hello body, once received.

    """

    __slots__ = (
        "backlog",
        "inbox",
        "invalid",
        "listen_urls",
        "log",
        "paused",
        "peer_version",
        "requests",
        "role",
        "socket",
        "worker",
    )

    def __init__(self, socket: Socket, role: Role, log: _PeerLog) -> None:
        self.socket = socket
        self.role = role
        self.log = log
        self.inbox: deque[Package | _Hook] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.paused = False
        self.peer_version: Body | None = None
        self.listen_urls: list[str] = []  # what the peer said it listens on
        self.invalid = 0
        self.backlog = 0  # packages written while the peer wasn't reading
        self.requests: TokenBucket | None = None  # its request rate, once it sends one


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

    """

    def __init__(self, options: NodeOptions | None = None, **kwargs: Any) -> None:
        if options is None or kwargs:
            options = NodeOptions.from_kwargs(options, **kwargs)
        self.options = options
        self.log = logging.getLogger("trustp2p.node")
        self.server = ServerRole(self) if options.server else None
        self.client = ClientRole(self) if options.client else None
        self.gossip = Gossip(self) if options.gossip else None
        self.threads: list[Thread] = []
        self.state = NodeState.NEW
        self.version_body = version_body(
            library_version=__version__,
            alt=options.alt,
            program=options.program,
            program_version=options.program_version,
        )
        self._conns: dict[ConnId, PeerConnection] = {}
        self.handlers = HandlerRegistry()
        """Which thread handles which (package type, event), once threads are loaded."""
        self._futures: dict[WaiterId, asyncio.Future[Body]] = {}
        self._table: RequestTable | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._workers: set[asyncio.Task[None]] = set()
        self._drivers: dict[str, Driver] = {}
        self._listening: Listening | None = None
        self._debug = False
        self.identity: Identity | None = None
        self.data_dir: Path | None = None
        self._identity_number = 1
        self._identity_lock: IO[bytes] | None = None
        self.store: PeerStore | None = None
        self._secure: SecureLayer | None = None
        self._by_peer_id: dict[str, PeerConnection] = {}
        self._admitted: dict[ConnId, str] = {}  # inbound raw connections -> address
        self._refused: dict[ConnId, Socket] = {}  # plain mode: refused, not closed yet
        self._limiter = AddressLimiter(
            max_concurrent=options.max_per_ip,
            rate=options.ip_rate,
            burst=options.ip_burst,
            exempt_loopback=not options.limit_loopback,
        )
        self.tasks = TaskOwner(self.log)
        """The owner of the node's background tasks; threads and parts spawn here."""

    def __repr__(self) -> str:
        roles = "+".join(r for r, on in (("server", self.server), ("client", self.client)) if on)
        where = f" {self.url}" if self.url else ""
        return f"<Node {roles}{where} {self.state.value}>"

    @property
    def url(self) -> str | None:
        """The URL peers dial to reach this node, once it listens."""
        return self._listening.url if self._listening is not None else None

    @property
    def sockets(self) -> list[Socket]:
        """Every open connection, both roles."""
        return [conn.socket for conn in self._conns.values()]

    @property
    def peer_id(self) -> str | None:
        """This node's peer id, once started."""
        return self.identity.peer_id if self.identity is not None else None

    @property
    def listen_urls(self) -> list[str]:
        """The URLs this node announces to its peers."""
        if self.options.listen_urls:
            return list(self.options.listen_urls)
        return [self.url] if self.url is not None else []

    # Publish/subscribe (the node's gossip service)

    def _gossip(self) -> Gossip:
        if self.gossip is None:
            raise NodeStateError("this node runs without gossip (gossip=False)")
        if self.state is not NodeState.RUNNING:
            raise NodeStateError(f"the node is {self.state.value}, not running")
        return self.gossip

    async def publish(self, topic: str, body: Body) -> str:
        """
        Sign ``body`` and publish it on ``topic`` to every subscribed node.

        Returns:
            The message id.

        Raises:
            NodeStateError: If the node isn't running or runs without gossip.
            ValueError: If the topic is empty or too long, or ``body`` holds NaN.
            TypeError: If ``body`` is not a JSON-serializable dict.

        """
        return await self._gossip().publish(topic, body)

    def subscribe(self, topic: str, handler: GossipHandler | None = None) -> None:
        """
        Receive ``topic``'s messages: ``handler(message)`` (sync or async) is called once
        for each, in per-origin order. Threads may instead name the topic in their event
        map under ``PackageType.GOSSIP``.
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
        conn = self._conns.get(conn_id)
        return conn.socket if conn is not None else None

    @property
    def secure_layer(self) -> SecureLayer | None:
        """The secure channel layer in secure mode; ``None`` in plain mode."""
        return self._secure

    @property
    def connections(self) -> list[PeerConnection]:
        """Every open connection with what the node knows of its peer, oldest first."""
        return list(self._conns.values())

    def connection(self, socket: Socket) -> PeerConnection | None:
        """What the node knows of an open connection's peer; ``None`` once it closed."""
        return self._conns.get(socket.id)

    def connected_peer_ids(self) -> set[str]:
        """The authenticated peer ids of the open connections (secure mode)."""
        return set(self._by_peer_id)

    def socket_for_peer(self, peer_id: str) -> Socket | None:
        """The open connection to an authenticated peer, if any."""
        conn = self._by_peer_id.get(peer_id)
        return conn.socket if conn is not None else None

    # Lifecycle

    async def start(self) -> None:
        """
        Load the threads, start them, then listen and dial.

        Raises:
            ThreadLoadError: If a thread file can't be loaded; nothing is started.
            DriverError: If listening fails; the threads are stopped again.
            NodeStateError: If the node was already started.

        """
        if self.state is not NodeState.NEW:
            raise NodeStateError(f"can't start a node that is {self.state.value}")
        self._loop = loop = asyncio.get_running_loop()
        self._debug = self.log.isEnabledFor(logging.DEBUG)
        options = self.options
        self._table = RequestTable(
            clock=loop.time,
            send=self._send_nowait,
            reroute_target=self._reroute_target if self.client is not None else None,
            response_timeout=options.response_timeout,
            stalled_timeout=options.stalled_timeout,
        )
        self.threads = self._load_threads()
        self.identity = options.identity or self._load_identity()
        self.data_dir = self._data_dir()
        if options.secure:
            self._secure = SecureLayer(
                self,
                self.identity,
                admit=self._admit,
                failed=self._handshake_failed,
                handshake_timeout=options.handshake_timeout,
                max_package_size=options.max_package_size,
            )
        path = None
        if options.peer_store and self.data_dir is not None:
            path = self.data_dir / STORE_FILE
        policy = BlockPolicy(
            invalid_ratio=options.invalid_ratio,
            min_packages=options.min_packages,
            block_duration=options.block_duration,
        )
        self.store = await PeerStore.open(path, policy=policy)
        if self.client is not None and options.peers:
            await self.store.add_urls(
                [split_peer_url(url)[0] for url in options.peers], PeerSource.BOOTSTRAP
            )
        if self.gossip is not None:
            await self.gossip.start()
        self.state = NodeState.RUNNING
        for thread in self.threads:
            await self._call(thread, "start")
        try:
            if self.server is not None:
                name = options.driver if isinstance(options.driver, str) else "ws"
                driver = self._driver(
                    options.driver if isinstance(options.driver, Driver) else name
                )
                self._listening = await driver.listen(options.host, options.port, self.listener)
            if self.client is not None:
                self.client.start()
        except BaseException:
            await self.stop()
            raise
        self.log.info("= node started%s", f" on {self.url}" if self.url else "")

    async def stop(self) -> None:
        """
        Stop the node: stop accepting and dialling, call every thread's ``stop()``,
        close every connection with code 1001, then cancel and await remaining tasks.
        Safe to call more than once.
        """
        if self.state is not NodeState.RUNNING:
            return
        self.state = NodeState.STOPPING
        self.log.info("x stopping node")
        if self._listening is not None:
            self._listening.close()
        if self.client is not None:
            await self.client.stop()
        if self._secure is not None:
            self._secure.close_all(CloseCode.GOING_AWAY, "node stopping")
        for thread in self.threads:
            await self._call(thread, "stop")
            await thread.cancel_tasks()
        # Every connection, those refused or still in their handshake included, so
        # that no transport outlives the node.
        raw = self._secure.raw_sockets if self._secure is not None else []
        sockets = [conn.socket for conn in self._conns.values()]
        sockets += [*raw, *self._refused.values()]
        for socket in sockets:
            socket.close_soon(CloseCode.GOING_AWAY, "node stopping")
        if sockets:
            await asyncio.gather(*(socket.wait_closed() for socket in sockets))
        if self._workers:
            # Let on_socket_close hooks run, within reason.
            await asyncio.wait(self._workers, timeout=self.options.close_timeout)
        for task in list(self._workers):
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ConnectionClosed(CloseCode.GOING_AWAY, "node stopping"))
        self._futures.clear()
        await self.tasks.aclose()
        if self.gossip is not None:
            await self.gossip.stop()
        if self.store is not None:
            await self.store.close()
        if self._listening is not None:
            await self._listening.wait_closed()
        if self._identity_lock is not None:
            self._identity_lock.close()  # another node may take this identity now
            self._identity_lock = None
        self.state = NodeState.STOPPED
        self.log.info("x node stopped")

    async def __aenter__(self) -> Node:
        if self.state is NodeState.NEW:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def listener(self) -> Listener:
        """What the drivers report to: the secure layer, or the node itself."""
        return self._secure if self._secure is not None else self

    def _load_identity(self) -> Identity:
        if self.options.cwd is None:
            return Identity.generate()
        identity, self._identity_number, self._identity_lock = Identity.claim(self.options.cwd)
        if self._identity_number > 1:
            self.log.info(
                "= another node runs in %s: this one is identity/node-%d.key",
                self.options.cwd,
                self._identity_number,
            )
        return identity

    def _data_dir(self) -> Path | None:
        """Where the peer store and message log live: ``<cwd>/data``, or
        ``<cwd>/data/node-<n>`` for the n-th node running in one directory."""
        cwd = self.options.cwd
        if cwd is None:
            return None
        if self._identity_number > 1:
            return cwd / DATA_DIR / f"node-{self._identity_number}"
        return cwd / DATA_DIR

    def _load_threads(self) -> list[Thread]:
        classes: list[type[Thread]] = []
        cwd = self.options.cwd
        if cwd is not None:
            if not cwd.is_dir():
                raise ThreadLoadError(cwd, "cwd is not a directory")
            enabled = cwd / THREADS_ENABLED
            if enabled.is_dir():
                classes.extend(load_thread_classes(enabled))
            else:
                self.log.info("= %s doesn't exist: no thread loaded from it", enabled)
        classes.extend(self.options.threads)
        if self.options.peer_exchange:
            classes.append(PeerExchangeThread)
        if self.gossip is not None:
            classes.append(GossipThread)
        threads = []
        for cls in classes:
            where = cls.path or cls.__qualname__
            try:
                thread = cls(self)
            except Exception as exc:
                raise ThreadLoadError(where, f"{cls.__name__}(node) failed: {exc!r}") from exc
            self.handlers.add_thread(thread)
            threads.append(thread)
            self.log.debug("= loaded thread %s from %s", cls.__name__, where)
        return threads

    # Driver callbacks (the Listener protocol). Not for applications.

    def on_start(self, listening: Listening) -> None:
        self.log.info("= listening on %s", listening.url)

    def on_connection(self, socket: Socket) -> None:
        assert self.server is not None
        if self._secure is None:
            # Plain mode: admit here. In secure mode the secure layer did, before any
            # cryptography.
            refusal = self._admit(socket)
            if refusal is not None:
                self._refuse(socket, *refusal)
                return
        self._opened(socket, self.server, "on_socket_connection")

    def on_open(self, socket: Socket) -> None:
        assert self.client is not None
        self._opened(socket, self.client, "on_socket_open")

    def _admit(self, raw: Socket) -> tuple[int, str] | None:
        """Admit an inbound connection, or say why not: limits, blocks. No crypto."""
        if self.state is not NodeState.RUNNING:
            return CloseCode.GOING_AWAY, "node stopping"
        host = raw.host
        if self.store is not None and self.store.is_blocked(address=host):
            self.log.debug("! refused %s: address blocked", raw.peer)
            return CloseCode.POLICY_VIOLATION, "blocked"
        max_inbound = self.options.max_inbound
        if max_inbound is not None and len(self._admitted) >= max_inbound:
            self.log.warning("! refused %s: %d inbound connections already", raw.peer, max_inbound)
            return CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out"
        why = self._limiter.admit(host, self._loop.time())
        if why is not None:
            self.log.warning("! refused %s: %s", raw.peer, why)
            return CloseCode.TRY_AGAIN_LATER, why
        self._admitted[raw.id] = host
        return None

    def _release(self, raw_id: ConnId) -> None:
        host = self._admitted.pop(raw_id, None)
        if host is not None:
            self._limiter.release(host)

    def _handshake_failed(self, raw: Socket, error: HandshakeFailed) -> None:
        self._release(raw.id)
        if self.state is not NodeState.RUNNING:
            return
        self.log.warning("! secure handshake with %s failed: %s", raw.peer, error)
        # Count it against the address of a peer that dialled us and failed; not our
        # own dials (the server may just be full) nor a dial of ourselves.
        if (
            raw.inbound
            and str(error) != "dialled ourselves"
            and self.store is not None
            and self.store.count_packages(f"address:{raw.host}", invalid=1)
        ):
            self._block(None, raw.host, "too many failed handshakes")
        if self.client is not None and not raw.inbound:
            self.client.dial_failed(raw.peer, error)
        self.tasks.spawn(self._call_hooks("on_socket_error", raw, error), "on_socket_error hooks")

    def penalize(self, socket: Socket, reason: str) -> None:
        """
        Count one invalid package against a peer, as the node does for bad input; past
        the block policy's ratio the peer is blocked and disconnected. For threads that
        find a peer's message invalid at their level.
        """
        conn = self._conns.get(socket.id)
        if conn is None:
            return
        socket.stats.invalid_in += 1
        conn.log.warning("! %s", reason)
        self._count_invalid(conn, reason)

    async def _call_hooks(self, name: str, *args: Any) -> None:
        for thread in self.threads:
            await self._call(thread, name, *args)

    def _block(
        self,
        peer_id: str | None,
        address: str | None,
        reason: str,
        *,
        socket: Socket | None = None,
    ) -> None:
        """
        Block a peer by id and address for ``block_duration``; close its connections,
        and ``socket``, the one that crossed the policy.

        Loopback addresses are not blocked (unless ``limit_loopback``): every local peer
        shares them. A local peer without a peer id (plain mode) is only disconnected.
        """
        if address is not None and is_loopback(address) and not self.options.limit_loopback:
            address = None
        if peer_id is None and address is None:
            if socket is not None and not socket.closed:
                self.log.warning(
                    "! disconnecting %s: %s (loopback addresses are not blocked)",
                    socket.peer,
                    reason,
                )
                socket.close_soon(CloseCode.POLICY_VIOLATION, fit_reason(f"disconnected: {reason}"))
            else:
                self.log.debug("! not blocking a loopback address: %s", reason)
            return
        self.log.warning(
            "! blocking %s for %g s: %s",
            " and ".join(x for x in (peer_id, address) if x),
            self.options.block_duration,
            reason,
        )
        if self.store is not None:
            self.tasks.spawn(
                self.store.block(peer_id=peer_id, address=address, reason=reason),
                f"block {peer_id or address}",
            )
        for conn in list(self._conns.values()):
            other = conn.socket
            if (peer_id is not None and other.peer_id == peer_id) or (
                address is not None and other.host == address and other.inbound
            ):
                other.close_soon(CloseCode.POLICY_VIOLATION, fit_reason(f"blocked: {reason}"))
        if socket is not None and not socket.closed:
            socket.close_soon(CloseCode.POLICY_VIOLATION, fit_reason(f"blocked: {reason}"))

    def _prefer(self, new: Socket, existing: Socket) -> bool:
        """
        Of two connections to one peer, whether to keep the new one.

        Both sides decide alike: keep the connection dialled by the peer with the
        smaller id; of two dialled by the same peer, keep the older.
        """
        assert self.identity is not None
        ours = self.identity.peer_id

        def dialler(socket: Socket) -> str:
            return (socket.peer_id or "") if socket.inbound else ours

        return dialler(new) < dialler(existing)

    def _refuse(self, socket: Socket, code: int, reason: str) -> None:
        """Close a connection the node won't take, and keep track of it until it is."""
        if not isinstance(socket, SecureSocket):  # the secure layer tracks its raw ones
            self._refused[socket.id] = socket
        socket.close_soon(code, reason)

    def _opened(self, socket: Socket, role: Role, hook: str) -> None:
        if self.state is not NodeState.RUNNING:
            self._refuse(socket, CloseCode.GOING_AWAY, "node stopping")
            return
        peer_id = socket.peer_id
        if peer_id is not None:
            if self.store is not None and self.store.is_blocked(peer_id=peer_id):
                self.log.info("! refused %s: peer %s is blocked", socket.peer, short_id(peer_id))
                self._refuse(socket, CloseCode.POLICY_VIOLATION, "blocked")
                return
            existing = self._by_peer_id.get(peer_id)
            if existing is not None:
                if not self._prefer(socket, existing.socket):
                    self.log.debug("= %s duplicates a connection to %s", socket.peer, peer_id)
                    if self.client is not None and not socket.inbound:
                        # So that the client doesn't dial this URL again while the
                        # peer is connected.
                        self.client.remember_peer(socket.peer, peer_id)
                    self._refuse(socket, CloseCode.NORMAL_CLOSURE, "duplicate connection")
                    return
                existing.socket.close_soon(CloseCode.NORMAL_CLOSURE, "duplicate connection")
        log = _PeerLog(self.log, {"peer": socket.peer})
        conn = self._conns[socket.id] = PeerConnection(socket, role, log)
        if peer_id is not None:
            self._by_peer_id[peer_id] = conn
        role.connection_opened(socket)
        who = f" (peer {short_id(peer_id)})" if peer_id is not None else ""
        log.info("= %s%s", "connected to us" if socket.inbound else "connected", who)
        if not socket.inbound and self.client is not None and self.store is not None:
            self.tasks.spawn(
                self.store.record_connected(
                    peer_id=peer_id or f"address:{socket.host}",
                    url=self.client.store_url(socket.peer),
                    address=socket.host,
                ),
                "record connection",
            )
        self._enqueue(conn, _Hook(hook, socket))
        try:
            self.send_package(socket, self._hello_package())
        except ConnectionClosed:  # pragma: no cover - closed in a hook already
            return
        if self.gossip is not None:
            self.gossip.connection_opened(socket)

    def _hello_package(self) -> Package:
        """The version talk (plain mode), or the hello (secure mode) with our id and URLs."""
        if self._secure is None:
            return build_package(
                PackageType.TALK, VERSION_EVENT, self.version_body, alt=self.options.alt
            )
        body = {**self.version_body, "peer_id": self.peer_id, "listen_urls": self.listen_urls}
        return build_package(PackageType.TALK, HELLO_EVENT, body, alt=self.options.alt)

    def on_message(self, socket: Socket, data: bytes | str) -> None:
        conn = self._conns.get(socket.id)
        if conn is None:
            return  # refused, or the node is stopping
        try:
            package = decode(data, max_size=self.options.max_package_size)
        except PackageError as exc:
            self._invalid(conn, exc, data)
            return
        if self._debug:
            conn.log.debug("< %s", package)
        store = self.store
        key = socket.peer_id or f"address:{socket.host}"
        if store is not None and store.count_packages(key, good=1):
            # Past the policy, even if this package was a good one: a peer mixing good
            # packages among its bad ones must not slip through.
            self._block(socket.peer_id, socket.host, "too many invalid packages", socket=socket)
            return
        package_type = package.type
        if package_type in RESPONSE_TYPES:
            assert self._table is not None
            self._process(self._table.receive_response(socket.id, package))
            return
        if package_type is PackageType.GOSSIP and self.gossip is not None:
            self.gossip.receive(socket, package)
            return
        if package_type is PackageType.TALK and package.event in (VERSION_EVENT, HELLO_EVENT):
            self._receive_version(conn, package)
        elif package_type in REQUEST_TYPES and not self._request_allowed(conn, package):
            return
        if (package_type, package.event) not in self.handlers:
            if package_type in REQUEST_TYPES:
                self._answer_error(
                    socket,
                    package.type,
                    package.event,
                    package.tag,
                    f"no handler for {package_type.name} {package.event!r}",
                )
            elif self._debug and package.event not in (VERSION_EVENT, HELLO_EVENT):
                conn.log.debug("- no handler for %s %r", package_type.name, package.event)
            return
        self._enqueue(conn, package)

    def on_error(self, socket: Socket, error: Exception) -> None:
        conn = self._conns.get(socket.id)
        if conn is None:
            return
        socket.stats.invalid_in += 1
        conn.log.warning("! connection failed: %s", error)
        if isinstance(error, NoiseError):
            # A message that doesn't decrypt on an authenticated channel: tampering.
            self._block(socket.peer_id, socket.host, f"protocol violation: {error}", socket=socket)
        self._enqueue(conn, _Hook("on_socket_error", socket, error))

    def on_close(self, socket: Socket) -> None:
        self._refused.pop(socket.id, None)
        self._release(socket.raw.id if isinstance(socket, SecureSocket) else socket.id)
        conn = self._conns.pop(socket.id, None)
        if conn is None:
            return
        if socket.peer_id is not None and self._by_peer_id.get(socket.peer_id) is conn:
            del self._by_peer_id[socket.peer_id]
        conn.role.connection_closed(socket)
        if self.gossip is not None:
            self.gossip.connection_closed(socket)
        conn.log.info("= connection closed (%s %s)", socket.close_code, socket.close_reason or "-")
        if self._table is not None:
            self._process(self._table.connection_lost(socket.id), socket)
            self._schedule_timer()  # rerouted requests may have new deadlines
        self._enqueue(conn, _Hook("on_socket_close", socket))

    # Receiving

    def _invalid(self, conn: PeerConnection, exc: PackageError, data: bytes | str = b"") -> None:
        """Count a bad package against its peer, log it, and answer it if we can."""
        socket = conn.socket
        if isinstance(data, bytes) and data.startswith(HANDSHAKE_MAGIC):
            conn.log.warning("! %s", SECURE_PEER)
            socket.close_soon(CloseCode.POLICY_VIOLATION, SECURE_PEER)
            return
        socket.stats.invalid_in += 1
        conn.invalid += 1
        self._count_invalid(conn, "too many invalid packages")
        if conn.invalid <= _WARN_INVALID:
            suffix = "; more are logged at debug level" if conn.invalid == _WARN_INVALID else ""
            conn.log.warning("! invalid package: %s%s", exc, suffix)
        else:
            conn.log.debug("! invalid package: %s", exc)
        if exc.package_type is not None and exc.tag and exc.package_type in REQUEST_TYPES:
            package_type = PackageType(exc.package_type)
            self._answer_error(
                socket, package_type, exc.event or "", exc.tag, f"invalid request: {exc.reason}"
            )

    def _count_invalid(self, conn: PeerConnection, reason: str) -> None:
        """Count one invalid package against the peer; block it past the policy's ratio."""
        socket = conn.socket
        key = socket.peer_id or f"address:{socket.host}"
        if self.store is not None and self.store.count_packages(key, invalid=1):
            self._block(socket.peer_id, socket.host, reason, socket=socket)

    def _request_allowed(self, conn: PeerConnection, package: Package) -> bool:
        """Apply the per-peer request rate; answer and count what is over it."""
        now = self._loop.time()
        bucket = conn.requests
        if bucket is None:
            bucket = conn.requests = TokenBucket(
                self.options.request_rate, self.options.request_burst, now
            )
        if bucket.take(now):
            return True
        socket = conn.socket
        socket.stats.invalid_in += 1
        self._answer_error(
            socket,
            package.type,
            package.event,
            package.tag,
            f"rate limited: more than {self.options.request_rate:g} requests/s",
        )
        if bucket.debt > self.options.request_burst:
            conn.log.warning("! request rate far over the limit: disconnecting")
            socket.close_soon(CloseCode.POLICY_VIOLATION, "request rate far over the limit")
        else:
            self._count_invalid(conn, "request rate over the limit")
        return False

    def _receive_version(self, conn: PeerConnection, package: Package) -> None:
        socket = conn.socket
        try:
            check_version(package.body, alt=self.options.alt)
        except HandshakeError as exc:
            socket.stats.invalid_in += 1
            conn.log.warning("! incompatible peer: %s", exc)
            socket.close_soon(CloseCode.PROTOCOL_ERROR, fit_reason(str(exc)))
            return
        if package.event == HELLO_EVENT:
            if socket.peer_id is not None and package.body.get("peer_id") != socket.peer_id:
                self._block(
                    socket.peer_id, socket.host, "hello names another peer id", socket=socket
                )
                return
            urls, problem = validate_urls(package.body.get("listen_urls", []), limit=8)
            if problem is not None:
                conn.log.warning("! invalid listen_urls in hello: %s", problem)
                self._count_invalid(conn, "invalid listen URLs")
            conn.listen_urls = urls
            if self.store is not None and urls and socket.peer_id is not None:
                source = PeerSource.INBOUND if socket.inbound else PeerSource.EXCHANGE
                self.tasks.spawn(
                    self.store.add_urls(urls, source, peer_id=socket.peer_id), "record urls"
                )
        conn.peer_version = package.body
        conn.log.debug(
            "= peer runs %s %s", package.body.get("library"), package.body.get("library_version")
        )

    def _enqueue(self, conn: PeerConnection, item: Package | _Hook) -> None:
        inbox = conn.inbox
        inbox.append(item)
        if conn.worker is None:
            worker = _start_task(self._loop, self._work(conn))
            if not worker.done():  # an eager task may have finished already
                conn.worker = worker
                self._workers.add(worker)
        elif len(inbox) > self.options.max_pending_packages and not conn.paused:
            conn.paused = True
            conn.socket.pause_reading()
            conn.log.debug("= %d packages waiting for handlers: reading paused", len(inbox))

    async def _work(self, conn: PeerConnection) -> None:
        """Run the handlers of one connection's packages, in order."""
        inbox = conn.inbox
        resume_at = self.options.max_pending_packages // 2
        try:
            while inbox:
                item = inbox.popleft()
                if conn.paused and len(inbox) <= resume_at:
                    conn.paused = False
                    conn.socket.resume_reading()
                if type(item) is Package:
                    await self._handle(conn, item)
                else:
                    assert isinstance(item, _Hook)
                    for thread in self.threads:
                        await self._call(thread, item.name, *item.args)
        finally:
            if conn.worker is not None:
                self._workers.discard(conn.worker)
                conn.worker = None

    async def _handle(self, conn: PeerConnection, package: Package) -> None:
        socket = conn.socket
        package_type = package.type
        is_request = package_type in REQUEST_TYPES
        for thread, handler in self.handlers.get(package_type, package.event):
            try:
                result = handler(socket, package)
                if result is not None and type(result) is not dict and inspect.isawaitable(result):
                    result = await result
                response = None
                if is_request and result is not None:
                    # Raises TypeError or ValueError if the handler returned no JSON object.
                    response = build_package(
                        _RESPONSE_TYPE[package_type],
                        "pong" if package_type is PackageType.HEARTBEAT_PING else package.event,
                        result,
                        tag=package.tag,
                        alt=self.options.alt,
                    )
            except Exception:
                self.log.error(
                    "! handler of %s %r in %s failed",
                    package_type.name,
                    package.event,
                    thread.path or type(thread).__name__,
                    exc_info=True,
                )
                if is_request:
                    # No details: they may be sensitive (as websockets does).
                    self._answer_error(
                        socket,
                        package_type,
                        package.event,
                        package.tag,
                        f"handler of {package.event!r} failed",
                    )
                continue
            if response is not None:
                try:
                    await self.send(socket, response)
                except ConnectionClosed:
                    return

    async def _call(self, thread: Thread, name: str, *args: Any) -> None:
        """Call a thread's method or hook, sync or async; log what it raises."""
        try:
            result = getattr(thread, name)(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.log.error(
                "! %s of %s failed", name, thread.path or type(thread).__name__, exc_info=True
            )

    # Sending

    def send_package(self, socket: Socket, package: Package) -> None:
        conn = self._conns.get(socket.id)
        if self._debug:
            (conn.log if conn is not None else self.log).debug("> %s", package)
        if conn is not None:
            if socket.write_paused:
                conn.backlog += 1
                if conn.backlog > self.options.max_send_queue:
                    reason = f"send queue full: {self.options.max_send_queue} packages unread"
                    conn.log.warning("! %s: disconnecting", reason)
                    socket.close_soon(CloseCode.POLICY_VIOLATION, reason)
                    raise ConnectionClosed(CloseCode.POLICY_VIOLATION, reason)
            else:
                conn.backlog = 0
        socket.write(encode(package))

    async def send(self, socket: Socket, package: Package) -> None:
        self.send_package(socket, package)
        await socket.drain()

    def _send_nowait(self, conn: ConnId, package: Package) -> None:
        """The request table's ``send``: never raises."""
        c = self._conns.get(conn)
        if c is None:
            return  # its on_close already ran, or is about to: the table hears of it
        try:
            self.send_package(c.socket, package)
        except ConnectionClosed:
            pass  # on_close will report the loss to the table

    def _answer_error(
        self, socket: Socket, request_type: PackageType, event: str, tag: str, error: str
    ) -> None:
        response_type = _RESPONSE_TYPE.get(request_type)
        if response_type is None or not tag:
            return
        try:
            self.send_package(
                socket,
                build_package(
                    response_type, event, {"error": error}, tag=tag, alt=self.options.alt
                ),
            )
        except ConnectionClosed:
            pass

    # Requests

    async def request(
        self,
        socket: Socket,
        event: str,
        body: Body,
        *,
        type: PackageType,
        reroute: bool = False,
        timeout: float | None = None,
    ) -> Body:
        if type not in REQUEST_TYPES:
            raise ValueError(f"{type!r} is not a request type")
        table = self._table
        if table is None:
            raise NodeStateError("the node is not started")
        if self.state is not NodeState.RUNNING:
            raise ConnectionClosed(CloseCode.GOING_AWAY, "node stopping")
        if socket.closed or socket.id not in self._conns:
            raise ConnectionClosed(socket.close_code, socket.close_reason)
        package = build_package(type, event, body, alt=self.options.alt)
        waiter = table.request(socket.id, package, reroute=reroute, timeout=timeout)
        future: asyncio.Future[Body] = self._loop.create_future()
        self._futures[waiter] = future
        # The timer must fire by the earliest deadline; this request's is usually later
        # than the one already scheduled, so nothing needs to be computed.
        deadline = self._loop.time() + (table.response_timeout if timeout is None else timeout)
        if reroute:
            deadline = min(deadline, self._loop.time() + table.stalled_timeout)
        if self._timer is None or deadline < self._timer_when:
            self._schedule_timer()
        try:
            try:
                await socket.drain()
            except ConnectionClosed:
                pass  # the table learns of it from on_close
            return await future
        finally:
            if self._futures.pop(waiter, None) is not None:
                table.cancel(waiter)  # cancelled: nobody waits any more

    def _reroute_target(self, tried: Collection[ConnId]) -> ConnId | None:
        assert self.client is not None
        socket = self.client.find_next_server(tried)
        return socket.id if socket is not None else None

    def _schedule_timer(self) -> None:
        """Make the timer fire at the table's next deadline (answered requests leave
        earlier deadlines behind: the timer may then fire for nothing, which is cheap)."""
        assert self._table is not None
        deadline = self._table.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_when = deadline

    def _on_timer(self) -> None:
        self._timer = None
        assert self._table is not None
        self._process(self._table.tick())
        self._schedule_timer()

    def _process(self, events: list[DeliverEvent], closed: Socket | None = None) -> None:
        """Turn the request table's events into results for the waiting callers."""
        futures = self._futures
        for event in events:
            if type(event) is ResponseReceived:
                first = True
                for waiter in event.waiters:
                    future = futures.pop(waiter, None)
                    if future is not None and not future.done():
                        # Each caller gets its own copy of the body.
                        body = event.package.body if first else _copy_body(event.package)
                        future.set_result(body)
                        first = False
            elif type(event) is ResponseUnmatched:
                self._unmatched(event.conn, event.package)
            elif type(event) is RequestExpired:
                future = futures.pop(event.waiter, None)
                if future is not None and not future.done():
                    request = event.request
                    future.set_exception(RequestTimeout(request.event, request.tag, event.timeout))
            elif type(event) is RequestFailed:
                code = closed.close_code if closed is not None else None
                reason = closed.close_reason if closed is not None else ""
                for waiter in event.waiters:
                    future = futures.pop(waiter, None)
                    if future is not None and not future.done():
                        future.set_exception(ConnectionClosed(code, reason))
            elif type(event) is RequestRerouted:
                self.log.debug(
                    "= request %r (tag %s) %s: rerouted from #%d to #%d",
                    event.request.event,
                    event.request.tag,
                    event.reason,
                    event.from_conn,
                    event.to_conn,
                )
            elif type(event) is RerouteUnavailable:
                self.log.debug(
                    "= request %r (tag %s) stalled on #%d; no other server to reroute to, "
                    "still waiting",
                    event.request.event,
                    event.request.tag,
                    event.conn,
                )

    def _unmatched(self, conn_id: ConnId, package: Package) -> None:
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn.socket.stats.unmatched_in += 1
        if (package.type, package.event) in self.handlers:
            self._enqueue(conn, package)
        elif self._debug:
            conn.log.debug("- dropped %s: it matches no pending request", package)

    # Drivers

    def _driver(self, name_or_driver: str | Driver) -> Driver:
        if isinstance(name_or_driver, Driver):
            return name_or_driver
        driver = self._drivers.get(name_or_driver)
        if driver is None:
            cls = driver_class(name_or_driver)
            driver = self._drivers[name_or_driver] = cls(self.options.driver_options())
        return driver

    def driver_for_url(self, url: str) -> Driver:
        scheme = scheme_of(split_peer_url(url)[0])
        configured = self.options.driver
        if isinstance(configured, Driver) and scheme in (
            configured.scheme,
            f"{configured.scheme}s",
        ):
            return configured
        return self._driver(scheme)


if sys.version_info >= (3, 12):

    def _start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        # Run the handlers at once, up to their first suspension: most packages are
        # handled without a trip through the event loop.
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        return loop.create_task(coro)


def _copy_body(package: Package) -> Body:
    """A fresh copy of a package's body."""
    body: Body = json.loads(package.body_json) if package.body_json else dict(package.body)
    return body


async def _create(options: NodeOptions) -> Node:
    node = Node(options)
    await node.start()
    return node


async def create_server(
    *, cwd: str | Path | None = None, host: str = "127.0.0.1", port: int = 1107, **options: Any
) -> Node:
    """
    Create and start a node that accepts peers.

    Args:
        cwd: Directory holding ``threads-enabled/``.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see ``node.url``).
        **options: Any other :class:`NodeOptions`.

    """
    return await _create(
        NodeOptions.from_kwargs(cwd=cwd, server=True, host=host, port=port, **options)
    )


async def create_client(
    *, cwd: str | Path | None = None, peers: Collection[str] = (), **options: Any
) -> Node:
    """
    Create and start a node that dials ``peers`` and stays connected to them.

    Use ``await node.client.wait_connected()`` to wait for the first connection.

    """
    return await _create(
        NodeOptions.from_kwargs(cwd=cwd, client=True, peers=tuple(peers), **options)
    )


async def create_node(
    *,
    cwd: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 1107,
    peers: Collection[str] = (),
    **options: Any,
) -> Node:
    """Create and start a node that is both server and client."""
    return await _create(
        NodeOptions.from_kwargs(
            cwd=cwd, server=True, client=True, host=host, port=port, peers=tuple(peers), **options
        )
    )
