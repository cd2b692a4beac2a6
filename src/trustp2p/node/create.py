"""Creating and starting a node in one call: ``create_server``, ``create_client``,
``create_node``."""

from __future__ import annotations

__all__ = ["create_client", "create_node", "create_server"]

from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..options import NodeOptions
from .node import Node


async def _create(options: NodeOptions) -> Node:
    node = Node(options)
    await node.start()
    return node


async def create_server(
    *, cwd: str | Path | None = None, host: str = "127.0.0.1", port: int = 1107, **options: Any
) -> Node:
    """
    Create and start a node that accepts peers.

    Args:
        cwd: Directory holding ``threads-enabled/``.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see ``node.url``).
        **options: Any other :class:`NodeOptions`.

    """
    return await _create(
        NodeOptions.from_kwargs(cwd=cwd, server=True, host=host, port=port, **options)
    )


async def create_client(
    *, cwd: str | Path | None = None, peers: Collection[str] = (), **options: Any
) -> Node:
    """
    Create and start a node that dials ``peers`` and stays connected to them.

    Use ``await node.client.wait_connected()`` to wait for the first connection.

    """
    return await _create(NodeOptions.from_kwargs(cwd=cwd, client=True, peers=peers, **options))


async def create_node(
    *,
    cwd: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 1107,
    peers: Collection[str] = (),
    **options: Any,
) -> Node:
    """Create and start a node that is both server and client."""
    return await _create(
        NodeOptions.from_kwargs(
            cwd=cwd, server=True, client=True, host=host, port=port, peers=peers, **options
        )
    )
