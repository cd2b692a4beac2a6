"""
Who pays for bad input: counting packages against a peer, the block policy, blocks, and
the plain-mode rule that a connection pays for its own input and an address only when
several of its connections offend. In secure mode an address with honest history that
earns a block refuses new ids instead (:mod:`~trustp2p.protocol.known_ids`).

"""

from __future__ import annotations

__all__ = ["Penalties", "refusal_reason"]

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from ..admin.counters import count
from ..drivers.base import Socket
from ..identity import short_id
from ..protocol.admission import block_scope
from ..protocol.close import CloseCode, fit_reason
from ..protocol.known_ids import NEW_IDS_REFUSED, KnownIds
from ..protocol.limits import address_key
from ..protocol.peers import PeerKey, peer_key
from ..protocol.scoring import HANDSHAKE_BLOCK, Offences

if TYPE_CHECKING:
    from ..storage.peerstore import PeerStore
    from .connections import Connections
    from .node import Node
    from .peer import PeerConnection

logger = logging.getLogger(__name__)

MAX_SPARES = 2
"""Times within ``OFFENCE_WINDOW`` that an address whose peers offended is spared for
its other peers (:meth:`Penalties.block`); the next time it is blocked all the same, or,
with honest history, refuses new ids (:class:`~trustp2p.protocol.known_ids.KnownIds`)."""


class Penalties:
    """The node's judge: the peer store's counts and blocks, and :class:`Offences`."""

    def __init__(self, node: Node, connections: Connections) -> None:
        self._node = node
        self._connections = connections
        self.offences = Offences()
        self._spares: dict[str, list[float]] = {}  # address -> when offences were spared
        self._starts: dict[str, float] = {}  # address -> its window's first offence
        self._keys: dict[int, PeerKey] = {}  # connection id -> its peer key, made once
        self.known = KnownIds()

    def refusal(self, socket: Socket) -> tuple[int, str] | None:
        """
        Whether a connection that proved its peer id is refused: the id is blocked, or
        it dialled us from an address refusing new ids (:meth:`_address_to_block`) and
        is new there. ``None`` to go on, else the close code and reason.
        """
        peer_id, store = socket.peer_id, self._node.store
        if peer_id is None:
            return None
        if store is not None and store.is_blocked(peer_id=peer_id):
            logger.info("! refused %s: peer %s is blocked", socket.peer, short_id(peer_id))
            return CloseCode.POLICY_VIOLATION, refusal_reason(store, peer_id=peer_id)
        now = asyncio.get_running_loop().time()
        left = self.known.refused_for(socket.host, peer_id, now) if socket.inbound else None
        if left is None:
            return None
        count(self._node.metrics.inbound_refused, NEW_IDS_REFUSED)
        reason = self.known.refusal(left)
        inbound = self._connections.inbound
        message = "! refused %s (peer %s): %s"
        inbound.warn(logger, "refused", message, socket.peer, short_id(peer_id), reason)
        return CloseCode.TRY_AGAIN_LATER, reason

    def opened(self, socket: Socket) -> None:
        """A connection opened: its peer id, if proven, is known at its address."""
        if socket.peer_id is not None:
            now = asyncio.get_running_loop().time()
            self.known.opened(socket.host, socket.peer_id, now)

    def forget(self, socket: Socket) -> None:
        """A connection closed."""
        self._keys.pop(socket.id, None)
        if socket.peer_id is not None:
            now = asyncio.get_running_loop().time()
            self.known.closed(socket.host, socket.peer_id, now)

    def crossed(
        self, socket: Socket, *, good: int = 0, invalid: int = 0, by_address: bool = False
    ) -> bool:
        """Count packages against the peer (by id, else address) in the peer store;
        True if that crossed the block policy for a peer id, or with ``by_address`` (the
        count then starts afresh). Plain connections are judged by their own counts."""
        store = self._node.store
        if store is None:
            return False
        if by_address:
            key = peer_key(None, socket.host)
        else:
            key = self._keys.get(socket.id) or self._keys.setdefault(
                socket.id, peer_key(socket.peer_id, socket.host)
            )
        if invalid and socket.peer_id is not None and not by_address:
            self.known.tainted(socket.host, socket.peer_id)  # not an honest id of it now
        counts = store.record_packages(key, good=good, invalid=invalid)
        if (socket.peer_id is None and not by_address) or not store.policy.crossed(counts):
            return False
        store.restart_window(key)
        return True

    def judged(self, conn: PeerConnection) -> bool:
        """Whether a plain connection's own counts cross the block policy; asked at each
        count, good packages too, so that invalid ones sent before ``min_packages`` are
        judged once the connection gets there."""
        store = self._node.store
        return (
            conn.socket.peer_id is None
            and store is not None
            and store.policy.crossed(conn.protocol.counts())
        )

    def offended(self, conn: PeerConnection) -> None:
        """A peer crossed the block policy. With a peer id, that peer is blocked. Without
        one (plain mode) only this connection is closed, and its address is blocked only
        once several of its connections offended (:class:`Offences`), for
        :data:`~trustp2p.protocol.scoring.HANDSHAKE_BLOCK` at most, as an id-bearing
        peer's address is: peers sharing an address don't pay for one another (tester48
        F3: an honest NAT's address was shut for ``block_duration``, an hour)."""
        socket = conn.socket
        reason = "too many invalid packages"
        if socket.peer_id is not None:
            self.block(socket.peer_id, socket.host, reason, socket=socket)
            return
        inbound = self._connections.inbound
        inbound.log(conn.log, logging.WARNING, "block", "! %s: disconnecting", reason)
        self._connections.close(conn, CloseCode.POLICY_VIOLATION, reason)
        scope = block_scope(None, socket.host, limit_loopback=self._node.options.limit_loopback)
        now = asyncio.get_running_loop().time()
        if scope is not None and self.offences.offended(socket.host, now):
            why = f"{self.offences.threshold} connections sent {reason}"
            duration = min(HANDSHAKE_BLOCK, self._node.options.block_duration)
            self.block(None, socket.host, why, duration=duration)

    def handshake_failed(self, raw: Socket) -> None:
        """
        An inbound handshake failed by its peer's fault: counted against its address
        (it proved no peer id). Past the block policy the address is blocked for
        :data:`~trustp2p.protocol.scoring.HANDSHAKE_BLOCK` at most, and not at all while
        peers of that address that proved their ids are connected: behind one NAT, the
        honest peers don't pay for a neighbour's bad handshakes.
        """
        if not self.crossed(raw, invalid=1, by_address=True):
            return
        reason = "too many failed handshakes"
        if not self._spared(raw.host, reason):
            duration = min(HANDSHAKE_BLOCK, self._node.options.block_duration)
            self.block(None, raw.host, reason, duration=duration)

    def _spared(
        self, address: str, reason: str, offender: str | None = None, before: float | None = None
    ) -> bool:
        """Whether peers of ``address`` that proved their ids, ``offender`` aside, are
        connected (then the address isn't blocked for ``reason``, said): behind one
        NAT, the honest peers don't pay for a neighbour's bad handshakes or ids. With
        ``before`` (:func:`time.monotonic` seconds), only those connected by then, none
        invalid."""
        key = address_key(address)
        proven = sum(
            1
            for conn in self._connections
            if conn.socket.peer_id not in (None, offender)
            and address_key(conn.socket.host) == key
            and (before is None or (conn.opened_at <= before and not conn.protocol.invalid))
        )
        if proven:
            self._connections.inbound.log(
                logger,
                logging.WARNING,
                "block",
                "! not blocking %s (%s): %d peer(s) of that address proved their ids",
                address,
                reason,
                proven,
            )
        return proven > 0

    def block(
        self,
        peer_id: str | None,
        address: str | None,
        reason: str,
        *,
        socket: Socket | None = None,
        duration: float | None = None,
    ) -> None:
        """
        Block a peer by id, or an address, for ``duration`` (by default
        ``block_duration``); close the peer's connections, and ``socket``, the one that
        crossed the policy.

        A peer with an id is blocked by its id; its address too only once several peers
        of that address offended (:class:`Offences`), for
        :data:`~trustp2p.protocol.scoring.HANDSHAKE_BLOCK` at most, and not while peers
        of it from before are connected (:meth:`_address_to_block`): peers sharing it,
        behind one NAT, don't pay for one another (found by an attacker: three throwaway
        ids shut an address out for an hour, its honest peers included). Loopback
        addresses are not blocked (unless ``limit_loopback``): every local peer shares
        them. A local peer without a peer id (plain mode) is only disconnected.
        """
        address_for = duration
        if peer_id is not None and address is not None:
            self.known.tainted(address, peer_id)
            address_for = min(HANDSHAKE_BLOCK, duration or self._node.options.block_duration)
            address = self._address_to_block(peer_id, address, reason, address_for)
        scope = block_scope(peer_id, address, limit_loopback=self._node.options.limit_loopback)
        if scope is None:
            if socket is not None and not socket.closed:
                self._node.connections.inbound.log(
                    logger,
                    logging.WARNING,
                    "block",
                    "! disconnecting %s: %s (loopback addresses are not blocked)",
                    socket.peer,
                    reason,
                )
                socket.close_soon(CloseCode.POLICY_VIOLATION, fit_reason(f"disconnected: {reason}"))
            return
        if scope.peer_id is not None and scope.address is not None:
            self._record(scope.peer_id, None, reason, duration)
            self._record(None, scope.address, reason, address_for)
        else:
            self._record(scope.peer_id, scope.address, reason, duration)
        # The peer's connections close; other connections from its address stay: an
        # address block only refuses new ones (bad input never closes a bystander).
        close_reason = fit_reason(f"blocked: {reason}")
        for conn in self._connections:
            other = conn.socket
            if other is socket or (scope.peer_id is not None and other.peer_id == scope.peer_id):
                self._connections.close(conn, CloseCode.POLICY_VIOLATION, close_reason)
        if socket is not None and not socket.closed:
            socket.close_soon(CloseCode.POLICY_VIOLATION, close_reason)

    def _address_to_block(
        self, peer_id: str, address: str, reason: str, duration: float
    ) -> str | None:
        """
        ``address`` if the offence of ``peer_id`` there gets it blocked (for
        ``duration``), else None: once :class:`Offences` says so, unless peers of it
        that were connected before its first offence counted, none invalid, are still
        connected, twice at most in ``OFFENCE_WINDOW`` (found in review: an attacker's
        next throwaway id, connected before the last offended, spared the address for
        ever). Past that, an address with honest history (ids known there from before
        that offence, none invalid: :meth:`KnownIds.honest`) isn't blocked either, but
        refuses new ids for ``duration`` (found by an attacker, attacker37 N2: nine
        throwaway ids shut a NAT's address to its new and returning honest peers for
        five minutes, again and again).
        """
        now = asyncio.get_running_loop().time()
        first = self.offences.first(address, now)
        if not self.offences.offended(address, now, peer_id):
            return None
        limit_loopback = self._node.options.limit_loopback
        if block_scope(None, address, limit_loopback=limit_loopback) is None:
            return address  # (loopback: not blocked, nothing to spare)
        key = address_key(address)  # (an IPv6 address as its /64, as Offences counts it)
        spares = [t for t in self._spares.get(key, ()) if now - t < self.offences.window]
        # (the monotonic time of the first offence: a wall-clock step moved it, review48)
        before = time.monotonic() - (now - (now if first is None else first))
        if len(spares) < MAX_SPARES and self._spared(address, reason, peer_id, before):
            self._spares[key] = [*spares, now]
            while len(self._spares) > self.offences.max_tracked:
                del self._spares[next(iter(self._spares))]
            return None
        self._spares.pop(key, None)
        since = self._window_start(key, now if first is None else first, now)
        honest = self.known.honest(address, since, now, peer_id)
        if not honest or self.known.restricted(address, now):
            return address  # (while restricted: review52 R1, review55 R1)
        self.known.restrict(address, since, now + duration)
        self._connections.inbound.log(
            logger,
            logging.WARNING,
            "address block",
            "! refusing new ids from %s for %g s: %s (%d id(s) of it from before still let in)",
            address,
            duration,
            reason,
            honest,
        )
        return None

    def _window_start(self, key: str, first: float, now: float) -> float:
        """The first offence of ``key``'s window, across its crossings: ``first`` is
        the current crossing's (:class:`Offences` counts afresh after each), and an id
        seen between two crossings is no history from before them (review52 R1)."""
        start = self._starts.pop(key, None)
        if start is None or now - start >= self.offences.window:
            start = first
        self._starts[key] = start = min(start, first)
        while len(self._starts) > self.offences.max_tracked:
            del self._starts[next(iter(self._starts))]
        return start

    def _record(
        self, peer_id: str | None, address: str | None, reason: str, duration: float | None
    ) -> None:
        """Log a block (within the budget: identities cost a key generation, and a flood
        of them made 11 lines each, found by an attacker; an address's block within a
        budget of its own: its line went unlogged after the ids', attacker37 N2) and
        write it to the store."""
        node = self._node
        node.connections.inbound.log(
            logger,
            logging.WARNING,
            "block" if peer_id is not None else "address block",
            "! blocking %s for %g s: %s",
            " and ".join(x for x in (peer_id, address) if x),
            node.options.block_duration if duration is None else duration,
            reason,
        )
        if node.store is not None and node.running:
            node.tasks.spawn(
                node.store.block(
                    peer_id=peer_id, address=address, reason=reason, duration=duration, log=False
                ),
                f"block {peer_id or address}",
            )


def refusal_reason(
    store: PeerStore | None, *, peer_id: str | None = None, address: str | None = None
) -> str:
    """The close reason of a connection refused for a block: how long it still lasts and
    why ("blocked for 3540 s: ..."), not a bare "blocked" that left the peer redialling
    with no idea (a new-user tester)."""
    found = None if store is None else store.blocked_for(peer_id=peer_id, address=address)
    if found is None:
        return "blocked"
    seconds, why = found
    return fit_reason(f"blocked for {math.ceil(seconds)} s: {why}")
