"""
A node in a process of its own, for the fault tests: ``python peer.py OPTIONS_JSON``.

The JSON object holds :class:`trustp2p.NodeOptions` and, prefixed with ``_``, what this
program does besides:

- ``_ask``: on each connection it opens, send a ``hang`` request (never answered, not
  reroutable) and log how it ends; ``_hangs``: how many (default 1), all at once.
- ``_big``: ``[count, size]``: on each connection it opens, send ``count`` ``echo``
  requests of ``size`` bytes at once, and log ``big requests ended: <outcomes>``.
- ``_log_level``: the root logger's level (default ``INFO``).
- ``_record``: ``[path, topic]``: subscribe to ``topic`` before starting, and append
  ``"<origin> <seq>"`` to ``path`` for each message delivered (one ``write`` per line,
  ``O_APPEND``: a line is whole or absent after ``kill -9``), after a line ``start``.

It prints ``listening <url>`` (server) and ``started`` on stdout once started, logs to
stderr, and stops on SIGTERM. Its ``Service`` thread answers ``echo`` and never answers
``hang`` (its handler returns when the node stops).

"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from trustp2p import EventMap, Node, Package, PackageType, Socket, Thread

log = logging.getLogger("peer")


class Service(Thread):
    ask = False
    hangs = 1
    big: tuple[int, int] | None = None

    def start(self) -> None:
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()  # hang requests end unanswered

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self._echo, "hang": self._hang}}

    def _echo(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"echo": package.body}

    async def _hang(self, socket: Socket, package: Package) -> None:
        await self._stopping.wait()

    def on_socket_open(self, socket: Socket) -> None:
        if self.ask:
            self.create_task(self._ask(socket), name="ask")
        if self.big is not None:
            self.create_task(self._big(socket, *self.big), name="big")

    async def _big(self, socket: Socket, count: int, size: int) -> None:
        assert self.client is not None
        client = self.client
        requests = [
            client.request(socket, "echo", {"n": n, "data": "x" * size}) for n in range(count)
        ]
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        said = [type(x).__name__ if isinstance(x, BaseException) else "ok" for x in outcomes]
        log.info("big requests ended: %s", " ".join(said))

    async def _ask(self, socket: Socket) -> None:
        assert self.client is not None
        client = self.client
        requests = [
            # Bodies differ: equal requests would share a tag (de-duplication).
            asyncio.ensure_future(client.request(socket, "hang", {"n": n}, timeout=300.0))
            for n in range(self.hangs)
        ]
        log.info("hang request sent")
        for exc in await asyncio.gather(*requests, return_exceptions=True):
            log.info("hang request ended: %s %s", type(exc).__name__, exc)


def record(node: Node, path: str, topic: str) -> None:
    """Subscribe ``node`` to ``topic``, appending each delivery to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"start\n")
    assert node.gossip is not None
    node.gossip.subscribe(
        topic, lambda message: os.write(fd, f"{message.origin} {message.seq}\n".encode())
    )


async def main(options: dict[str, Any]) -> None:
    Service.ask = bool(options.pop("_ask", False))
    Service.hangs = int(options.pop("_hangs", 1))
    big = options.pop("_big", None)
    Service.big = None if big is None else (int(big[0]), int(big[1]))
    recording = options.pop("_record", None)
    node = Node(threads=(Service,), **options)
    if recording is not None:
        record(node, *recording)
    await node.start()
    if node.url is not None:
        print("listening", node.url, flush=True)
    print("started", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    # Ignored from now on, until the process exits: a second SIGTERM (Child.stop sends
    # one if the process is still alive) found the default action once asyncio.run
    # removed the handlers, and the process exited -15 after a clean stop (CI, stop
    # 43). Swapped for SIG_IGN in one call (no default action between, for any of
    # the process's threads: review44), and the process ends here, so that asyncio's
    # cleanup doesn't put the default action back.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    await node.stop()
    print("stopped", flush=True)
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    logging.basicConfig(
        level=options.pop("_log_level", "INFO"),
        stream=sys.stderr,
        format="%(created).3f %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(main(options))
