"""Running one node until Ctrl-C or SIGTERM (``trustp2p server``, ``client``, ``node``)."""

from __future__ import annotations

__all__ = ["serve"]

import asyncio
import signal

from ..node import Node
from ..options import NodeOptions


async def serve(options: NodeOptions) -> int:
    """
    Start a node with ``options``, run it until SIGINT or SIGTERM, then stop it. A
    second signal while it stops drops the connections that haven't closed yet (a
    frozen peer holds a closing handshake for ``close_timeout``).

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

    stopping = False  # the stop began: a signal now is a second request

    def on_signal(signum: int) -> None:
        received.append(signum)
        if not stop.is_set():
            stop.set()
            return
        if not stopping:  # one request delivered twice (timeout(1) signals the process,
            return  # then its group) before the stop began: not a second Ctrl-C
        # Again while stopping: a peer that doesn't answer our close (frozen, or its
        # link dead) would hold the stop for close_timeout. Drop the connections.
        layer = node.secure_layer  # in secure mode, its transports: handshakes too
        transports = layer.raw_sockets if layer is not None else node.sockets
        node.log.warning("x %s again: dropping the connections not closed yet", _name(signum))
        for socket in transports:
            socket.abort()  # (nothing if it is closed)

    # A node a shell started in the background inherits an ignored SIGINT, as every
    # program does: it keeps ignoring it (a Ctrl-C is for the shell's foreground job).
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signals = (signal.SIGTERM,) if ignored else (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await node.start()
        await stop.wait()
        stopping = True
        if node.sockets:
            node.log.info(
                "x %s: closing %d connection(s), each within close_timeout (%g s); %s again"
                " drops them",
                _name(received[0]), len(node.sockets), options.close_timeout, _name(received[0]),
            )  # fmt: skip
        await node.stop()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return 130 if received[0] == signal.SIGINT else 0


def _name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
