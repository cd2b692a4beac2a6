"""
Gossip sending: the router's actions (:class:`~trustp2p.protocol.gossip.RouterAction`)
carried out on the node's connections. A message sent to many peers is built into a
package once, and each of them gets that package in turn. :func:`make_router` makes a
node's router, sending through an :class:`ActionSender`, with the node's options.

"""

from __future__ import annotations

__all__ = ["ActionSender", "make_router"]

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..exceptions import ConnectionClosed
from ..protocol.gossip import GossipRouter
from ..protocol.package import Package, PackageType, build_package

if TYPE_CHECKING:
    from ..protocol.gossip import GossipMessage, RouterAction
    from .node import Node

logger = logging.getLogger(__name__)


class ActionSender:
    """Sends each router action to its peer on ``node`` (called as ``send(action)``); a
    peer gone since is left out, and a package too large is logged, not raised."""

    __slots__ = ("_last", "_node")

    def __init__(self, node: Node) -> None:
        self._node = node
        # The last message sent and its package, which each of its targets gets in turn.
        self._last: tuple[GossipMessage | None, Package | None] = (None, None)

    def __call__(self, action: RouterAction) -> None:
        socket = self._node.socket_by_id(action.peer)  # type: ignore[arg-type]
        if socket is None:
            return
        source = ""  # (a talk's: only gossip shares a peer's send queue by source)
        if action.kind == "talk":
            package = build_package(PackageType.TALK, action.event, action.body)
        else:
            package = self._package(action.message)
            assert action.message is not None
            # Whom the node has it from: the first token of its via, the node's own for
            # the connection's source (its address group; see gossip_log.Attribution).
            source = action.message.via.partition(".")[0]
        try:
            self._node.connections.send_package(socket, package, source=source)
        except ConnectionClosed:
            pass
        except ValueError as exc:  # PackageTooLarge (a talk's topics are bounded: batch.py)
            logger.warning("! %s to %s not sent: %s", action.event, socket.peer, exc)

    def _package(self, message: GossipMessage | None) -> Package:
        last, package = self._last
        if message is not last or package is None:
            assert message is not None
            package = build_package(PackageType.GOSSIP, message.topic, message.to_body())
            self._last = (message, package)
        return package


def make_router(node: Node, clock: Callable[[], float], rng: random.Random) -> GossipRouter:
    """The router of ``node``'s gossip, set up from its options: it sends through an
    :class:`ActionSender`, with ``clock`` (monotonic seconds) and ``rng``."""
    options = node.options
    router = GossipRouter(
        send=ActionSender(node),
        clock=clock,
        degree=options.gossip_degree,
        degree_low=options.gossip_degree_low,
        degree_high=options.gossip_degree_high,
        lazy=options.gossip_lazy,
        fanout=options.gossip_fanout,
        history=options.gossip_history,
        seen_max=options.seen_max,
        seen_ttl=options.seen_ttl,
        max_hops=options.max_hops,
        prune_backoff=options.gossip_prune_backoff,
        want_window=options.gossip_want_window,
        mode=options.gossip_mode,
        rng=rng,  # one generator a node: each holds 2.5 KiB of state
        defer=lambda callback: asyncio.get_running_loop().call_soon(callback),
    )
    router.flood_topics = frozenset(options.relay_topics)  # (a hub's clients: each one)
    if (limit := options.max_package_size) is not None:  # a talk's topics: a quarter
        router.batch.max_bytes = min(router.batch.max_bytes, limit // 4)
    return router
