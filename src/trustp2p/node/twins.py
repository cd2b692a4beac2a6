"""
One connection per peer in plain mode: two of our plain nodes that dialled each other
know each other by the nonce of their version talks, as secure nodes do by their ids.
In secure mode, two connections of one id from two processes (a restart, or a copied
identity) are told apart from two dials that crossed, and said; an open connection
kept against another process's is probed at once (its peer may have restarted while
the old link lingers).

"""

from __future__ import annotations

__all__ = ["CHECKING", "CROSSING", "DUPLICATE", "Twins"]

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..drivers.base import Socket
from ..identity import short_id
from ..protocol.admission import keep_new_connection
from ..protocol.close import CloseCode
from ..protocol.copies import COPY_REASON, IdentityCopies, Meeting
from ..protocol.handshake import NONCE_KEY
from ..protocol.package import Body
from ..security.secure_socket import SecureSocket

if TYPE_CHECKING:
    from .connections import Connections
    from .peer import PeerConnection

COPY_WINDOW = 600.0
"""Seconds between two WARNINGs that our identity, or a peer's, runs in two processes."""

MAX_COPY_CLOSED = 1024
"""Connections closed with COPY_REASON remembered until their close is reported."""

DUPLICATE = "duplicate connection"
"""The close reason of the connection of two to one peer that both ends drop."""

CHECKING = "checking the open connection of your peer id's other process"
"""Said to a second process of a peer id refused while the first's connection, kept,
is probed; the reason ends ": try again in N s" (the dialer waits that long)."""

CROSSING = 2.0
"""Seconds between the introductions of two connections to one peer within which they
are two dials that crossed: the nonces pick the one to keep. Of two further apart, the
older stays (both ends see about the same gap), so that a claim made once a link is
up can't close it (found by an attacker's test: a process on the peer's host replaying
its nonce held the link down for as long as it stayed connected)."""


class Twins:
    """
    Plain connections by the nonce their peer's version talk carried.

    When a second connection brings a nonce that an open one brought, both ends keep
    the connection :func:`~trustp2p.protocol.admission.keep_new_connection` keeps (the
    nonces for ids: the one dialled by the node of the smaller nonce), or the older if
    they were introduced more than :data:`CROSSING` seconds apart, and close the other
    with 1000 "duplicate connection". A nonce is only a claim: one from another
    address than the open connection's is ignored, so that nobody far away can drop a
    peer's connection by naming its nonce; one on the same address can do so only
    within :data:`CROSSING` of the link's start, or before it. The original sends no
    nonce.
    """

    def __init__(
        self,
        connections: Connections,
        our_nonce: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        probe: Callable[[PeerConnection], float] | None = None,
    ) -> None:
        self._connections = connections
        self._probe = probe  # the heartbeat's: returns the probe's time
        self._our_nonce = our_nonce
        self._clock = clock
        self._by_nonce: dict[str, tuple[PeerConnection, float]] = {}  # and when introduced
        self._dropped: dict[int, str] = {}  # our dial dropped as a twin -> the peer's nonce
        self._copies = IdentityCopies(self._loop_time, window=COPY_WINDOW)
        self._copy_closed: dict[int, None] = {}  # closed by us with COPY_REASON (bounded)
        self._told_at: float | None = None  # when a peer's COPY_REASON was said at WARNING

    def introduced(self, conn: PeerConnection, body: Body) -> None:
        """A peer introduced itself on ``conn``: drop one of two connections to it."""
        nonce = body.get(NONCE_KEY)
        socket = conn.socket
        if socket.peer_id is not None or not isinstance(nonce, str) or nonce == "":
            return  # secure (one per peer id), or the original
        now = self._clock()
        existing, since = self._by_nonce.get(nonce, (None, now))
        if existing is None or existing.socket.closed:
            self._by_nonce[nonce] = (conn, now)
            return
        if existing.socket.host != socket.host:
            return  # not its twin: a claim
        keep = now - since <= CROSSING and keep_new_connection(
            self._our_nonce,
            nonce,
            new_inbound=socket.inbound,
            existing_inbound=existing.socket.inbound,
        )
        kept, dropped = (conn, existing) if keep else (existing, conn)
        self._by_nonce[nonce] = (kept, now if keep else since)
        if not dropped.socket.inbound:
            self._dropped[dropped.socket.id] = nonce  # for the dialer: wait for the other
        dropped.log.debug("= duplicates the connection to %s: closing", kept.socket.peer)
        self._connections.close(dropped, CloseCode.NORMAL_CLOSURE, DUPLICATE)

    def closed(self, conn: PeerConnection) -> None:
        """``conn`` closed."""
        if conn.socket.inbound:  # (the dialer tells of those it dialled: outbound_closed())
            self._told(conn.socket, conn.log, "the peer")
        nonce = (conn.protocol.peer_version or {}).get(NONCE_KEY)
        if isinstance(nonce, str) and self._by_nonce.get(nonce, (None,))[0] is conn:
            del self._by_nonce[nonce]

    def outbound_closed(self, socket: Socket, log: logging.Logger) -> None:
        """The dialer's ``socket`` closed: say if the peer told us that another process
        has our peer id. Once per dial, once it closed."""
        self._told(socket, log, socket.peer)

    def _told(
        self, socket: Socket, log: logging.Logger | logging.LoggerAdapter[Any], who: str
    ) -> None:
        """Say that ``socket``'s peer closed it for another process with our peer id:
        at WARNING once per :data:`COPY_WINDOW`, else INFO (review: a copy refused at
        each redial warned each time)."""
        ours = self._copy_closed.pop(_raw_id(socket), 0) is None  # (kept: None)
        if socket.close_reason != COPY_REASON or ours:
            return  # (ours: the peer echoed the reason we closed it with)
        now = self._loop_time()
        level = logging.INFO
        if self._told_at is None or now - self._told_at > COPY_WINDOW:
            self._told_at, level = now, logging.WARNING
        log.log(
            level,
            "! %s closed the connection: another process with our peer id is connected"
            " to it. Is this node's identity copied to another node? (If this node"
            " restarted within a minute, its old connection may linger there.)",
            who,
        )

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def dropped(self, socket: Socket) -> str | None:
        """The peer's nonce if the connection we dialled, ``socket``, was dropped as a
        twin, else None. Asked once, by the dialer (each of its dials), once ``socket``
        closed: the answer is let go."""
        return self._dropped.pop(socket.id, None)

    def connection_to(self, nonce: str) -> Socket | None:
        """The open connection to the peer of ``nonce``, if any."""
        conn = self._by_nonce.get(nonce, (None,))[0]
        return None if conn is None or conn.socket.closed else conn.socket

    def processes(
        self, logger: logging.Logger, conn: PeerConnection, new: Socket, *, keep_new: bool
    ) -> str:
        """
        ``new`` is a second connection of the secure peer of ``conn``, and the one of
        the two not kept is closed: say what their Noise static keys tell (another
        process of the peer: a restart, or two nodes sharing its identity), and return
        the close reason. When ``conn`` stays against another process, it is probed
        (a restart's old link may be dead) and ``new`` is told when to try again.
        """
        existing = conn.socket
        if not isinstance(existing, SecureSocket) or not isinstance(new, SecureSocket):
            return DUPLICATE
        peer_id = new.peer_id
        assert peer_id is not None  # (secure)
        answered = conn.protocol.liveness.answered  # (a pong to our probe is proof)
        meeting = self._copies.met(
            peer_id, existing.static_key, new.static_key, existing.last_seen, answered
        )
        if meeting is None:
            return DUPLICATE  # one process: two dials that crossed
        say = self._connections.inbound.log  # (budgeted: throwaway ids can do this)
        peer = short_id(peer_id)
        if meeting is Meeting.COPIED:
            say(logger, logging.WARNING, "copied identity", "! peer %s runs in two "
                "processes at once (connections from %s and %s): two nodes share one "
                "identity (a copied data directory?) and each displaces the other's "
                "connections; give each node its own identity", peer, existing.peer,
                new.peer)  # fmt: skip
        elif meeting is Meeting.SECOND:
            say(logger, logging.INFO, "another process", "= peer %s connected from "
                "another process (%s) while its connection from %s is open: it "
                "restarted, or two nodes share its identity", peer, new.peer,
                existing.peer)  # fmt: skip
        if keep_new:
            # The open one goes: a restart's old link never reads why, a copy's does.
            self._copy_closed[_raw_id(existing)] = None
            while len(self._copy_closed) > MAX_COPY_CLOSED:
                del self._copy_closed[next(iter(self._copy_closed))]
            return COPY_REASON
        # The new one goes: a restarted peer whose old link lingers here isn't a copy.
        if self._copies.proven(peer_id):
            return COPY_REASON
        if self._probe is None:
            return DUPLICATE
        # tester39 F9: the old link was kept until the heartbeat found it dead (up to
        # its 39 s bound), and the restarted peer's backoff grew meanwhile. Ping it now:
        # a dead one is dropped within the probe's time, and the peer comes back then.
        wait = math.ceil(self._probe(conn)) + 1
        return f"{DUPLICATE}: {CHECKING}: try again in {wait} s"


def _raw_id(socket: Socket) -> int:
    """The id of the connection under ``socket``: the dialer holds the raw one, the
    node the secure one; both report its close."""
    return socket.raw.id if isinstance(socket, SecureSocket) else socket.id
