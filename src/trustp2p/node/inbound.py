"""
Inbound connections from their first byte: the asyncio shell of
:class:`~trustp2p.protocol.admission.Admission`.

A connection counts against ``max_inbound`` and the per-address limits from the moment
the transport accepts it (the drivers' ``on_accept``), before the WebSocket upgrade, the
Noise handshake and the peer's introduction. One deadline, ``handshake_timeout`` from
accept, covers all three; a connection past it is closed. When every slot is taken, the
oldest connection still in its handshake is dropped to make room for a new one, so
half-finished handshakes can't hold the node's slots against honest peers. When every
slot holds a finished connection, one from a less crowded network group may come in as
a candidate and, once introduced, take the slot of the newest connection of the most
crowded group (closed with 1013), so that one network can't hold them all.

"""

from __future__ import annotations

__all__ = ["UNHANDLED_SAID", "Inbound"]

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..admin.counters import count
from ..drivers.base import UPGRADE_FAILED, Socket
from ..exceptions import ConnectionClosed, HandshakeError
from ..protocol.actions import Send
from ..protocol.admission import Admission, Refusal
from ..protocol.close import CloseCode
from ..protocol.handshake import is_mode_mismatch
from ..protocol.log_budget import LogBudget
from ..protocol.refusal_notices import RefusalNotices
from ..security.channel import SecureSocket
from .penalties import refusal_reason

if TYPE_CHECKING:
    from .connections import Connections
    from .node import Node

UNHANDLED_SAID = 1024
"""The (peer, type, event) of unhandled packages a node remembers having said at INFO."""


_MAX_MISMATCHED = 1000  # addresses remembered as disagreeing on `secure`


def _probe_after(handshake_timeout: float | None, *, secure: bool) -> float | None:
    """When a plain connection that said nothing is pinged: half its handshake time."""
    return None if secure or handshake_timeout is None else handshake_timeout / 2


def _raw_id(socket: Socket) -> int:
    """The id of the driver's socket under ``socket`` (itself in plain mode)."""
    return socket.raw.id if isinstance(socket, SecureSocket) else socket.id


class Inbound:
    """
    The inbound connections of a node, from accept until they introduce themselves.

    :class:`~trustp2p.node.connections.Connections` feeds it the drivers' (or the
    secure layer's) ``on_accept`` and ``on_close``, asks it to admit each connection
    once its driver opened it, and reports each introduction. Not for applications.

    Attributes:
        admission: The rules (pure), keyed by the driver's socket ids.
        awaiting: Inbound connections open and not introduced yet: socket id -> the
            driver's socket id.
        log_budget: How many lines each kind of failed or refused connection, and of
            inbound connections opened and closed, may log (10 a minute, the rest at
            DEBUG), for the node's connections too.

    """

    def __init__(self, node: Node, connections: Connections) -> None:
        self._node = node
        self._connections = connections
        options = node.options
        self._timeout = options.handshake_timeout
        self._logger = logging.getLogger(__name__)
        self.log_budget = LogBudget()
        self.admission = Admission(
            max_inbound=options.max_inbound,
            limiter=options.address_limiter(),
            is_blocked=self._address_blocked,
            handshake_timeout=options.handshake_timeout,
            probe_after=_probe_after(options.handshake_timeout, secure=options.secure),
            storms=options.reconnect_storms(),
        )
        self._notices = RefusalNotices(exempt_loopback=not options.limit_loopback)
        self._accepted: dict[int, Socket] = {}  # driver sockets, accept to close
        self._evicted: set[int] = set()  # dropped by us to make room: not their fault
        self.awaiting: dict[int, int] = {}
        self._introduced: dict[int, int] = {}  # raw connection id -> its socket's id
        self._timer: asyncio.TimerHandle | None = None
        self._log_timer: asyncio.TimerHandle | None = None  # the log budget's summary
        self._mismatched: set[tuple[str, bool]] = set()  # (host, inbound) said to disagree
        self._unhandled: set[tuple[str, str, str]] = set()  # (peer, type, event) said

    def _address_blocked(self, host: str) -> bool:
        store = self._node.store
        return store is not None and store.is_blocked(address=host)

    @property
    def accepted(self) -> int:
        """Inbound connections accepted and not closed, refused ones included."""
        return len(self._accepted)

    def evicted(self, raw: Socket) -> bool:
        """Whether we dropped ``raw`` to make room for another connection."""
        return raw.id in self._evicted

    # What Connections reports

    def accept(self, raw: Socket) -> None:
        """A driver accepted ``raw``: it counts from now, or is refused (the reason is
        sent once the driver's own handshake is done)."""
        self._accepted[raw.id] = raw
        refusal = self._admit(raw)
        if refusal is None:
            return
        if self._notices.tell(raw.host, asyncio.get_running_loop().time()):
            raw.close_soon(*refusal)
        else:  # told a moment ago: no upgrade, no close frame (counted, as refused)
            raw.abort()

    def admit(self, raw: Socket) -> tuple[int, str] | None:
        """
        The driver opened ``raw`` (the secure layer asks before any cryptography):
        ``None`` to go on, or the close code and reason. A connection accepted before
        is checked again only if a proxy named its real address; one from a driver that
        doesn't report accepts is admitted now.
        """
        if not self._node.running:
            return CloseCode.GOING_AWAY, "node stopping"
        if raw.id not in self._accepted:
            self._accepted[raw.id] = raw
            return self._admit(raw)
        self.admission.progressed(raw.id)  # upgraded: before bare connects in eviction
        now = asyncio.get_running_loop().time()
        return self._refused(raw, self.admission.readdress(raw.id, raw.host, now))

    def identified(self, socket: Socket) -> tuple[int, str] | None:
        """
        An inbound connection opened with a proven peer id (secure mode): ``None`` to
        go on, or the close code and reason if that peer reconnects in a storm.
        """
        if socket.peer_id is None:
            return None
        now = asyncio.get_running_loop().time()
        return self._refused(socket, self.admission.identified(socket.peer_id, now))

    def opened(self, socket: Socket) -> None:
        """An inbound connection opened (secure, in secure mode): its introduction is
        awaited."""
        self.awaiting[socket.id] = _raw_id(socket)

    def introduced(self, socket: Socket) -> bool:
        """``socket``'s peer introduced itself: its handshake is over. False if it is
        refused now (a candidate, and the rule no longer holds): it is being closed."""
        conn_id = self.awaiting.pop(socket.id, None)
        if conn_id is None:
            return True
        self._introduced[conn_id] = socket.id
        decision = self.admission.finish(conn_id, asyncio.get_running_loop().time())
        if isinstance(decision, Refusal):
            refused = self._refused(socket, decision)
            conn = self._connections.get(socket.id)
            if conn is not None and refused is not None:
                self._connections.close(conn, *refused)
            return False
        if decision is not None and decision.evicted is not None:
            self._evict(decision.evicted, socket, finished=decision.finished)
        return True

    def closed(self, socket: Socket) -> None:
        """``socket`` closed (a driver's, or a secure one): its slot is free. A failed
        WebSocket upgrade is said, within the log budget, and counted (found by a
        tester: a peer dialling a ws:// server with tcp:// left no trace)."""
        reason = socket.close_reason
        if reason is not None and reason.startswith(UPGRADE_FAILED) and self._node.running:
            self.warn(self._logger, "handshake failed", "! %s: %s", socket.peer, reason)
            count(self._node.metrics.handshakes, "UpgradeFailed")
        conn_id = _raw_id(socket)
        self.awaiting.pop(socket.id, None)
        self._accepted.pop(conn_id, None)
        self._introduced.pop(conn_id, None)
        self._evicted.discard(conn_id)
        self.admission.release(conn_id, asyncio.get_running_loop().time())

    def close_unfinished(self) -> None:
        """
        The node is stopping: stop the deadline, and drop at once the connections that
        can't take a close frame (still in their WebSocket upgrade) or are closing.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn_id, raw in list(self._accepted.items()):
            if raw.closed and not self.admission.finished(conn_id):
                raw.abort()

    # Rules carried out

    def _admit(self, raw: Socket) -> tuple[int, str] | None:
        if not self._node.running:
            return CloseCode.GOING_AWAY, "node stopping"
        decision = self.admission.admit(raw.id, raw.host, asyncio.get_running_loop().time())
        if isinstance(decision, Refusal):
            return self._refused(raw, decision)
        if decision.evicted is not None:
            self._evict(decision.evicted, raw, finished=False)  # at accept: unfinished
        if self._timer is None:
            self._arm()
        return None

    def warn(self, log: Any, kind: str, message: str, *args: object) -> None:
        """A WARNING within :attr:`log_budget` for ``kind`` (else DEBUG)."""
        self.log(log, logging.WARNING, kind, message, *args, stacklevel=2)

    def closing(self, log: Any, socket: Socket, reason: str) -> None:
        """The node closes ``socket`` for ``reason`` (the protocol's verdict): said
        within the budget, a disagreement on ``secure`` once (see :meth:`_say`)."""
        self._say(log, socket, reason, "closing", "! closing: %s", reason)

    def failed_handshake(self, log: Any, raw: Socket, error: HandshakeError) -> None:
        """A secure handshake failed by the peer's fault: as :meth:`closing`."""
        message = "! secure handshake with %s failed: %s"
        self._say(log, raw, str(error), "handshake failed", message, raw.peer, error)

    def _say(
        self, log: Any, socket: Socket, reason: str, kind: str, message: str, *args: object
    ) -> None:
        """A WARNING within the budget of ``kind``; a disagreement on ``secure``
        (``reason``) only the first time per peer (address, or URL dialled), at DEBUG
        after: the peer redials every ``reconnect_max`` until one side changes (found by
        a tester: a WARNING a minute on each side for ever, where the README says it is
        reported once)."""
        if is_mode_mismatch(reason):
            # Inbound, by address (a redial comes from a new port); outbound, by URL.
            key = (socket.host if socket.inbound else socket.peer, socket.inbound)
            if key in self._mismatched:
                log.debug(message, *args)
                return
            if len(self._mismatched) >= _MAX_MISMATCHED:
                self._mismatched.clear()
            self._mismatched.add(key)
        self.log(log, logging.WARNING, kind, message, *args, stacklevel=3)

    def note(
        self,
        log: Any,
        socket: Socket,
        kind: str,
        message: str,
        *args: object,
        level: int = logging.INFO,
    ) -> None:
        """A line about ``socket`` (INFO unless ``level``): within :attr:`log_budget` for
        ``kind`` if the peer dialled us (a flood of connections must not flood the log),
        else always."""
        if socket.inbound:
            self.log(log, level, kind, message, *args, stacklevel=2)
        else:
            log.log(level, message, *args, stacklevel=2)

    def log(
        self,
        log: Any,
        level: int,
        kind: str,
        message: str,
        *args: object,
        stacklevel: int = 1,
        exc_info: bool = False,
    ) -> None:
        """Log within :attr:`log_budget` (see :meth:`LogBudget.log`); the events it
        leaves unlogged are counted in a line at the end of their window."""
        self.log_budget.log(
            log, level, kind, message, *args, stacklevel=stacklevel + 1, exc_info=exc_info
        )
        if self._log_timer is None and self._node.running:  # (stopping: stop_logging())
            self._arm_summary()

    def unhandled(self, log: Any, peer: str, name: str, event: str) -> None:
        """Say that a package of type ``name`` and ``event`` from ``peer`` was dropped, no
        thread handling it: at INFO (within the log budget) the first time of each peer,
        type and event, at DEBUG after (counted in the metrics either way). Found by a
        tester (tester48 F8): a peer's application talk that this node's threads don't
        handle was said about 11 lines a minute for as long as it kept coming. At most
        :data:`UNHANDLED_SAID` of them remembered; past that, they are forgotten and
        said again."""
        key, said = (peer, name, event), "- dropped %s %r: no thread handles it"
        if key in self._unhandled:
            log.debug(said, name, event)
            return
        if len(self._unhandled) >= UNHANDLED_SAID:
            self._unhandled.clear()
        self._unhandled.add(key)
        said += " (more from this peer at DEBUG)"
        self.log(log, logging.INFO, "unhandled", said, name, event, stacklevel=2)

    def stop_logging(self) -> None:
        """The node stopped (its connections too): say how many events of each kind
        went unlogged, those of the stop included, and arm no more summaries."""
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        self.log_budget.summarise(every=True)

    def _arm_summary(self) -> None:
        budget = self.log_budget
        due = budget.next_summary()
        if due is not None:
            # At least 10 ms: a loop whose clock is not the budget's (uvloop's is cached,
            # and rounds delays to ms) may wake early, and must not spin until it is due.
            delay = max(0.01, due - budget.now())
            self._log_timer = asyncio.get_running_loop().call_later(delay, self._summarise)

    def _summarise(self) -> None:
        self._log_timer = None
        self.log_budget.summarise()
        self._arm_summary()

    def _refused(self, raw: Socket, refusal: Refusal | None) -> tuple[int, str] | None:
        if refusal is None:
            return None
        # By the reason's first words: its numbers (limits, seconds) would make labels.
        count(self._node.metrics.inbound_refused, refusal.reason.split(":")[0].split(" (")[0])
        if refusal.warn:
            self.log(
                self._logger,
                logging.WARNING,
                "refused",
                "! refused %s: %s",
                raw.peer,
                refusal.reason,
            )
        else:
            self._logger.debug("! refused %s: %s", raw.peer, refusal.reason)
        if refusal.reason == "blocked":  # the peer is told for how long, and why
            return refusal.code, refusal_reason(self._node.store, address=raw.host)
        return refusal.code, refusal.reason

    def _evict(self, conn_id: int, new: Socket, *, finished: bool) -> None:
        raw = self._accepted.get(conn_id)
        if raw is None:
            return
        self._evicted.add(conn_id)
        count(self._node.metrics.inbound_evicted, "crowded" if finished else "unfinished")
        if not finished:
            message = (
                "! dropped %s: inbound connections maxed out, and its handshake was the "
                "oldest unfinished"
            )
            self.log(self._logger, logging.INFO, "evicted", message, raw.peer)
            raw.abort()  # at once: it may be an attacker's, holding the slot
            return
        # Its network holds the most slots; the new one comes from a network with fewer.
        message = (
            "! closing %s: inbound connections maxed out, its network group holds the "
            "most, and %s, from another, is introduced"
        )
        self.log(self._logger, logging.INFO, "evicted", message, raw.peer, new.peer)
        reason = "inbound connections maxed out: room made for a peer from another network"
        conn = self._connections.get(self._introduced.get(conn_id, conn_id))
        if conn is not None:
            self._connections.close(conn, CloseCode.TRY_AGAIN_LATER, reason)
        else:
            raw.close_soon(CloseCode.TRY_AGAIN_LATER, reason)

    def _arm(self) -> None:
        deadline = self.admission.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for conn_id in self.admission.due_probes(now):
            self._probe(conn_id)
        for conn_id in self.admission.expired(now):
            self._expire(conn_id)
        self._arm()

    def _probe(self, conn_id: int) -> None:
        """Plain mode: ping a connection that said nothing half its handshake time
        after accept (:meth:`ConnectionProtocol.probe_silent`); its pong finishes it."""
        conn = self._connections.get(conn_id)  # (plain: the driver's socket is the one)
        if conn is None:
            return  # still in its WebSocket upgrade: nothing to ping it on
        for action in conn.protocol.probe_silent():
            if type(action) is Send:
                try:
                    self._node.send_package(conn.socket, action.package)
                except ConnectionClosed:
                    pass  # on_close tells the rest

    def _expire(self, conn_id: int) -> None:
        raw = self._accepted.get(conn_id)
        if raw is None:
            return
        reason = f"handshake not complete within {self._timeout:g} s"
        secure = self._node.secure_layer
        if secure is not None and secure.fail(raw, HandshakeError(reason)):
            return  # in the Noise handshake: a failed handshake, as ever
        if raw.closed:
            # Still in the WebSocket upgrade (it can't take a close frame), or closing.
            self._logger.debug("! dropped %s: %s", raw.peer, reason)
            raw.abort()
            return
        self.log(
            self._logger, logging.WARNING, "handshake timeout", "! closing %s: %s", raw.peer, reason
        )
        # The open connection on it (rare: a linear search is fine).
        socket_id = next((s for s, r in self.awaiting.items() if r == conn_id), conn_id)
        conn = self._connections.get(socket_id)
        if conn is not None:
            self._connections.close(conn, CloseCode.POLICY_VIOLATION, reason)
        else:
            raw.close_soon(CloseCode.POLICY_VIOLATION, reason)
