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
        for node in nodes:
            peers = [socket.peer_id for socket in node.sockets]
            assert len(peers) == len(set(peers)), "two connections to one peer"
            assert node.peer_id not in peers
        # A connection is outbound at one end and inbound at the other, never twice.
        for a, b in itertools.combinations(nodes, 2):
            between = [s for s in a.sockets if s.peer_id == b.peer_id]
            assert len(between) <= 1
            if between:
                mirror = [s for s in b.sockets if s.peer_id == a.peer_id]
                assert len(mirror) == 1
                assert mirror[0].inbound != between[0].inbound
    finally:
        for node in reversed(nodes):
            await node.stop()
        await seed.stop()
