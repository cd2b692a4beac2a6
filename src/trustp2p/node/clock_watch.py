"""
What a node makes of its peers' clocks (:class:`~trustp2p.protocol.clocks.PeerClocks`):
the wall clock its version talks carry, the offset each open connection's peer shows,
and the WARNING once they say ours is off, and the INFO once it is back in line
(found by a tester: a node two days ahead dropped every peer's gossip as too old, one
two days behind had all its own dropped, and neither said its clock was the cause).
Checked as each peer introduces itself and at each heartbeat round, so that a step
of our clock at run time is said within ``heartbeat_interval``.

"""

from __future__ import annotations

__all__ = ["ClockWatch"]

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..drivers.base import Socket
from ..protocol.clocks import (
    LEAST_CLOCKS,
    ClockVerdict,
    PeerClocks,
    clock_key,
    peer_time,
    with_time,
)
from ..protocol.gossip import CLOCK_SKEW
from ..protocol.package import Body

if TYPE_CHECKING:
    from ..protocol.gossip import GossipMessage, Stale, Streams
    from .node import Node

logger = logging.getLogger("trustp2p.node")


class ClockWatch:
    """
    The node's wall clock against its peers'.

    Attributes:
        wall_clock: Seconds since 1970 (``time.time``): the time our version talks
            carry, and what the peers' are compared with.
        monotonic: The clock the peers' offsets are kept against (``time.monotonic``).
        clocks: The peers' offsets (:func:`~trustp2p.protocol.clocks.clock_key`; a
            loopback connection's its own, unless ``limit_loopback``).

    """

    __slots__ = ("_node", "clocks", "monotonic", "wall_clock")

    def __init__(
        self,
        node: Node,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        options = node.options
        # With fewer networks than LEAST_CLOCKS: days off either way, or past CLOCK_SKEW
        # ahead, where its peers drop its gossip as from the future (tester49 F1).
        ahead = CLOCK_SKEW if options.gossip else None
        self.clocks = PeerClocks(alone=options.log_max_age, ahead=ahead)

    @property
    def offset(self) -> float | None:
        """The median of the open connections' peers' clocks minus ours, in seconds
        (None: no peer said its clock)."""
        return self.clocks.offset(self.wall_clock(), self.monotonic())

    def stale(self, streams: Streams[Any], message: GossipMessage) -> Stale | None:
        """Why ``streams`` drop ``message`` (:meth:`~trustp2p.protocol.gossip.Streams.stale`),
        but not as from the ``"future"`` while our clock is behind the median of the
        peers' by more than their ``clock_skew``: ahead of it may be the present (found
        in review: a relay whose clock lagged 6 minutes dropped all its peers' gossip as
        from the future, and relayed none of it)."""
        stale = streams.stale(message)
        if stale == "future" and (offset := self.offset) is not None:
            return None if offset > streams.clock_skew else stale
        return stale

    def version_body(self) -> Body:
        """The node's version body (``Node.version_body``) with our wall clock in it."""
        return with_time(self._node.version_body, self.wall_clock())

    def introduced(self, socket: Socket, body: Body) -> None:
        """A peer's version talk: keep its clock's offset from ours while ``socket`` is
        open, and check ours."""
        theirs = peer_time(body)
        if theirs is None:
            return  # the original's, or no number
        connections = self._node.connections
        if connections.share_group(socket) is None:  # local, each apart
            key = f"local {connections.budget_key(socket)}"
        else:
            key = clock_key(socket.host)
        self.clocks.add(socket.id, key, theirs, self.monotonic())
        self.check()

    def closed(self, socket: Socket) -> None:
        """``socket`` closed: its peer's offset goes with its network's last one."""
        self.clocks.remove(socket.id)

    def check(self) -> None:
        """Say whether our clock was found off, or back in line, since the last check."""
        verdict = self.clocks.check(self.wall_clock(), self.monotonic())
        if verdict is not None:
            self._say(verdict)

    def _say(self, verdict: ClockVerdict) -> None:
        offset, peers = verdict.offset, verdict.peers
        log = self._node.connections.inbound.log  # (within the log budget)
        if not verdict.off:
            said = "= this node's wall clock agrees with its peers' again (offset %+.0f s, %d)"
            log(logger, logging.INFO, "clock", said, offset, peers)
            return
        log(
            logger,
            logging.WARNING,
            "clock",
            "! this node's wall clock is %.0f s %s its peers' (the median of the version"
            " talks of %d connected network(s)%s): %s; check its time (NTP)",
            abs(offset),
            "behind" if offset > 0 else "ahead of",
            peers,
            "" if peers >= LEAST_CLOCKS else "; so few that theirs may be the clocks off",
            self._effect(offset),
        )

    def _effect(self, offset: float) -> str:
        """What an offset (theirs minus ours) does to the node's gossip: past
        CLOCK_SKEW ahead, its peers drop its gossip as from the future (tester48 F1)."""
        options = self._node.options
        if not options.gossip:
            return "it has no gossip to lose, but its peers' rules of time misjudge it"
        max_age = options.log_max_age
        old = f"as older than log_max_age ({max_age:g} s)"
        future = f"as from the future (stamped over CLOCK_SKEW, {CLOCK_SKEW:g} s, ahead)"
        ours, theirs = "its peers drop the gossip it publishes", "it drops its peers' gossip"
        effects = []
        if offset > max_age:  # (behind)
            effects.append(f"{ours} {old}")
        elif offset < -max_age:
            effects.append(f"{theirs} {old}, and relays none of it")
        if offset < -CLOCK_SKEW:  # (behind, it takes what is ahead of it: see stale())
            effects.append(f"{ours} {future}")
        if effects:
            return "; ".join(effects)
        return (
            "no message is dropped for it until log_max_age, but the rules that allow"
            " CLOCK_SKEW for clocks (forgotten delivery marks, an origin numbering again)"
            " may drop some"
        )
