"""
Shared by the tests of trusted peers: fast options for nodes on 127.0.0.1, the
factory behind the ``make_node`` fixture (``conftest.py``) that starts nodes and stops
them after the test, and ``wait_for``.

"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from trustp2p import Node

from .conftest import MS

FAST: dict[str, Any] = {
    "peer_exchange": False,
    "target_outbound": 0,
    "open_timeout": 2000 * MS,
    "close_timeout": 500 * MS,
    "reconnect_initial": 20 * MS,
    "reconnect_max": 100 * MS,
    "heartbeat_interval": 60.0,
}
"""Short timings; no peer exchange or outbound manager unless a test asks."""

MakeNode = Callable[..., Awaitable[Node]]


async def node_factory(defaults: dict[str, Any] = FAST) -> AsyncIterator[MakeNode]:
    """Start nodes with ``defaults`` and the given options on ephemeral ports; stop
    them all at the end."""
    nodes: list[Node] = []

    async def make(**options: Any) -> Node:
        kwargs = {**defaults, **options}
        kwargs.setdefault("port", 0)
        node = Node(**kwargs)
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in reversed(nodes):
        await node.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every millisecond until it holds; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - conditions on plain attributes
            await asyncio.sleep(MS)
