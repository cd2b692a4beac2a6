"""
``trustp2p demo``: a local network of nodes on 127.0.0.1, watched live.

Node 0 is a server; every other node is server and client at once and dials node 0 and
the node before it (node 1 dials the last node instead), so every node has clients. All
run the heartbeat thread (as ``trustp2p init`` installs it) with short timings, so that
pings flow within seconds, over the secure channel; peer exchange fills in the rest.

The nodes chat: every second each running node publishes a message on the topic
``chat``. A third of the way in, one node stops; two thirds of the way in it starts
again from its directory and catches up on what it missed. The table shows it.

"""

from __future__ import annotations

__all__ = ["run_demo"]

import asyncio
import contextlib
import itertools
import statistics
import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .node import Node
from .options import NodeOptions
from .protocol.gossip import GossipMessage
from .threads.loader import THREADS_AVAILABLE, THREADS_ENABLED

# Short timings so the table moves: a client silent for 0.5 s (between two chat rounds,
# a second apart) is pinged within about as long.
DEMO_TIMINGS = {
    "heartbeat_interval": 0.5,
    "heartbeat_jitter": 0.25,
    "heartbeat_timeout": 0.5,
    "heartbeat_response_timeout": 5.0,
    "reconnect_initial": 0.2,
    "reconnect_max": 1.0,
    "close_timeout": 2.0,
    "exchange_interval": 5.0,
    "gossip_interval": 0.5,
    "catchup_interval": 5.0,
}
TOPIC = "chat"


def _make_app(directory: Path) -> None:
    """Lay out an application directory as ``trustp2p init`` does."""
    (directory / THREADS_AVAILABLE).mkdir(parents=True)
    (directory / THREADS_ENABLED).mkdir()
    source = resources.files("trustp2p.threads").joinpath("heartbeat.py").read_text("utf-8")
    (directory / THREADS_AVAILABLE / "heartbeat.py").write_text(source, "utf-8")
    (directory / THREADS_ENABLED / "heartbeat.py").symlink_to(
        Path("..") / THREADS_AVAILABLE / "heartbeat.py"
    )


def _links(nodes: int) -> dict[int, list[int]]:
    """
    Which nodes each node dials: node 0 by everyone, and a ring through the others
    (1 -> 2 -> ... -> last -> 1), so that every node has clients. Never both ways: a
    pair of peers keeps one connection.
    """
    links: dict[int, list[int]] = {index: [0] for index in range(1, nodes)}
    ring = list(range(1, nodes))
    if len(ring) >= 2:
        for a, b in itertools.pairwise(ring):
            links[a].append(b)
        if len(ring) >= 3:
            links[ring[-1]].append(ring[0])
    return links


class _Demo:
    def __init__(self, directory: Path, size: int, console: Console) -> None:
        self.directory = directory
        self.size = size
        self.console = console
        self.nodes: list[Node] = []
        self.running = [False] * size
        self.ports = [0] * size
        self.received: list[list[tuple[str, int]]] = [[] for _ in range(size)]
        self.caught_up = [0] * size  # across restarts
        self.published = 0
        self.stopped_node: int | None = None
        self.links = _links(size)

    def _options(self, index: int) -> NodeOptions:
        return NodeOptions(
            cwd=self.directory / f"node{index}",
            server=True,
            client=index > 0,
            port=self.ports[index],
            program="trustp2p-demo",
            **DEMO_TIMINGS,  # type: ignore[arg-type]
        )

    async def start(self, index: int) -> Node:
        app = self.directory / f"node{index}"
        if not app.exists():
            # One directory per node: its identity, peer store and message log.
            _make_app(app)
        node = Node(self._options(index))
        assert node.gossip is not None
        received = self.received[index]

        def record(message: GossipMessage) -> None:
            received.append((message.origin, message.seq))

        node.gossip.subscribe(TOPIC, record)
        await node.start()
        assert node.url is not None
        self.ports[index] = int(node.url.rsplit(":", 1)[1])  # a restart listens there again
        if index < len(self.nodes):
            self.nodes[index] = node
            self.dial(index)  # a restart: dial its servers again
        else:
            self.nodes.append(node)
        self.running[index] = True
        return node

    def dial(self, index: int) -> None:
        client = self.nodes[index].client
        for target in self.links.get(index, []):
            url = self.nodes[target].url
            assert client is not None
            assert url is not None
            client.connect(url)

    async def stop(self, index: int) -> None:
        node = self.nodes[index]
        if node.gossip is not None:
            self.caught_up[index] += node.gossip.caught_up
        self.running[index] = False
        await node.stop()

    async def chat(self, round_: int) -> None:
        for index, node in enumerate(self.nodes):
            if self.running[index] and node.gossip is not None:
                await node.gossip.publish(TOPIC, {"from": index, "round": round_})
                self.published += 1

    def table(self, elapsed: float, duration: float) -> Table:
        table = Table(
            title=f"trustp2p demo: {self.size} nodes, {elapsed:.0f}/{duration:.0f} s, "
            f"{self.published} chat messages"
        )
        columns = (
            "node",
            "port",
            "state",
            "in",
            "out",
            "pkts in",
            "pkts out",
            "RTT ms",
            "chat",
            "caught up",
        )
        for column in columns:
            left = column in ("node", "port", "state")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        for index, node in enumerate(self.nodes):
            running = self.running[index]
            sockets = node.sockets if running else []
            rtts = [s.stats.last_rtt for s in sockets if s.inbound and s.stats.last_rtt]
            caught = self.caught_up[index]
            if running and node.gossip is not None:
                caught += node.gossip.caught_up
            table.add_row(
                str(index),
                (node.url or "-").rsplit(":", 1)[-1],
                "up" if running else "[red]stopped[/red]",
                str(sum(1 for s in sockets if s.inbound)),
                str(sum(1 for s in sockets if not s.inbound)),
                str(sum(s.stats.messages_in for s in sockets)),
                str(sum(s.stats.messages_out for s in sockets)),
                f"{statistics.mean(rtts) * 1000:.2f}" if rtts else "-",
                str(len(self.received[index])),
                str(caught),
            )
        return table

    def summary(self, table: Table) -> bool:
        console = self.console
        console.print(table)
        problems = []
        links = _links(self.size)
        everything = {item for received in self.received for item in received}
        for index, node in enumerate(self.nodes):
            peers = [s.peer_id for s in node.sockets]
            if len(peers) != len(set(peers)):
                problems.append(f"node {index} has two connections to one peer")
            for target in links.get(index, []):
                if self.nodes[target].peer_id not in peers:
                    problems.append(f"node {index} is not connected to node {target}")
            if any(s.stats.invalid_in for s in node.sockets):
                problems.append(f"node {index} received invalid packages")
            received = self.received[index]
            if len(received) != len(set(received)):
                problems.append(f"node {index} received a chat message twice")
            if set(received) != everything:
                problems.append(
                    f"node {index} has {len(set(received))} of {len(everything)} chat messages"
                )
        if (
            self.stopped_node is not None
            and not self.caught_up[self.stopped_node]
            and not (
                self.nodes[self.stopped_node].gossip
                and self.nodes[self.stopped_node].gossip.caught_up  # type: ignore[union-attr]
            )
        ):
            problems.append(f"node {self.stopped_node} caught up on nothing after its restart")
        rtts = [
            s.stats.last_rtt * 1000
            for node in self.nodes
            for s in node.sockets
            if s.inbound and s.stats.last_rtt is not None
        ]
        if not rtts:
            # Busy clients aren't pinged (they aren't silent), but some must have been.
            problems.append("no server measured a ping round trip")
        connections = sum(1 for node in self.nodes for s in node.sockets if not s.inbound)
        console.print(
            f"summary: {self.size} nodes, {connections} connections, "
            f"{len(everything)} chat messages, each delivered once to every node; "
            + (
                f"ping RTT median {statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms"
                if rtts
                else "no ping round trip measured"
            )
        )
        for problem in problems:
            console.print(f"[red]problem:[/red] {problem}")
        if not problems:
            console.print("[green]the network is healthy[/green]")
        return not problems


async def run_demo(
    *, nodes: int = 5, duration: float = 20.0, console: Console | None = None
) -> int:
    """
    Run the demo network for ``duration`` seconds, print a summary, and return 0 if
    every node connected as planned, pings were answered, and every node (the restarted
    one too) has every chat message exactly once.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=100)  # the table's ten columns need it
    with tempfile.TemporaryDirectory(prefix="trustp2p-demo-") as tmp:
        demo = _Demo(Path(tmp), nodes, console)
        healthy = False
        try:
            for index in range(nodes):
                await demo.start(index)
            for index in demo.links:
                demo.dial(index)
            async with asyncio.timeout(10):
                for index, targets in demo.links.items():
                    client = demo.nodes[index].client
                    assert client is not None
                    await client.wait_connected(len(targets))
            healthy = await _run(demo, duration)
        finally:
            for index in reversed(range(len(demo.nodes))):
                if demo.running[index]:
                    await demo.stop(index)
    return 0 if healthy else 1


async def _run(demo: _Demo, duration: float) -> bool:
    console = demo.console
    loop = asyncio.get_running_loop()
    started = loop.time()
    refresh = 0.25 if console.is_terminal else 5.0
    victim = demo.size - 2 if demo.size >= 3 else None  # a node that has clients
    live = (
        Live(demo.table(0, duration), console=console, auto_refresh=False, transient=True)
        if console.is_terminal
        else None
    )
    chat_round = 0
    next_chat = started
    next_refresh = started + refresh
    # The chat stops a little before the end, so that the last messages settle.
    chat_until = started + max(duration - 3.0, duration * 0.75)
    with live if live is not None else contextlib.nullcontext():
        while (now := loop.time()) < started + duration:
            elapsed = now - started
            if victim is not None and demo.stopped_node is None and elapsed >= duration / 3:
                await demo.stop(victim)
                demo.stopped_node = victim
            elif (
                victim is not None
                and demo.stopped_node is not None
                and not demo.running[victim]
                and elapsed >= 2 * duration / 3
            ):
                await demo.start(victim)
            if now >= next_chat and now < chat_until:
                await demo.chat(chat_round)
                chat_round += 1
                next_chat += 1.0
            if now >= next_refresh:
                next_refresh += refresh
                if live is not None:
                    live.update(demo.table(elapsed, duration), refresh=True)
                else:
                    console.print(demo.table(elapsed, duration))
            await asyncio.sleep(0.1)
    return demo.summary(demo.table(loop.time() - started, duration))
