"""
Nodes in tests: ``FAST``, the one set of fast options (tests that need other timings
derive from it: ``{**FAST, ...}``), and the factory behind the ``make_node`` fixture
(``conftest.py``) that starts nodes and stops them after the test.

"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from trustp2p import Node

from .conftest import MS, wait_for

__all__ = ["FAST", "MakeNode", "node_factory", "wait_for"]  # wait_for: from .conftest

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
    """Start nodes with ``defaults`` (``FAST``; ``{}`` for the documented defaults) and
    the given options on ephemeral ports; stop them all at the end."""
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
