"""Running one node until Ctrl-C or SIGTERM (``trustp2p server``, ``client``, ``node``)."""

from __future__ import annotations

__all__ = ["serve"]

import asyncio
import signal

from ..node import Node
from ..options import NodeOptions


async def serve(options: NodeOptions) -> int:
    """
    Start a node with ``options``, run it until SIGINT or SIGTERM, then stop it.

    Returns:
        The exit status: 130 after SIGINT (Ctrl-C, at any moment, start-up included),
        0 after SIGTERM (a service manager's stop).

    Raises:
        TrustP2PError: If the node fails to start: a thread that doesn't load, a port
            in use.

    """
    node = Node(options)
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await node.start()
        await stop.wait()
        await node.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 130 if received[0] == signal.SIGINT else 0
