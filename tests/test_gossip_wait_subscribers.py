"""r28: Gossip.wait_subscribers() outlives the node: a stop doesn't end it (the 'life'
merge made every other wait raise NodeStateError at the stop), and called on a stopped
node it waits for ever instead of raising."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_gossip_behaviour import gossip, memory_node
from trustp2p.drivers.memory import MemoryHub
from trustp2p.exceptions import NodeStateError

pytestmark = pytest.mark.asyncio


async def test_wait_subscribers_ends_when_the_node_stops() -> None:
    hub = MemoryHub()
    async with memory_node(hub, "tool") as tool:
        waiting = asyncio.ensure_future(gossip(tool).wait_subscribers("chat"))
        await asyncio.sleep(0)
        assert not waiting.done()
        await tool.stop()
    with pytest.raises(NodeStateError):
        async with asyncio.timeout(10):  # (it waited for ever)
            await waiting


async def test_wait_subscribers_on_a_stopped_node_raises() -> None:
    hub = MemoryHub()
    async with memory_node(hub, "tool") as tool:
        pass
    with pytest.raises(NodeStateError):
        async with asyncio.timeout(2):  # TimeoutError: it waits for ever
            await gossip(tool).wait_subscribers("chat")
