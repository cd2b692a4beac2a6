"""Running one node until Ctrl-C or SIGTERM (``trustp2p server``, ``client``, ``node``)."""

from __future__ import annotations

__all__ = ["serve"]

import asyncio
import signal

from ..node import Node
from ..options import NodeOptions


async def serve(options: NodeOptions) -> None:
    """
    Start a node with ``options``, run it until SIGINT or SIGTERM, then stop it.

    Raises:
        TrustP2PError: If the node fails to start: a thread that doesn't load, a port
            in use.

    """
    node = Node(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await node.start()
        await stop.wait()
        await node.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
