"""
The heartbeat thread: answers the peers' pings, as the original's client thread does.

``trustp2p init`` copies this file into ``threads-available/``; it is also a small,
complete example of a thread.

Liveness itself needs no thread: every node pings each of its peers, on both sides,
answers their pings at once, and drops a peer that doesn't answer (see
``trustp2p.protocol.liveness`` and the ``heartbeat_*`` options). A thread that maps
``HEARTBEAT_PING`` ``"ping"``, like this one, takes over the answer: its handler's
return value is the pong's body, sent with the ping's tag. Such a handler runs as soon
as the ping is read, beside the packages of that connection queued for handlers, not
behind them; keep it quick all the same: a peer waits ``heartbeat_response_timeout``
(10 s) for the pong.

The round trip of each connection's last ping is in ``socket.stats.last_rtt``.

"""

from __future__ import annotations

from trustp2p import Body, EventMap, Package, PackageType, Socket, Thread


class HeartbeatThread(Thread):
    sleep = False
    """Sent in each pong; a node may set it to tell its peers it is dozing."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.HEARTBEAT_PING: {"ping": self._handle_ping}}

    def _handle_ping(self, socket: Socket, package: Package) -> Body:
        # Returned bodies go back as a HEARTBEAT_PONG "pong" with the ping's tag: the
        # original's bytes, {"sleep":false} (docs/original-wire-format.md).
        return {"sleep": self.sleep}
