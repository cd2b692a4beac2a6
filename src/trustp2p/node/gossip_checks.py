"""
The node's checks of new gossip messages (:class:`~trustp2p.protocol.gossip.CheckShares`),
spent by connection: each peer's by its id, shared by its address's group
(:meth:`~.connections.Connections.share_group`; identities are free).

"""

from __future__ import annotations

__all__ = ["NodeChecks"]

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from ..protocol.gossip import CheckShares

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from .node import Node


class NodeChecks:
    """
    :class:`~trustp2p.protocol.gossip.CheckShares` of ``rate`` a second, by connection.

    Args:
        node: The node, whose connections' keys and groups the shares use.
        rate: ``gossip_node_rate``.
        clock: Monotonic seconds.

    """

    __slots__ = ("_clock", "_node", "shares")

    def __init__(self, node: Node, rate: float, clock: Callable[[], float]) -> None:
        self._node = node  # (its connections are made after its gossip)
        self._clock = clock
        self.shares = CheckShares(rate)

    def _key(self, socket: Socket) -> tuple[str, str | None]:
        connections = self._node.connections
        return connections.budget_key(socket), connections.share_group(socket)

    def live(self, socket: Socket, *, asked: bool) -> float:
        """A new live message from ``socket`` (``asked``: by ``iwant``): the seconds to
        stop reading it for (0: none)."""
        key, group = self._key(socket)
        return self.shares.live(key, self._clock(), group, asked=asked)

    def fetched(self, socket: Socket, count: int) -> float:
        """``count`` new messages in a catch-up answer from ``socket``: the seconds to wait
        before fetching more from it (0: none)."""
        key, group = self._key(socket)
        return self.shares.fetched(key, self._clock(), count, group)

    def may_ask(self, peer: Hashable) -> bool:
        """Whether to ask ``peer`` (a connection's id, as the router knows it) for the
        ids it announces: within its share of pulls."""
        conn = self._node.connections.get(peer) if isinstance(peer, int) else None
        if conn is None:
            return True
        key, group = self._key(conn.socket)
        return self.shares.may_ask(key, self._clock(), group)

    def asking(self, peer: Hashable, count: int) -> None:
        """This node asks ``peer`` (a connection's id) for ``count`` ids: their checks are
        spent now (:meth:`~trustp2p.protocol.gossip.CheckShares.asking`)."""
        conn = self._node.connections.get(peer) if isinstance(peer, int) else None
        if conn is not None:
            key, group = self._key(conn.socket)
            self.shares.asking(key, self._clock(), count, group)
