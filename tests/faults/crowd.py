"""
Client nodes in a process of their own, each dialling from a source address of its own
choosing, as peers on several addresses of one network would: ``python crowd.py URL
COUNT SOURCE...``. Node ``i`` dials from ``SOURCE[i % len(SOURCE)]``, again on each
redial.

Each node is a client with the default options (no ``cwd``: an identity of its own, its
stores in memory) and a thread that reports its connections. It prints
``connected <i>`` when node ``i`` connects, ``closed <i> <code> <reason>`` when its
connection closes, and ``started`` once every node started; it logs to stderr (INFO)
and stops on SIGTERM.

"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from trustp2p import EventMap, Node, PackageType, Socket, Thread


def reporter(index: int) -> type[Thread]:
    class Report(Thread):
        @property
        def event_map(self) -> EventMap:
            return {PackageType.TALK: {"crowd": lambda socket, package: None}}

        def on_socket_open(self, socket: Socket) -> None:
            print(f"connected {index}", flush=True)

        def on_socket_close(self, socket: Socket) -> None:
            print(f"closed {index} {socket.close_code} {socket.close_reason}", flush=True)

    return Report


SOURCE: ContextVar[str | None] = ContextVar("SOURCE", default=None)
"""The source address of the node whose task dials (its tasks copy the context that
started it); ``None``: the kernel's choice."""


def from_sources(dial: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``loop.create_connection`` as ``dial``, from :data:`SOURCE`'s address if set."""

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        source = SOURCE.get()
        if source is not None:
            kwargs.setdefault("local_addr", (source, 0))
        return await dial(*args, **kwargs)

    return create_connection


async def main(url: str, count: int, sources: list[str]) -> None:
    loop = asyncio.get_running_loop()
    loop.create_connection = from_sources(loop.create_connection)  # type: ignore[method-assign]
    nodes = []
    for index in range(count):
        SOURCE.set(sources[index % len(sources)])
        node = Node(client=True, peers=[url], threads=[reporter(index)])
        await node.start()
        nodes.append(node)
    print("started", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.gather(*(node.stop() for node in nodes))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
