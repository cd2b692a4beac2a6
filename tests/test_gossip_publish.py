"""publish()'s wait for its peers, on sockets (``node/gossip_publish.py``): a peer whose
write buffer stays over the mark, but which takes the message, has drained for it."""

from __future__ import annotations

import asyncio
from typing import cast

from trustp2p import Socket
from trustp2p.drivers.base import SocketStats
from trustp2p.node.gossip_publish import wait_for_peers
from trustp2p.protocol.deliver import ConnId
from trustp2p.protocol.gossip import PublishPacing


class _HeldBuffer:
    """A socket whose write buffer stays over the mark (the kernel takes from it in
    large steps) while its peer takes ``step`` bytes between two looks."""

    def __init__(self, step: int, in_flight: int = 4_000_000) -> None:
        self.id = ConnId(1)
        self.closed = False
        self.write_paused = True
        self.stats = SocketStats(bytes_out=in_flight)
        self.step = step
        self.looks = 0
        self._in_flight = in_flight

    def bytes_in_flight(self) -> int:
        self.looks += 1
        self._in_flight = max(0, self._in_flight - self.step)
        return self._in_flight

    async def drain(self) -> None:
        await asyncio.Event().wait()  # never under the mark


async def _publish(socket: _HeldBuffer, pacing: PublishPacing[ConnId], size: int) -> dict:
    took: dict[ConnId, float | None] = {}
    waited = pacing.waited

    def record(times: dict[ConnId, float | None], elapsed: float) -> None:
        took.update(times)
        waited(times, elapsed)

    pacing.waited = record  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        await wait_for_peers(pacing, [cast(Socket, socket)], loop.time, size)
    return took


async def test_a_peer_that_takes_the_message_has_drained_for_it() -> None:
    # Found measuring: a subscriber reading 300 KB/s steadily kept its buffer over the
    # mark for 4.5 s (the kernel took from it once 1.3 MB of its own was free); every
    # wait ran to its end, and the subscriber was slow at the first publish.
    socket = _HeldBuffer(step=30_000)
    pacing: PublishPacing[ConnId] = PublishPacing(clock=asyncio.get_running_loop().time, wait=60)
    took = await _publish(socket, pacing, 100_000)
    assert took[socket.id] is not None and socket.looks == 5  # 4 steps: 120,000 bytes
    assert pacing.slow == set()


async def test_a_peer_that_takes_nothing_is_still_behind_when_the_wait_ends() -> None:
    socket = _HeldBuffer(step=0)
    pacing: PublishPacing[ConnId] = PublishPacing(clock=asyncio.get_running_loop().time, wait=0.1)
    took = await _publish(socket, pacing, 100_000)
    assert took == {socket.id: None}
    assert pacing.slow == {socket.id}


async def test_wait_subscribers_returns_once_peers_carry_the_topic() -> None:
    # Found by a new user: a tool that connected, published and stopped lost half its
    # messages: right after connecting it knew no subscriber yet.
    from trustp2p.drivers.memory import MemoryHub

    from .test_gossip_behaviour import gossip, memory_node, wait_for

    hub = MemoryHub()
    async with memory_node(hub, "sub") as sub, memory_node(hub, "tool") as tool:
        got: list[object] = []
        assert tool.client is not None and sub.url is not None
        tool.client.connect(sub.url)
        await tool.client.wait_connected()
        waiting = asyncio.ensure_future(gossip(tool).wait_subscribers("chat"))
        await asyncio.sleep(0)
        assert not waiting.done()  # nobody carries it yet
        sub.subscribe("chat", got.append)
        async with asyncio.timeout(10):
            assert await waiting == 1
        await tool.publish("chat", {"n": 1})
        await wait_for(lambda: len(got) == 1)
        async with asyncio.timeout(10):  # already true: at once
            assert await gossip(tool).wait_subscribers("chat") == 1
