"""
The node's connections: the drivers' listener, each connection's protocol, inbox and
worker, and the send path.

Each received message goes through the connection's
:class:`~trustp2p.protocol.connection.ConnectionProtocol`, whose actions this module
carries out. Responses resolve requests at once; other packages go to a per-connection
inbox that one worker drains in order, calling thread handlers. A slow handler delays
only its connection; when too many packages wait, or the peer is over its budget, the
node stops reading from it a while.

"""

from __future__ import annotations

__all__ = ["Connections"]

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ..admin.counters import INVALID, count
from ..drivers.base import Listening, Socket
from ..exceptions import ConnectionClosed, ConnectionDropped, HandshakeError, SelfDialError
from ..identity import short_id
from ..loop import loop_clock
from ..protocol.actions import (
    Action,
    Block,
    Close,
    DeliverGossip,
    DeliverResponse,
    Dispatch,
    Ignore,
    Introduced,
    Penalty,
    PingAnswered,
    SelfDial,
    Send,
    Throttle,
    Unhandled,
)
from ..protocol.admission import Admission, keep_new_connection
from ..protocol.close import CloseCode
from ..protocol.connection import ConnectionProtocol, ConnectionState, body_cost
from ..protocol.hosts import listen_families, share_group
from ..protocol.limits import BudgetTable, is_loopback
from ..protocol.package import Package, PackageType, check_encoded_size, encode
from ..protocol.peers import peer_key
from ..security.channel import SecureSocket
from ..storage.peerstore import PeerSource
from .dispatch import Hook
from .inbound import Inbound
from .peer import PeerConnection, PeerLog, SendBacklog, watch_stall
from .penalties import Penalties
from .twins import Twins
from .workers import Workers

if TYPE_CHECKING:
    from .node import Node
    from .roles import Role

GOOD_BATCH = 32
"""Valid packages are counted in the peer store (and judged by the block policy) in
batches of this many after the first, when an invalid one arrives, at a heartbeat (so
that an idle peer's ``last_seen`` is about ``heartbeat_timeout`` old) and at the close."""

_PING: Final = 10  # PackageType.HEARTBEAT_PING as a plain int: compared per package
_PONG: Final = 11  # (a set lookup of the enum cost 0.4 % of a round trip, compiled)


class Connections:
    """
    The open connections of a node, and the driver callbacks that feed them.

    This is the :class:`~trustp2p.drivers.base.AcceptListener` of the node's drivers
    (behind the secure layer in secure mode). Not for applications: use the node's API.

    Attributes:
        inbound: Inbound connections from accept to introduction (limits, deadline).
        workers: The connections' workers, which run thread handlers and hooks.

    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._options = options = node.options
        self._logger = logging.getLogger(__name__)
        self._conns: dict[int, PeerConnection] = {}
        self._by_peer_id: dict[str, PeerConnection] = {}
        self._refused: dict[int, Socket] = {}  # plain mode: refused, not closed yet
        self.inbound = Inbound(node, self)
        self._budgets = BudgetTable(options.request_rate, options.request_burst)
        self._gossip_budgets = BudgetTable(options.gossip_rate, options.gossip_burst)
        self.penalties = Penalties(node, self)
        self.workers = Workers(node)
        self.twins = Twins(self, node.nonce, probe=node.heartbeat.probe)
        self._debug = self._logger.isEnabledFor(logging.DEBUG)
        self._metrics = node.metrics
        self._last_gossip: tuple[Package | None, bytes] = (None, b"")  # one encoding a message
        self._backlog = SendBacklog()  # bytes written unread, all connections together

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def admission(self) -> Admission:
        """The inbound admission rules (``inbound.admission``)."""
        return self.inbound.admission

    def __iter__(self) -> Iterator[PeerConnection]:
        """The open connections, oldest first (a snapshot: safe to close them)."""
        return iter(list(self._conns.values()))

    def get(self, conn_id: int) -> PeerConnection | None:
        """The open connection with this id, if any."""
        return self._conns.get(conn_id)

    def by_peer_id(self, peer_id: str) -> PeerConnection | None:
        """The open connection to an authenticated peer, if any."""
        return self._by_peer_id.get(peer_id)

    def peer_ids(self) -> set[str]:
        """The authenticated peer ids of the open connections."""
        return set(self._by_peer_id)

    def budget_key(self, socket: Socket) -> str:
        """Whose request (and address) budget a connection spends: its peer's (by id),
        else its address's, so that reconnecting doesn't refill it. Local peers without
        an id (plain mode, loopback, not ``limit_loopback``) each have their
        connection's."""
        if socket.peer_id is not None:
            return socket.peer_id
        if self._options.limit_loopback or not is_loopback(socket.host):
            return peer_key(None, socket.host)
        return f"connection:{socket.id}"

    def share_group(self, socket: Socket) -> str | None:
        """Whose share of a node-wide budget a peer spends with others (its address's,
        :func:`~trustp2p.protocol.hosts.share_group`); None: local, each apart."""
        if not self._options.limit_loopback and is_loopback(socket.host):
            return None
        return share_group(socket.host)

    # Driver callbacks (the AcceptListener protocol)

    def on_start(self, listening: Listening) -> None:
        families = listen_families(self._options.host)  # (tester39 F5)
        shown = f"{listening.url} ({families})" if families else listening.url
        self._logger.info("= listening on %s", shown)

    def on_accept(self, socket: Socket) -> None:
        self.inbound.accept(socket)

    def on_connection(self, socket: Socket) -> None:
        node = self._node
        assert node.server is not None
        if node.secure_layer is None:
            # Plain mode: admit here (in secure mode, the secure layer did, before any crypto)
            refusal = self.inbound.admit(socket)
            if refusal is not None:
                self._refuse(socket, *refusal)
                return
        self._opened(socket, node.server, "on_socket_connection")

    def on_open(self, socket: Socket) -> None:
        assert self._node.client is not None
        self._opened(socket, self._node.client, "on_socket_open")

    def on_message(self, socket: Socket, data: bytes | str) -> None:
        conn = self._conns.get(socket.id)
        if conn is None:
            return  # refused, or the node is stopping
        protocol = conn.protocol
        actions = protocol.receive_data(data)
        if socket.id in self.inbound.awaiting and protocol.state is ConnectionState.OPEN:
            if not self.inbound.introduced(socket):
                return  # refused: nothing of its package is carried out
        if self._debug:  # the package, or the start of what wasn't read as one
            conn.log.debug("< %s", protocol.last_package or f"not read: {data[:64]!r}")
        package = protocol.last_package  # counted inline: this runs for every package
        protocol.last_package = None  # read once: an idle connection holds no package
        slot = package.type if protocol.last_valid and package is not None else INVALID
        metrics = self._metrics
        if data:  # (the original's empty text frame is no package, nor invalid)
            metrics.packages_in[slot] += 1
            metrics.bytes_in[slot] += len(data)
        if protocol.last_valid and (
            protocol.valid - conn.counted >= GOOD_BATCH
            or not conn.counted
            or slot == _PING
            or slot == _PONG
        ):  # the first package at once: the peer store knows the peer from then on
            if self.count_good(conn):
                # Past the policy, even if these packages were good: bad ones mixed in count
                self.penalties.offended(conn)
                return
        for action in actions:
            # The two actions of nearly every package, without _carry_out's frame.
            kind = type(action)
            if kind is Dispatch:
                self.workers.put(conn, action.package)  # type: ignore[union-attr]
            elif kind is DeliverResponse:
                self._node.requests.receive_response(socket, action.package)  # type: ignore[union-attr]
            else:
                self._carry_out(conn, action)

    def on_error(self, socket: Socket, error: Exception) -> None:
        conn = self._conns.get(socket.id)
        if conn is None:
            return
        if isinstance(error, ConnectionDropped):  # the peer's end: churn, not an offence
            self._metrics.dropped += 1
            self.inbound.log(conn.log, logging.INFO, "dropped", "= connection dropped: %s", error)
            return
        socket.stats.invalid_in += 1
        self._metrics.invalid_package(type(error).__name__)
        # A message that doesn't decrypt on a secure channel closes it (1008), and is not
        # held against the peer: bytes changed on the way (TCP's checksum misses some
        # changes; anyone on the path can inject a segment) are not the peer's doing.
        self.inbound.warn(conn.log, "connection failed", "! connection failed: %s", error)
        self.workers.put(conn, Hook("on_socket_error", socket, error))

    def on_close(self, socket: Socket) -> None:
        node = self._node
        self._refused.pop(socket.id, None)
        self.inbound.closed(socket)
        conn = self._conns.pop(socket.id, None)
        if conn is None:
            return
        self.count_good(conn)  # the rest of the batch; the peer left, no verdict
        conn.drained()
        self.penalties.forget(socket)
        conn.protocol.connection_lost()
        if conn.throttle is not None:
            conn.throttle.cancel()
        if socket.peer_id is not None and self._by_peer_id.get(socket.peer_id) is conn:
            del self._by_peer_id[socket.peer_id]
        self.twins.closed(conn)
        self._node.clock_watch.closed(socket)
        conn.role.connection_closed(socket)
        if node.gossip is not None:
            node.gossip.connection_closed(socket)
        closed = (socket.close_code, socket.close_reason or "-")
        self.inbound.note(conn.log, socket, "closed", "= connection closed (%s %s)", *closed)
        node.requests.connection_lost(socket)
        if conn.worker is not None:
            conn.worker.connection_lost(conn.log)  # its requests can't be answered now
        self.workers.put(conn, Hook("on_socket_close", socket))

    def handshake_failed(self, raw: Socket, error: HandshakeError) -> None:
        """The secure layer reports a failed handshake."""
        node = self._node
        if not node.running or self.inbound.evicted(raw):
            return  # stopping, or we dropped it to make room: not the peer's fault
        if not error.offence:  # both ends are this node, or the peer gave up
            self.inbound.log(self._logger, logging.INFO, "ended", "= %s: %s", raw.peer, error)
        else:
            self.inbound.failed_handshake(self._logger, raw, error)
        count(self._metrics.handshakes, type(error).__name__)
        # Against the address of a peer that dialled us: not our dials, nor ourselves.
        if raw.inbound and error.offence:
            self.penalties.handshake_failed(raw)
        if node.client is not None and not raw.inbound:
            node.client.dial_failed(raw.peer, error)
        node.tasks.spawn(node.call_hooks("on_socket_error", raw, error), "on_socket_error hooks")

    def _refuse(self, socket: Socket, code: int, reason: str) -> None:
        """Close a connection the node won't take, and keep track of it until it is."""
        if not isinstance(socket, SecureSocket):  # the secure layer tracks its raw ones
            self._refused[socket.id] = socket
        socket.close_soon(code, reason)

    def _duplicate(self, socket: Socket, peer_id: str) -> bool:
        """Apply the one-connection-per-peer rule; True if ``socket`` was refused."""
        existing = self._by_peer_id.get(peer_id)
        if existing is None:
            return False
        node = self._node
        assert node.peer_id is not None
        keep = keep_new_connection(
            node.peer_id,
            peer_id,
            new_inbound=socket.inbound,
            existing_inbound=existing.socket.inbound,
        )
        reason = self.twins.processes(self._logger, existing, socket, keep_new=keep)
        if keep:
            existing.socket.close_soon(CloseCode.NORMAL_CLOSURE, reason)
            return False
        self._logger.debug("= %s duplicates a connection to %s", socket.peer, peer_id)
        if node.client is not None and not socket.inbound:
            node.client.duplicate_dialled(socket, peer_id)
        self._refuse(socket, CloseCode.NORMAL_CLOSURE, reason)
        return True

    def _opened(self, socket: Socket, role: Role, hook: str) -> None:
        node = self._node
        if not node.running:
            self._refuse(socket, CloseCode.GOING_AWAY, "node stopping")
            return
        peer_id = socket.peer_id
        if peer_id is not None:
            # A blocked id, or a new one from an address refusing new ids: once the id
            # is proven (secure mode; the address alone is judged at accept).
            refused = self.penalties.refusal(socket)
            if refused is not None:
                self._refuse(socket, *refused)
                return
            storm = self.inbound.identified(socket) if socket.inbound else None
            if storm is not None:
                self._refuse(socket, *storm)
                return
            if self._duplicate(socket, peer_id):
                return
        conn = self._new_connection(socket, role)
        self.penalties.opened(socket)
        count(self._metrics.handshakes, "ok")
        if socket.inbound:
            self.inbound.opened(socket)
        role.connection_opened(socket)
        who = f" (peer {short_id(peer_id)})" if peer_id is not None else ""
        how = "connected to us" if socket.inbound else "connected"
        self.inbound.note(conn.log, socket, "connected", "= %s%s", how, who)
        if not socket.inbound and node.client is not None:
            node.tasks.spawn(node.client.record_connected(socket), "record connection")
        self.workers.put(conn, Hook(hook, socket))
        for action in conn.protocol.start():
            self._carry_out(conn, action)

    def _new_connection(self, socket: Socket, role: Role) -> PeerConnection:
        node = self._node
        options = self._options
        now = loop_clock(asyncio.get_running_loop())
        key = self.budget_key(socket)
        protocol = ConnectionProtocol(
            secure=node.secure_layer is not None,
            peer_id=socket.peer_id,
            introduction=node.introduction(),
            clock=now,
            handled=node.handlers.handled,
            request_budget=self._budgets.get(key, now()),
            gossip_budget=self._gossip_budgets.get(key, now()),
            alt=options.alt,
            max_package_size=options.max_package_size,
            liveness=options.liveness_timings(),
            inbound=socket.inbound,
            nonce=node.nonce,
        )
        log = PeerLog(self._logger, {"peer": socket.peer})
        conn = PeerConnection(socket, role, protocol, log, self._backlog, self.share_group(socket))
        self._conns[socket.id] = conn
        if socket.peer_id is not None:
            self._by_peer_id[socket.peer_id] = conn
        return conn

    # Carrying out the protocol's decisions

    def _carry_out(self, conn: PeerConnection, action: Action) -> None:
        kind = type(action)
        if kind is Dispatch:
            self.workers.put(conn, action.package)  # type: ignore[union-attr]
        elif kind is DeliverResponse:
            self._node.requests.receive_response(conn.socket, action.package)  # type: ignore[union-attr]
        elif kind is DeliverGossip:
            gossip = self._node.gossip
            if gossip is not None:
                gossip.receive(conn.socket, action.package)  # type: ignore[union-attr]
        elif kind is Send:
            try:
                self.send_package(conn.socket, action.package)  # type: ignore[union-attr]
            except ConnectionClosed:
                pass
        elif kind is PingAnswered:
            conn.socket.stats.last_rtt = action.rtt  # type: ignore[union-attr]
            self._metrics.heartbeat_rtt.observe(action.rtt)  # type: ignore[union-attr]
        elif kind is Throttle:
            self.throttle(conn, action.delay)  # type: ignore[union-attr]
        elif kind is Penalty:
            self._penalty(conn, action)  # type: ignore[arg-type]
        elif kind is Introduced:
            self._introduced(conn, action)  # type: ignore[arg-type]
        elif kind is Close:
            self.inbound.closing(conn.log, conn.socket, action.reason)  # type: ignore[union-attr]
            self.close(conn, action.code, action.reason)  # type: ignore[union-attr]
        elif kind is SelfDial:
            self._self_dial(conn, action)  # type: ignore[arg-type]
        elif kind is Block:
            socket = conn.socket
            self.penalties.block(socket.peer_id, socket.host, action.reason, socket=socket)  # type: ignore[union-attr]
        elif kind is Unhandled:
            self._unhandled(conn, action.package)  # type: ignore[union-attr]
        elif kind is Ignore and self._debug:
            conn.log.debug("- %s", action.reason)  # type: ignore[union-attr]

    def _unhandled(self, conn: PeerConnection, package: Package) -> None:
        """A package no thread handles: dropped, counted, said (:meth:`.Inbound.unhandled`)."""
        count(self._metrics.unhandled, name := package.type.name)
        socket = conn.socket  # (its identity, else its address: a peer of each)
        self.inbound.unhandled(conn.log, socket.peer_id or socket.peer, name, package.event[:40])

    def _penalty(self, conn: PeerConnection, penalty: Penalty) -> None:
        socket = conn.socket
        socket.stats.invalid_in += 1
        # Labelled by what was wrong: every reason of a decoder error starts alike.
        self._metrics.invalid_package(penalty.reason.removeprefix("invalid package: "))
        if penalty.warn:  # (a connection's first few, within the budget of all)
            suffix = "; more are logged at debug level" if penalty.last_warning else ""
            message = "! %s%s"
            self.inbound.log(conn.log, logging.WARNING, "invalid", message, penalty.reason, suffix)
        else:
            conn.log.debug("! %s", penalty.reason)
        judge = self.penalties
        if self.count_good(conn) or judge.crossed(socket, invalid=1) or judge.judged(conn):
            judge.offended(conn)

    def count_good(self, conn: PeerConnection) -> bool:
        """Count the connection's valid packages not yet counted in the peer store
        (batched: per package, that was a tenth of the framework's cost); True if that
        crossed the block policy (a plain connection: its own counts did)."""
        valid = conn.protocol.valid
        good = valid - conn.counted
        if not good:
            return False
        conn.counted = valid
        return self.penalties.crossed(conn.socket, good=good) or self.penalties.judged(conn)

    def _introduced(self, conn: PeerConnection, introduced: Introduced) -> None:
        socket = conn.socket
        store = self._node.store
        if store is not None and introduced.listen_urls and socket.peer_id is not None:
            urls = self._node.learned_urls(socket, introduced.listen_urls, own=True)
            source = PeerSource.INBOUND if socket.inbound else PeerSource.EXCHANGE
            self._node.tasks.spawn(
                store.add_urls(urls, source, peer_id=socket.peer_id), "record urls"
            )
        conn.introduced(body := introduced.body)
        self.twins.introduced(conn, body)
        gossip = self._node.gossip
        if gossip is not None and self._node.running and not socket.closed:
            gossip.peer_introduced(socket, conn.protocol.peer_max_size)
        self._node.clock_watch.introduced(socket, body)  # (after gossip: review64 R5)

    def _self_dial(self, conn: PeerConnection, self_dial: SelfDial) -> None:
        """Both ends of this connection are us: close it. Nobody is at fault, and the
        client doesn't dial that URL again soon."""
        socket = conn.socket
        conn.log.info("= %s: closing", self_dial.reason)
        self.close(conn, self_dial.code, self_dial.reason)
        node = self._node
        if node.client is not None and not socket.inbound:
            if node.peer_id is not None:
                node.client.remember_peer(socket.peer, node.peer_id)  # never a candidate
            node.client.dial_failed(socket.peer, SelfDialError(self_dial.reason))

    def close(self, conn: PeerConnection, code: int, reason: str) -> None:
        """Close a connection; a throttled or held one reads again to see the close through."""
        conn.read_again()
        conn.protocol.close()
        conn.socket.close_soon(code, reason)

    def throttle(self, conn: PeerConnection, delay: float, why: str = "the request budget") -> None:
        """Stop reading from a peer over a budget for ``delay`` seconds (see
        :meth:`PeerConnection.pause_for`)."""
        if conn.pause_for(delay):
            conn.log.debug("= over %s: reading paused for %.3f s", why, delay)
            self._metrics.throttles += 1

    def charge(self, socket: Socket, tokens: float) -> None:
        """Spend ``tokens`` more of a peer's request budget (see ``protocol.charge``)."""
        if (conn := self._conns.get(socket.id)) is not None:
            for action in conn.protocol.charge(tokens):
                self._carry_out(conn, action)

    def penalize(self, socket: Socket, reason: str) -> None:
        """Count one invalid package against a peer, found invalid by a thread."""
        conn = self._conns.get(socket.id)
        if conn is not None:
            for action in conn.protocol.penalise(reason):
                self._carry_out(conn, action)

    # Inboxes

    def unmatched(
        self, conn_id: int, package: Package, expected: PackageType | None = None
    ) -> None:
        """A response matching no request (or not its ``expected`` type): to handlers."""
        if (conn := self._conns.get(conn_id)) is None:
            return
        # The pong to the node's own ping (its heartbeat) waits in no request table.
        pong = package.type is PackageType.HEARTBEAT_PONG and conn.protocol.answered_ping
        if not pong:
            conn.socket.stats.unmatched_in += 1
            self._metrics.unmatched += 1
            # As a request's, body included: a flood of them is throttled (found in
            # review: 1 MB answers of [[],[],...] to nothing cost a token each).
            self.charge(conn.socket, 1 + body_cost(package.body_json, conn.protocol.slow_read))
        if self._node.handlers.handles(package.type, package.event):
            self.workers.put(conn, package)
        elif self._debug and not pong:
            why = f"a request a {expected.name} answers" if expected else "no pending request"
            conn.log.debug("- dropped %s: it matches %s", package, why)

    def all_sockets(self) -> list[Socket]:
        """Every connection, refused ones not closed yet too; throttled or held ones read
        again."""
        for conn in self._conns.values():
            conn.read_again()
        return [conn.socket for conn in self._conns.values()] + list(self._refused.values())

    # Sending

    def send_package(
        self, socket: Socket, package: Package, *, waited: bool = False, source: str = ""
    ) -> None:
        """
        Write ``package`` to ``socket`` without waiting.

        Args:
            waited: The caller waited for the write buffer to drain first (or is the
                request table, whose callers do): it doesn't count to ``max_send_queue``.
            source: Whom a gossip message is from, which shares the peer's send queue
                with the others (:class:`~trustp2p.protocol.source_shares.SourceShares`).

        Raises:
            ConnectionClosed: If the socket is closed, or more than ``max_send_queue``
                packages were written without waiting while the peer wasn't reading (it
                is then disconnected).
            PackageTooLarge: If it is over ``max_package_size`` (not sent; gossip over
                the peer's is left out: :meth:`PeerConnection.fits`).

        """
        last, data = self._last_gossip
        if package is not last:
            data = encode(package)
            check_encoded_size(package, len(data), self._options.max_package_size)
            if package.type is PackageType.GOSSIP:
                self._last_gossip = (package, data)
        conn = self._conns.get(socket.id)
        if self._debug:
            (conn.log if conn is not None else self._logger).debug("> %s", package)
        if conn is not None:
            if not conn.fits(package, len(data)):
                self._metrics.send_oversized += 1
                return
            if socket.write_paused:
                self._watch(conn)
                gossip, size, opts = package.type is PackageType.GOSSIP, len(data), self._options
                if not waited and (full := conn.queued(size, opts, gossip=gossip, source=source)):
                    if gossip:  # it catches up (gaps, catch-up)
                        self._metrics.send_dropped += 1
                        return
                    self._send_queue_full(conn, full)
            elif conn.backlog:
                conn.drained()
        self._metrics.packages_out[package.type] += 1
        self._metrics.bytes_out[package.type] += len(data)
        socket.write(data)

    def _send_queue_full(self, conn: PeerConnection, reason: str) -> None:
        socket = conn.socket
        if not socket.closed:
            conn.log.warning("! %s: disconnecting", reason)
            self._metrics.stall_disconnects += 1
            self.close(conn, CloseCode.POLICY_VIOLATION, reason)
        raise ConnectionClosed(CloseCode.POLICY_VIOLATION, reason)

    async def send(self, socket: Socket, package: Package) -> None:
        """Write ``package`` once the write buffer has room: a burst slows the caller
        down, and never counts against the peer."""
        if socket.write_paused:
            conn = self._conns.get(socket.id)
            if conn is not None:
                self._watch(conn)
            await socket.drain()
        self.send_package(socket, package, waited=True)

    def _watch(self, conn: PeerConnection) -> None:
        """Watch a connection whose write buffer is full, once."""
        if conn.stall is None and not conn.socket.closed:
            self._metrics.send_stalls += 1
            watch = watch_stall(conn, self._options.send_stall_timeout, self._stalled)
            conn.stall = self._node.tasks.spawn(watch, f"stall watch {conn.socket.peer}")

    def _stalled(self, conn: PeerConnection, reason: str) -> None:
        self.inbound.log(conn.log, logging.WARNING, "stalled", "! %s: disconnecting", reason)
        self._metrics.stall_disconnects += 1
        self.close(conn, CloseCode.POLICY_VIOLATION, reason)
        conn.socket.abort()  # it won't read our close frame either

    def send_nowait(self, conn_id: int, package: Package) -> None:
        """The request table's ``send``: never raises."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return  # its on_close already ran, or is about to: the table hears of it
        try:
            self.send_package(conn.socket, package, waited=True)
        except ConnectionClosed:
            pass  # on_close will report the loss to the table
