"""
A network of in-process nodes, for tests, simulations and demos.

``Network(n)`` runs ``n`` nodes in this process, each with its own directory (identity,
peer store, message log), on the in-memory driver by default. Each node dials
``degree`` others at random, and keeps redialling them. The network can kill and restart
nodes, cut itself into partitions and heal, and delay links::

    async with Network(30, degree=4, topics=["chat"]) as network:
        await network.wait_connected()
        await network.nodes[0].gossip.publish("chat", {"text": "hello"})
        network.partition([range(15), range(15, 30)])
        ...
        network.heal()

Every message a node delivers is recorded in :attr:`Network.received`: per node, the
``(origin, seq, id, when)`` of each delivery, in order.

"""

from __future__ import annotations

__all__ = ["Delivery", "Network", "random_links"]

import asyncio
import random
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .drivers.base import DriverOptions
from .drivers.memory import MemoryDriver, MemoryHub
from .exceptions import UsageError
from .identity import Identity
from .node import Node
from .node.roles import check_timeout
from .protocol.gossip import GossipMessage
from .storage.memory import MemoryShelf
from .threads.loader import THREADS_ENABLED

# Timings for a simulated network: reconnect fast, catch up often, no idle pings.
SIMULATION_OPTIONS: dict[str, Any] = {
    "secure": False,
    "peer_exchange": False,
    "target_outbound": 0,
    "max_per_ip": None,
    "ip_rate": 1000.0,
    "ip_burst": 1000,
    "reconnect_initial": 0.05,
    "reconnect_max": 0.5,
    "close_timeout": 0.5,
    "heartbeat_interval": 3600.0,
    "gossip_interval": 0.2,
    "catchup_interval": 1.0,
    "gap_timeout": 10.0,
    "request_rate": 10_000.0,
    "request_burst": 10_000,
}


def random_links(size: int, degree: int, rng: random.Random) -> list[list[int]]:
    """
    Who dials whom in a random network of ``size`` nodes: per node, ``degree`` distinct
    others (fewer if there aren't enough), never a pair both ways. The same ``rng``
    state gives the same links (``simulate --workers`` plans them in the parent).
    """
    links: list[list[int]] = [[] for _ in range(size)]
    pairs: set[frozenset[int]] = set()
    for index in range(size):
        mine = links[index]
        tried: set[int] = set()
        # The others in a random order, drawn one at a time (a shuffle of all of them
        # per node made 3,000 nodes take seconds), until enough or none left.
        while len(mine) < degree and len(tried) < size - 1:
            other = rng.randrange(size - 1)
            other += other >= index  # never itself
            if other in tried:
                continue
            tried.add(other)
            pair = frozenset((index, other))
            if pair not in pairs:
                pairs.add(pair)
                mine.append(other)
    return links


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message delivered to one node."""

    origin: str
    seq: int
    id: str
    topic: str
    when: float  # time.monotonic()


class Network:
    """
    ``size`` nodes in this process.

    Args:
        size: Number of nodes.
        degree: Peers each node dials (at random); 0 dials nobody.
        topics: Topics every node subscribes to.
        driver: ``"memory"`` (default), or ``"ws"`` / ``"tcp"`` on 127.0.0.1.
        directory: Where the nodes' directories go; a temporary one by default.
        seed: Seed of the random topology.
        stores: ``"memory"`` (default): each node keeps its peer store and message log
            in memory, on a :class:`~trustp2p.storage.memory.MemoryShelf` of its own
            while it is killed, with no SQLite file and no worker thread;
            ``"sqlite"``: in its directory, as a node run on its own does.
        **options: Node options, on top of :data:`SIMULATION_OPTIONS`.

    """

    def __init__(
        self,
        size: int,
        *,
        degree: int = 4,
        topics: Iterable[str] = ("chat",),
        driver: str = "memory",
        directory: Path | None = None,
        seed: int | None = None,
        stores: str = "memory",
        **options: Any,
    ) -> None:
        if size < 1:
            raise ValueError("a network needs at least one node")
        if stores not in ("memory", "sqlite"):
            raise ValueError(f"stores must be 'memory' or 'sqlite', not {stores!r}")
        self.size = size
        self.degree = min(degree, size - 1)
        self.topics = list(topics)
        self.driver = driver
        self.options = {**SIMULATION_OPTIONS, **options}
        self.hub = MemoryHub()
        self.rng = random.Random(seed)
        self.nodes: list[Node] = []
        self.received: list[list[Delivery]] = [[] for _ in range(size)]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._directory = directory
        self._identities = [Identity.generate() for _ in range(size)]
        self._urls: list[str] = []
        self._links: list[list[int]] = []
        self._alive = [False] * size
        self._shelves = [MemoryShelf() if stores == "memory" else None for _ in range(size)]

    async def __aenter__(self) -> Network:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def directory(self) -> Path:
        assert self._directory is not None
        return self._directory

    def alive(self, index: int) -> bool:
        return self._alive[index]

    async def start(self) -> None:
        """Start every node, then dial the random topology."""
        if self._directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="trustp2p-network-")
            self._directory = Path(self._tmp.name)
        ports = [0] * self.size
        if self.driver == "memory":
            self._urls = [f"memory://n{i}:1" for i in range(self.size)]
        for index in range(self.size):
            node = self._make_node(index, ports[index])
            await node.start()
            self.nodes.append(node)
            self._alive[index] = True
            if self.driver != "memory":
                assert node.url is not None
                self._urls.append(node.url)
        self._links = self._topology()
        for index in range(self.size):
            self._dial(index)

    async def stop(self) -> None:
        """Stop every live node, all at once."""
        live = [index for index in range(len(self.nodes)) if self._alive[index]]
        for index in live:
            self._alive[index] = False
        await asyncio.gather(*(self.nodes[index].stop() for index in live))
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _topology(self) -> list[list[int]]:
        return random_links(self.size, self.degree, self.rng)

    def _make_node(self, index: int, port: int) -> Node:
        directory = self.directory / f"node{index}"
        (directory / THREADS_ENABLED).mkdir(parents=True, exist_ok=True)  # none: no warning
        options = dict(self.options)
        if self.driver == "memory":
            # All the nodes share one loop: read turns (the drivers' fairness between a
            # node's connections against a flooding peer) only end turns early there: a
            # 1,000-node simulation took 15 % more CPU and its p50 coverage 20-50 % longer.
            options["driver"] = MemoryDriver(
                DriverOptions(read_turn=None), hub=self.hub, name=f"n{index}"
            )
            options.update(host=f"n{index}", port=1)
        else:
            options.update(driver=self.driver, host="127.0.0.1", port=port)
        options.setdefault("store_shelf", self._shelves[index])
        # Hundreds of nodes on one loop block it by design (a start, the set-up): the
        # watchdog's WARNING is for an application's handlers (a simulation said 5 s).
        options.setdefault("loop_block_warning", 3600.0)
        node = Node(
            server=True,
            client=True,
            cwd=directory,
            identity=self._identities[index],
            **options,
        )
        assert node.gossip is not None
        for topic in self.topics:
            node.gossip.subscribe(topic, self._recorder(index))
        return node

    def _recorder(self, index: int) -> Any:
        received = self.received[index]

        def record(message: GossipMessage) -> None:
            received.append(
                Delivery(message.origin, message.seq, message.id, message.topic, time.monotonic())
            )

        return record

    def _dial(self, index: int) -> None:
        client = self.nodes[index].client
        assert client is not None
        for other in self._links[index]:
            client.connect(self._urls[other])

    # Faults

    def _index(self, node: Node | int) -> int:
        return node if isinstance(node, int) else self.nodes.index(node)

    async def kill(self, node: Node | int) -> None:
        """Stop a node (its directory stays)."""
        index = self._index(node)
        if self._alive[index]:
            self._alive[index] = False
            await self.nodes[index].stop()

    async def restart(self, node: Node | int) -> Node:
        """Start a killed node again: same identity, directory and address."""
        index = self._index(node)
        if self._alive[index]:
            await self.kill(index)
        port = 0
        if self.driver != "memory":
            port = int(self._urls[index].rsplit(":", 1)[1])
        fresh = self._make_node(index, port)
        await fresh.start()
        self.nodes[index] = fresh
        self._alive[index] = True
        self._dial(index)
        return fresh

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """
        Cut the network into groups of node indexes that can't reach each other.

        Raises:
            UsageError: If the network doesn't run on the memory driver.

        """
        self._memory_only("partition")
        self.hub.partition([[f"n{i}" for i in group] for group in groups])

    def heal(self) -> None:
        """
        Undo :meth:`partition`.

        Raises:
            UsageError: If the network doesn't run on the memory driver.

        """
        self._memory_only("heal")
        self.hub.heal()

    def set_delay(self, seconds: float, a: int | None = None, b: int | None = None) -> None:
        """
        Delay messages on the link between nodes ``a`` and ``b``, or on every link
        (memory driver only). Open connections are delayed too, from their next message
        on; messages never overtake each other.

        Raises:
            UsageError: If the network doesn't run on the memory driver.

        """
        self._memory_only("set_delay")
        self.hub.set_delay(seconds, None if a is None else f"n{a}", None if b is None else f"n{b}")

    def _memory_only(self, what: str) -> None:
        if self.driver != "memory":
            raise UsageError(f"{what}() needs the memory driver")

    # Waiting

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until every live node has all the connections of the topology."""
        check_timeout(timeout)
        async with asyncio.timeout(timeout):
            while not self._connected():  # noqa: ASYNC110 - polls many nodes' state
                await asyncio.sleep(0.01)

    def _connected(self) -> bool:
        for index, node in enumerate(self.nodes):
            if not self._alive[index] or node.client is None:
                continue
            wanted = sum(1 for other in self._links[index] if self._alive[other])
            if len(node.client.sockets) < wanted:
                return False
        return True

    async def wait_meshes(self, topic: str, *, timeout: float = 30.0) -> None:
        """
        Wait until every live node knows which of its peers subscribe to ``topic`` and,
        in gossip mode, has at least ``gossip_degree_low`` of them (or all it has) in its
        mesh for ``topic``.

        Raises:
            TimeoutError: If that takes longer than ``timeout`` seconds.

        """
        check_timeout(timeout)
        async with asyncio.timeout(timeout):
            while not self._meshes_formed(topic):  # noqa: ASYNC110 - polls many nodes' state
                await asyncio.sleep(0.02)

    def _meshes_formed(self, topic: str) -> bool:
        for index, node in enumerate(self.nodes):
            if not self._alive[index] or node.gossip is None:
                continue
            router = node.gossip.router
            peers = router.peers
            if any(topic not in router.peer_topics(peer) for peer in peers):
                return False
            if node.options.gossip_mode == "gossip":
                wanted = min(node.options.gossip_degree_low, len(peers))
                if len(router.mesh.get(topic, ())) < wanted:
                    return False
        return True

    async def wait_delivered(self, count: int, *, timeout: float = 30.0) -> None:
        """Wait until every live node delivered at least ``count`` messages."""
        check_timeout(timeout)
        async with asyncio.timeout(timeout):
            while not all(  # noqa: ASYNC110 - polls many nodes' state
                len(self.received[i]) >= count for i in range(self.size) if self._alive[i]
            ):
                await asyncio.sleep(0.01)
