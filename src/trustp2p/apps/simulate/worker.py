"""
One worker process of ``simulate --workers N``: ``python -m trustp2p.apps.simulate.worker``.

It runs its share of the nodes on tcp:// over 127.0.0.1, and does what the parent
(:mod:`.workers`) says, one JSON object a line on stdin, answering the same way on
stdout (logs go to stderr):

- ``setup`` (``count``, the gossip options): start ``count`` nodes, each listening on a
  port the system picks; answers ``listening`` with their URLs;
- ``dial`` (``links``: per node, the URLs it dials): dial them, answer ``connected``
  once every node has its outbound connections;
- ``mesh``: answer ``formed`` once every node's mesh is formed;
- ``go``: publishing starts: pause the cycle collector (as the one-process runner
  does), count bytes from now, and send ``progress`` (deliveries in all, and the
  fewest messages a node has) every 0.1 s when it changed;
- ``publish`` (``number``, ``origin``: the global index, ``node``: the local one):
  publish from that node (in a task of its own: the next command doesn't wait for it),
  answer ``published`` with the message id and ``time.monotonic()`` just before;
- ``report``: send the table of messages seen (``messages``: id, origin, seq), one
  ``node`` line per node (its deliveries as ``[message, when]``, its router counters),
  then ``report`` (bytes written since ``go``, peak RSS), stop the nodes and exit.

Times are ``time.monotonic()``, which is ``CLOCK_MONOTONIC`` on Linux: one clock for
every process of the machine, so the parent compares a publish in one worker with a
delivery in another. When stdin closes (the parent is gone), the worker stops its nodes
and exits; it ignores SIGINT (Ctrl-C reaches the parent, which stops the workers). An
error is answered with ``error`` and exit status 1.

"""

from __future__ import annotations

__all__ = ["main"]

import asyncio
import gc
import json
import signal
import sys
import time
from typing import Any

from ...drivers.base import SocketStats
from ...loop import run
from ...testing import Network
from .config import TOPIC
from .runner import cpu_seconds, peak_rss_mib, router_counts, traffic_thread

_LINE_LIMIT = 1 << 24  # bytes: the longest command (the dial plan of a big share)
_LATE_CONNECT = "the nodes didn't connect within {:g} s"
_LATE_MESH = "the nodes didn't form their meshes within {:g} s"


class _Worker:
    """The nodes of one worker and what they recorded."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.traffic: list[SocketStats] = []
        self.network = Network(
            setup["count"],
            degree=0,  # the parent says whom to dial
            topics=[TOPIC],
            driver="tcp",
            gossip_mode=setup["mode"],
            gossip_degree=setup["mesh_degree"],
            gossip_degree_low=setup["mesh_degree_low"],
            gossip_degree_high=setup["mesh_degree_high"],
            threads=(traffic_thread(self.traffic),),
        )
        self.links: list[list[str]] = []
        self.bytes_before = 0
        self.monitor: asyncio.Task[None] | None = None
        self.publishes: list[asyncio.Task[None]] = []

    async def handle(self, command: dict[str, Any]) -> bool:
        """Carry out one command; false once the worker is done."""
        op = command["op"]
        network = self.network
        if op == "setup":
            await network.start()
            _send(op="listening", urls=[node.url for node in network.nodes])
        elif op == "dial":
            self.links = command["links"]
            for node, urls in zip(network.nodes, self.links, strict=True):
                assert node.client is not None
                for url in urls:
                    node.client.connect(url)
            await self._wait_connected(command["timeout"])
            _send(op="connected")
        elif op == "mesh":
            try:
                await network.wait_meshes(TOPIC, timeout=command["timeout"])
            except TimeoutError:
                raise TimeoutError(_LATE_MESH.format(command["timeout"])) from None
            _send(op="formed")
        elif op == "go":
            self.bytes_before = sum(stats.bytes_out for stats in self.traffic)
            gc.collect()
            gc.freeze()
            gc.disable()
            self.monitor = asyncio.create_task(self._monitor())
        elif op == "publish":
            # Its own task: the next command's publish doesn't wait for this one's.
            self.publishes.append(asyncio.create_task(self._publish(command)))
        elif op == "report":
            await asyncio.gather(*self.publishes)  # (raises what a publish raised)
            await self._report(command["first"])
            return False
        else:
            raise ValueError(f"unknown command {op!r}")
        return True

    async def _publish(self, command: dict[str, Any]) -> None:
        gossip = self.network.nodes[command["node"]].gossip
        assert gossip is not None
        when = time.monotonic()
        try:
            message_id = await gossip.publish(TOPIC, {"n": command["number"]})
        except Exception as exc:  # said at once: the parent would wait out its timeout
            _send(op="error", message=f"{type(exc).__name__}: {exc}")
            raise
        _send(
            op="published",
            id=message_id,
            number=command["number"],
            when=when,
            origin=command["origin"],
        )

    async def _wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not self._connected():  # noqa: ASYNC110 - polls many nodes' state
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise TimeoutError(_LATE_CONNECT.format(timeout)) from None

    def _connected(self) -> bool:
        for node, urls in zip(self.network.nodes, self.links, strict=True):
            assert node.client is not None
            if len(node.client.sockets) < len(urls):
                return False
        return True

    async def _monitor(self) -> None:
        last = (-1, -1)
        while True:
            counts = [len(deliveries) for deliveries in self.network.received]
            now = (sum(counts), min(counts))
            if now != last:
                _send(op="progress", delivered=now[0], least=now[1])
                last = now
            await asyncio.sleep(0.1)

    async def _report(self, first: int) -> None:
        if self.monitor is not None:
            self.monitor.cancel()
            await asyncio.gather(self.monitor, return_exceptions=True)
        gc.enable()
        gc.unfreeze()
        table: dict[str, int] = {}
        messages: list[list[Any]] = []
        for deliveries in self.network.received:
            for delivery in deliveries:
                if delivery.id not in table:
                    table[delivery.id] = len(messages)
                    messages.append([delivery.id, delivery.origin, delivery.seq])
        _send(op="messages", table=messages)
        for local, (node, deliveries) in enumerate(
            zip(self.network.nodes, self.network.received, strict=True)
        ):
            counts = router_counts(first + local, node)
            _send(
                op="node",
                index=first + local,
                deliveries=[[table[d.id], d.when] for d in deliveries],
                counts=[counts.duplicates, counts.received, counts.caught_up],
            )
        bytes_out = sum(stats.bytes_out for stats in self.traffic) - self.bytes_before
        _send(op="report", bytes=bytes_out, peak_rss_mib=peak_rss_mib(), cpu=cpu_seconds())


def _send(**message: Any) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _serve() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker: _Worker | None = None
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if worker is None:
                worker = _Worker(command)
            if not await worker.handle(command):
                break
    except TimeoutError as exc:
        _send(op="error", message=str(exc), timeout=True)
        return 1
    except Exception as exc:
        _send(op="error", message=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if worker is not None:
            await worker.network.stop()
    return 0


def main() -> int:
    """Run the worker on the event loop named by the first argument (default asyncio)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run(_serve(), loop=sys.argv[1] if len(sys.argv) > 1 else "asyncio")


if __name__ == "__main__":
    sys.exit(main())
