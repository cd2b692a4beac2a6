"""A flood of gossip faster than the handlers take it waits in the sender's buffers,
not in the node's memory (the delivery backlog's bound), over real loopback sockets."""

from __future__ import annotations

import asyncio

from trustp2p.node.gossip_delivery import MAX_WAITING_BYTES
from trustp2p.protocol.gossip import GossipMessage

from .nodes import MakeNode, wait_for


async def test_a_flood_faster_than_the_handlers_pauses_its_sender(make_node: MakeNode) -> None:
    gate = asyncio.Event()
    got: list[int] = []

    async def slow(message: GossipMessage) -> None:
        await gate.wait()
        got.append(message.seq)

    server = await make_node(server=True)
    server.subscribe("chat", slow)
    client = await make_node(client=True, peers=[server.url])
    await client.client.wait_connected()  # type: ignore[union-attr]
    client.subscribe("chat")
    count, size = 200, 100_000  # 20 MB, over the bound of 16 MiB
    assert count * size > MAX_WAITING_BYTES
    publishing = asyncio.gather(*(client.publish("chat", {"x": "a" * size}) for _ in range(count)))
    await wait_for(lambda: len(server.sockets) == 1)
    conn = server.connection(server.sockets[0])
    assert conn is not None
    await wait_for(lambda: conn.held, timeout=10)
    gate.set()
    await wait_for(lambda: len(got) == count, timeout=20)
    await publishing
    assert got == list(range(1, count + 1)) and not conn.held and conn.can_read()
