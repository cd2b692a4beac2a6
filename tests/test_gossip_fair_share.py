"""The node-wide budget of live gossip messages (``gossip_node_rate``), over memory
connections: peers that send more than their share wait, a peer within it never does."""

from __future__ import annotations

import asyncio
import time

from trustp2p import Node
from trustp2p.drivers.memory import MemoryHub
from trustp2p.identity import Identity
from trustp2p.options import NodeOptions
from trustp2p.protocol.gossip import GossipMessage, sign_message
from trustp2p.protocol.package import PackageType, build_package

from .conftest import wait_for
from .test_gossip_behaviour import memory_node, socket_to, subscribed


async def flood(node: Node, count: int) -> None:
    """``count`` messages on ``"chat"`` to the server, each from a new origin (free
    identities: an attacker's way past each peer's own budget)."""
    socket = socket_to(node, "server")
    for number in range(count):
        now = int(time.time() * 1000)
        message = sign_message(Identity.generate(), "chat", 1, now, {"n": number})
        await node.send(socket, build_package(PackageType.GOSSIP, "chat", message.to_body()))


def test_the_default_is_one_peers_gossip_rate() -> None:
    options = NodeOptions(client=True)
    assert options.gossip_node_rate == options.gossip_rate == 1000.0


async def test_flooders_wait_while_a_light_publisher_goes_on() -> None:
    # Found by an attacker: two throwaway identities, each within its own budget,
    # sent 2,000 messages a second of new origins; an honest origin's 5 a second
    # waited behind them for up to 8 s (and 3 s once its share was fair).
    hub = MemoryHub()
    async with (  # the server stops first: what the flooders sent is left unread
        memory_node(hub, "flood1") as flood1,
        memory_node(hub, "flood2") as flood2,
        memory_node(hub, "light") as light,
        memory_node(hub, "server", gossip_node_rate=50.0) as server,
    ):
        delivered: list[GossipMessage] = []
        server.subscribe("chat", delivered.append)
        for node in (flood1, flood2, light):
            node.subscribe("chat")
            assert node.client is not None and server.url is not None
            node.client.connect(server.url)
        await wait_for(lambda: subscribed(server, "chat", 3))
        floods = [asyncio.create_task(flood(node, 200)) for node in (flood1, flood2)]
        try:
            await wait_for(lambda: server.metrics.throttles >= 2)  # both wait
            await light.publish("chat", {"text": "hello"})
            await wait_for(lambda: any(m.origin == light.peer_id for m in delivered))
            # The flood waits its turn: its 400 messages take 8 s at 50 a second.
            assert len(delivered) < 400
        finally:
            for task in floods:
                task.cancel()
