"""
What a node makes of its peers' clocks (:class:`~trustp2p.protocol.clocks.PeerClocks`):
the wall clock its version talks carry, the offset each peer's shows, and the WARNING
once their median says ours is off (found by a tester: a node two days ahead dropped
every peer's gossip as too old, one two days behind had all its own dropped, and
neither said its clock was the cause).

"""

from __future__ import annotations

__all__ = ["ClockWatch"]

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..drivers.base import Socket
from ..protocol.clocks import ClockVerdict, PeerClocks, peer_time, with_time
from ..protocol.hosts import netgroup
from ..protocol.package import Body

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger("trustp2p.node")


class ClockWatch:
    """
    The node's wall clock against its peers'.

    Attributes:
        wall_clock: Seconds since 1970 (``time.time``): the time our version talks
            carry, and what the peers' are compared with.
        clocks: The peers' offsets, one per network group (a loopback peer's its own,
            unless ``limit_loopback``).

    """

    __slots__ = ("_node", "clocks", "wall_clock")

    def __init__(self, node: Node, wall_clock: Callable[[], float] = time.time) -> None:
        self._node = node
        self.wall_clock = wall_clock
        self.clocks = PeerClocks()

    @property
    def offset(self) -> float | None:
        """The median of the peers' clocks minus ours, in seconds (None: too few peers
        said theirs)."""
        return self.clocks.offset

    def version_body(self) -> Body:
        """The node's version body (``Node.version_body``) with our wall clock in it."""
        return with_time(self._node.version_body, self.wall_clock())

    def introduced(self, socket: Socket, body: Body) -> None:
        """A peer's version talk: note its clock's offset from ours, and say it if the
        median of the peers' is found off or back in line."""
        theirs = peer_time(body)
        if theirs is None:
            return  # the original's, or no number
        connections = self._node.connections
        group = connections.share_group(socket)  # (None: local, each apart)
        key = connections.budget_key(socket) if group is None else netgroup(socket.host)
        verdict = self.clocks.add(key, theirs - self.wall_clock())
        if verdict is not None:
            self._say(verdict)

    def _say(self, verdict: ClockVerdict) -> None:
        offset, peers = verdict.offset, verdict.peers
        if not verdict.off:
            logger.info(
                "= this node's wall clock agrees with its peers' again (median offset %+.0f s"
                " of %d)", offset, peers,
            )  # fmt: skip
            return
        max_age = self._node.options.log_max_age
        if abs(offset) <= max_age:
            effect = "gossip's ages here are off by as much"
        elif offset > 0:
            effect = (
                f"its peers drop the gossip it publishes as older than log_max_age ({max_age:g} s)"
            )
        else:
            effect = f"it drops its peers' gossip as older than log_max_age ({max_age:g} s)"
        side = "behind" if offset > 0 else "ahead of"
        logger.warning(
            "! this node's wall clock is %.0f s %s its peers' (the median of %d peers'"
            " version talks, one per network): %s; check its time (NTP)",
            abs(offset), side, peers, effect,
        )  # fmt: skip
