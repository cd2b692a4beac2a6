"""Peer discovery: nodes bootstrapped from one seed find their outbound target."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from trustp2p import Node, Socket

from .conftest import MS

FAST: dict[str, Any] = {
    "open_timeout": 5000 * MS,
    "close_timeout": 500 * MS,
    "reconnect_initial": 50 * MS,
    "reconnect_max": 500 * MS,
    "exchange_interval": 100 * MS,
    "heartbeat_interval": 60.0,
    "port": 0,
}


# Outbound connections each node must reach. A connection is outbound for one end only,
# so 20 nodes with 8 each would need 160 of the 190 possible pairs, oriented just so;
# 4 each leaves room for the inbound connections that well-known nodes attract.
TARGET = 4


def outbound(node: Node) -> list[Socket]:
    return node.client.sockets if node.client is not None else []


def consistent(nodes: list[Node]) -> bool:
    """One connection per pair of peers, seen from both ends, and nobody dials itself."""
    for node in nodes:
        peers = [socket.peer_id for socket in node.sockets]
        if len(peers) != len(set(peers)) or node.peer_id in peers:
            return False
    # A connection is outbound at one end and inbound at the other, never twice.
    for a, b in itertools.combinations(nodes, 2):
        between = [s for s in a.sockets if s.peer_id == b.peer_id]
        mirror = [s for s in b.sockets if s.peer_id == a.peer_id]
        if len(between) != len(mirror) or len(between) > 1:
            return False
        if between and mirror[0].inbound == between[0].inbound:
            return False
    return True


async def test_twenty_nodes_reach_their_outbound_target_from_one_seed() -> None:
    seed = Node(server=True, **FAST)
    await seed.start()
    nodes: list[Node] = []
    try:
        for _ in range(20):
            node = Node(server=True, client=True, peers=[seed.url], target_outbound=TARGET, **FAST)
            await node.start()
            nodes.append(node)
        async with asyncio.timeout(60):  # generous: a loaded CI machine
            while not all(len(outbound(node)) >= TARGET for node in nodes):  # noqa: ASYNC110
                await asyncio.sleep(20 * MS)
        # Duplicates from simultaneous dials are resolved within moments: wait for it.
        async with asyncio.timeout(10):
            while not consistent(nodes):  # noqa: ASYNC110 - polls many nodes' state
                await asyncio.sleep(20 * MS)
    finally:
        for node in reversed(nodes):
            await node.stop()
        await seed.stop()
