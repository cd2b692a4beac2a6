"""
``trustp2p demo``: a local network of nodes on 127.0.0.1, watched live.

Node 0 is a server; every other node is server and client at once and dials node 0 and
the node before it (node 1 dials the last node instead), so every node has clients. All
run the heartbeat thread (as ``trustp2p init`` installs it) with short timings, so that
pings flow within seconds.

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
from .threads.loader import THREADS_AVAILABLE, THREADS_ENABLED

# Short timings so the table moves: a client silent for 1 s is pinged within ~1.5 s.
DEMO_TIMINGS = {
    "heartbeat_interval": 1.0,
    "heartbeat_jitter": 0.5,
    "heartbeat_timeout": 1.0,
    "heartbeat_response_timeout": 5.0,
    "reconnect_initial": 0.2,
    "reconnect_max": 2.0,
    "close_timeout": 2.0,
}


def _make_app(directory: Path) -> None:
    """Lay out an application directory as ``trustp2p init`` does."""
    (directory / THREADS_AVAILABLE).mkdir(parents=True)
    (directory / THREADS_ENABLED).mkdir()
    source = resources.files("trustp2p.threads").joinpath("heartbeat.py").read_text("utf-8")
    (directory / THREADS_AVAILABLE / "heartbeat.py").write_text(source, "utf-8")
    (directory / THREADS_ENABLED / "heartbeat.py").symlink_to(
        Path("..") / THREADS_AVAILABLE / "heartbeat.py"
    )


def _rtt_ms(node: Node) -> str:
    rtts = [s.stats.last_rtt for s in node.sockets if s.inbound and s.stats.last_rtt is not None]
    return f"{statistics.mean(rtts) * 1000:.2f}" if rtts else "-"


def _table(nodes: list[Node], elapsed: float, duration: float) -> Table:
    table = Table(title=f"trustp2p demo: {len(nodes)} nodes, {elapsed:.0f}/{duration:.0f} s")
    for column in ("node", "listens on", "role", "in", "out", "pkgs in", "pkgs out", "RTT ms"):
        left = column in ("node", "listens on", "role")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for index, node in enumerate(nodes):
        sockets = node.sockets
        role = "both" if node.client is not None else "server"
        table.add_row(
            str(index),
            (node.url or "-").removeprefix("ws://"),
            role,
            str(sum(1 for s in sockets if s.inbound)),
            str(sum(1 for s in sockets if not s.inbound)),
            str(sum(s.stats.messages_in for s in sockets)),
            str(sum(s.stats.messages_out for s in sockets)),
            _rtt_ms(node),
        )
    return table


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


async def run_demo(
    *, nodes: int = 5, duration: float = 20.0, console: Console | None = None
) -> int:
    """
    Run the demo network for ``duration`` seconds, print a summary, and return 0 if
    every node connected as planned and every server measured ping round trips.
    """
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="trustp2p-demo-") as tmp:
        network: list[Node] = []
        try:
            for index in range(nodes):
                # One directory per node: each has its own identity and peer store.
                app = Path(tmp) / f"node{index}"
                _make_app(app)
                options = NodeOptions(
                    cwd=app,
                    server=True,
                    client=index > 0,
                    port=0,
                    program="trustp2p-demo",
                    **DEMO_TIMINGS,  # type: ignore[arg-type]
                )
                node = Node(options)
                await node.start()
                network.append(node)
            links = _links(nodes)
            for index, targets in links.items():
                client = network[index].client
                assert client is not None
                for target in targets:
                    url = network[target].url
                    assert url is not None
                    client.connect(url)
            async with asyncio.timeout(10):
                for index, targets in links.items():
                    client = network[index].client
                    assert client is not None
                    await client.wait_connected(len(targets))
            loop = asyncio.get_running_loop()
            started = loop.time()
            refresh = 0.25 if console.is_terminal else 5.0
            live = (
                Live(
                    _table(network, 0, duration),
                    console=console,
                    auto_refresh=False,
                    transient=True,
                )
                if console.is_terminal
                else None
            )
            with live if live is not None else contextlib.nullcontext():
                while (elapsed := loop.time() - started) < duration:
                    await asyncio.sleep(min(refresh, duration - elapsed))
                    elapsed = loop.time() - started
                    if live is not None:
                        live.update(_table(network, elapsed, duration), refresh=True)
                    elif elapsed < duration:
                        console.print(_table(network, elapsed, duration))
            final = _table(network, loop.time() - started, duration)
            healthy = _summary(console, network, final)
        finally:
            for node in reversed(network):
                await node.stop()
    return 0 if healthy else 1


def _summary(console: Console, network: list[Node], table: Table) -> bool:
    console.print(table)
    problems = []
    links = _links(len(network))
    for index, node in enumerate(network):
        peers = [s.peer_id for s in node.sockets]
        if len(peers) != len(set(peers)):
            problems.append(f"node {index} has two connections to one peer")
        for target in links.get(index, []):
            if network[target].peer_id not in peers:
                problems.append(f"node {index} is not connected to node {target}")
        inbound = [s for s in node.sockets if s.inbound]
        if inbound and not any(s.stats.last_rtt is not None for s in inbound):
            problems.append(f"node {index} measured no ping round trip")
        if any(s.stats.invalid_in for s in node.sockets):
            problems.append(f"node {index} received invalid packages")
    total_in = sum(s.stats.messages_in for node in network for s in node.sockets)
    rtts = [
        s.stats.last_rtt * 1000
        for node in network
        for s in node.sockets
        if s.inbound and s.stats.last_rtt is not None
    ]
    connections = sum(1 for node in network for s in node.sockets if not s.inbound)
    console.print(
        f"summary: {len(network)} nodes, {connections} connections, "
        f"{total_in} packages received, "
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
