"""
``publish()``'s wait for the peers that carry its topic, carried out on their sockets:
:class:`~trustp2p.protocol.gossip.PublishPacing` decides whom it waits for and how long.

"""

from __future__ import annotations

__all__ = ["wait_for_peers"]

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from ..drivers.base import Socket
from ..exceptions import ConnectionClosed
from ..protocol.deliver import ConnId
from ..protocol.gossip import PublishPacing


async def wait_for_peers(
    pacing: PublishPacing[ConnId],
    sockets: Iterable[Socket],
    clock: Callable[[], float],
    size: int = 0,
) -> None:
    """
    Wait for the write buffers of ``sockets`` (the open connections that carry the
    message's topic) to drain, those and as long as ``pacing`` says for a message of
    ``size`` bytes, all at once; then tell it how long each took.
    """
    by_id = {socket.id: socket for socket in sockets if not socket.closed}
    behind = {peer: socket.write_paused for peer, socket in by_id.items()}
    peers, timeout = pacing.plan(behind, size)
    if not peers:
        return
    start = clock()
    took: dict[ConnId, float | None] = dict.fromkeys(peers)

    async def drain(peer: ConnId) -> None:
        with contextlib.suppress(ConnectionClosed):
            await by_id[peer].drain()
        took[peer] = clock() - start

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            for peer in peers:
                group.create_task(drain(peer))
    pacing.waited(took, clock() - start)
