"""Over loopback: a peer's self-announced URLs are stored only on the host it connects
from (attacker31 F2: any inbound peer made a ``trustp2p node`` dial hosts of its choice).
Other loopback addresses than 127.0.0.1 stand for other hosts."""

from __future__ import annotations

import asyncio

from trustp2p import Node

from .conftest import MS
from .nodes import MakeNode


async def stored_urls(node: Node) -> set[str]:
    assert node.store is not None
    return {url for record in await node.store.peers() for url in record.urls}


async def test_a_peer_announcing_another_host_is_not_stored(make_node: MakeNode) -> None:
    server = await make_node(server=True, host="127.0.0.1")
    own, localhost = "ws://127.0.0.1:40001", "ws://localhost:40003"
    others = ["ws://127.0.0.2:40002", "ws://127.0.1.5:4000", "ws://10.0.0.5:6379"]
    client = await make_node(client=True, peers=[server.url], listen_urls=[own, *others, localhost])
    assert client.client is not None
    await client.client.wait_connected()
    async with asyncio.timeout(5):
        while own not in await stored_urls(server):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(MS)
    stored = await stored_urls(server)
    assert localhost in stored  # loopback's usual spellings: this machine
    assert not set(others) & stored, stored
