"""
``trustp2p demo``: a local network of nodes on 127.0.0.1, watched live.

Node 0 is a server; every other node is server and client at once and dials node 0 and
the node before it (node 1 dials the last node instead), so every node has clients. All
run the heartbeat thread (as ``trustp2p init`` installs it) with short timings, so that
pings flow within seconds, over the secure channel; peer exchange fills in the rest.

The nodes chat: every second each running node publishes a message on the topic
``chat``. A third of the way in, one node stops; two thirds of the way in it starts
again from its directory and catches up on what it missed (unless ``restart=False``:
then it stays down and misses them, and the summary says so). The table shows it.
``speed`` runs every timing (chat rounds, heartbeats, redials, gossip and catch-up
rounds) that many times faster.

At the end the demo waits up to 5 s for the last chat messages, then prints a summary
of what happened and every problem it found; it is healthy when every node connected
as planned, a server measured a ping round trip, and every node (the restarted one too)
has every chat message exactly once.

"""

from __future__ import annotations

__all__ = ["run_demo"]

import asyncio
import contextlib
import errno
import itertools
import math
import signal
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..exceptions import DriverError
from ..logs import count_of
from ..node import Node
from ..options import NodeOptions
from ..protocol.gossip import GossipMessage
from .appdir import init_app_dir

# Short timings so the table moves: a client silent for 0.5 s (between two chat rounds,
# a second apart) is pinged within about as long. All are divided by the speed.
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
CHAT_INTERVAL = 1.0  # s between two chat rounds, divided by the speed
QUIET_END = 3.0  # s without chat at the end (at most a quarter of the run), ditto
SETTLE_TIMEOUT = 5.0  # s: after the run, most time to wait for the last chat messages
CONNECT_TIMEOUT = 10.0  # s for every node to connect as planned, before the chat
PROBLEMS_SHOWN = 10

# The table fits 80 columns: short headings, and this legend under it (in lines no
# wider than the narrowest table, 71 columns).
COLUMNS = ("node", "port", "state", "in", "out", "rx", "tx", "RTT ms", "chat", "fetched")
LEGEND = (
    "in/out: connections accepted/dialled; rx/tx: packages received/sent;\n"
    "RTT ms: mean ping round trip to its clients; chat: chat messages\n"
    "delivered to it; fetched: those it got by catch-up (published while\n"
    "it was down, or before its subscription reached the publisher)"
)


async def run_demo(
    *,
    nodes: int = 5,
    duration: float = 20.0,
    speed: float = 1.0,
    restart: bool = True,
    console: Console | None = None,
) -> int:
    """
    Run the demo network for ``duration`` seconds and print a summary.

    Args:
        nodes: Nodes in the network, at least 2 (3 for the stop and restart).
        duration: Seconds to run, then up to 5 s more for the last chat messages.
        speed: Every timing of the demo is divided by this.
        restart: Whether the node stopped a third of the way in starts again.
        console: Where the table and summary go; stdout by default.

    Returns:
        0 if the network is healthy (see the module's docstring), else 1; 143 after
        SIGTERM, which stops the nodes and removes their directory, as Ctrl-C does.

    Raises:
        ValueError: If ``nodes``, ``duration`` or ``speed`` is out of range.

    """
    if nodes < 2:
        raise ValueError(f"the demo needs at least 2 nodes, not {nodes}")
    for name, value in (("duration", duration), ("speed", speed)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, not {value!r}")
    loop = asyncio.get_running_loop()
    main, terminated = asyncio.current_task(), asyncio.Event()

    def on_sigterm() -> None:
        terminated.set()
        if main is not None:
            main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # (Windows; a thread)
        # SIGTERM killed the demo mid-table, its nodes' directory left behind (found by
        # a new-user tester): it ends as Ctrl-C does.
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await _run_demo(nodes, duration, speed, restart, console or Console())
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        return 143
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _run_demo(
    nodes: int, duration: float, speed: float, restart: bool, console: Console
) -> int:
    with tempfile.TemporaryDirectory(prefix="trustp2p-demo-") as tmp:
        demo = _Demo(Path(tmp), nodes, speed, console)
        try:
            for index in range(nodes):
                await demo.start(index)
            demo.show_admin_urls()
            loop = asyncio.get_running_loop()
            started = loop.time()
            if await _connect(demo):
                await _run(demo, duration, restart)
                await _settle(demo)
            healthy = demo.report(loop.time() - started, duration)
        finally:
            for index in reversed(range(len(demo.nodes))):
                if demo.running[index]:
                    await demo.stop(index)
    return 0 if healthy else 1


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
    def __init__(self, directory: Path, size: int, speed: float, console: Console) -> None:
        self.directory = directory
        self.size = size
        self.speed = speed
        self.console = console
        self.nodes: list[Node] = []
        self.running = [False] * size
        self.ports = [0] * size
        self.received: list[list[str]] = [[] for _ in range(size)]  # message ids
        self.fetched_before = [0] * size  # by catch-up, in the node's earlier runs
        self.published: set[str] = set()
        self.stopped_node: int | None = None
        self.restarted = False
        self.links = _links(size)
        self.trouble: list[str] = []  # problems found on the way
        self.admin_ports: dict[int, int] = {}  # a restarted node's admin listens there again

    # Running the nodes

    def _options(self, index: int) -> NodeOptions:
        timings = {name: value / self.speed for name, value in DEMO_TIMINGS.items()}
        return NodeOptions(
            cwd=self.directory / f"node{index}",
            server=True,
            client=index > 0,
            port=self.ports[index],
            admin=f"127.0.0.1:{self.admin_ports.get(index, 0)}",
            program="trustp2p-demo",
            **timings,  # type: ignore[arg-type]
        )

    def show_admin_urls(self) -> None:
        """Where to watch each node: its status page, /status.json and /metrics."""
        self.console.print("Watch a node in a browser (status page), or scrape /metrics:")
        for index, node in enumerate(self.nodes):
            self.console.print(f"  node {index:<2} {node.admin_url}", highlight=False)

    async def start(self, index: int) -> Node:
        app = self.directory / f"node{index}"
        if not app.exists():
            # One directory per node: its identity, peer store and message log.
            init_app_dir(app)
        node = await self._start_node(index)
        assert node.url is not None
        self.ports[index] = int(node.url.rsplit(":", 1)[1])  # a restart listens there again
        assert node.admin_url is not None
        self.admin_ports[index] = int(node.admin_url.rstrip("/").rsplit(":", 1)[1])
        if index < len(self.nodes):
            old_url = self.nodes[index].url
            self.nodes[index] = node
            self.dial(index)  # a restart: dial its servers again
            if node.url != old_url:
                await self._redirect(index, old_url)
        else:
            self.nodes.append(node)
        self.running[index] = True
        return node

    async def _start_node(self, index: int) -> Node:
        """Start node ``index``, on the ports it had if it ran before. Those came from the
        ephemeral range, so while the node was down another program's connection may have
        taken one: then the node listens on new ports, and says so."""
        while True:
            node = Node(self._options(index))
            assert node.gossip is not None
            node.gossip.subscribe(TOPIC, self._recorder(index))
            try:
                await node.start()
            except DriverError as exc:
                cause = exc.__cause__
                taken = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
                if not taken or (self.ports[index] == 0 and index not in self.admin_ports):
                    raise
                self.console.print(f"node {index}: its old ports are taken; it takes new ones")
                self.ports[index] = 0
                self.admin_ports.pop(index, None)
            else:
                return node

    async def _redirect(self, index: int, old_url: str | None) -> None:
        """Node ``index`` came back on a new address: the nodes that dial it dial that."""
        for other, targets in self.links.items():
            client = self.nodes[other].client
            if index in targets and self.running[other] and client is not None:
                if old_url is not None:
                    await client.disconnect(old_url)
                client.connect(self.nodes[index].url or "")

    def _recorder(self, index: int) -> Callable[[GossipMessage], None]:
        received = self.received[index]

        def record(message: GossipMessage) -> None:
            received.append(message.id)

        return record

    def dial(self, index: int) -> None:
        client = self.nodes[index].client
        assert client is not None
        for target in self.links.get(index, []):
            url = self.nodes[target].url
            assert url is not None
            client.connect(url)

    async def stop(self, index: int) -> None:
        self.fetched_before[index] = self.fetched(index)
        self.running[index] = False
        await self.nodes[index].stop()

    async def restart_stopped(self) -> None:
        """Start the stopped node again, once."""
        if self.stopped_node is not None and not self.restarted:
            await self.start(self.stopped_node)
            self.restarted = True

    async def chat(self, round_: int) -> None:
        for index, node in enumerate(self.nodes):
            if self.running[index] and node.gossip is not None:
                self.published.add(
                    await node.gossip.publish(TOPIC, {"from": index, "round": round_})
                )

    def fetched(self, index: int) -> int:
        """Chat messages node ``index`` got by catch-up, over all its runs."""
        gossip = self.nodes[index].gossip
        current = gossip.caught_up if self.running[index] and gossip is not None else 0
        return self.fetched_before[index] + current

    def has_everything(self, index: int) -> bool:
        return self.published <= set(self.received[index])

    def settled(self) -> bool:
        """Whether every running node has every chat message published."""
        return all(self.has_everything(i) for i in range(self.size) if self.running[i])

    # The table

    def table(self, elapsed: float, duration: float) -> Table:
        table = Table(
            title=f"trustp2p demo: {self.size} nodes, {elapsed:.1f}/{duration:g} s, "
            f"{len(self.published)} chat messages",
            caption=LEGEND,
            caption_justify="left",
        )
        for column in COLUMNS:
            left = column in ("node", "port", "state")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        for index in range(len(self.nodes)):
            table.add_row(*self._row(index))
        return table

    def _row(self, index: int) -> list[str]:
        node = self.nodes[index]
        running = self.running[index]
        sockets = node.sockets if running else []
        rtts = [s.stats.last_rtt for s in sockets if s.inbound and s.stats.last_rtt]
        return [
            str(index),
            str(self.ports[index]),
            "up" if running else "[red]down[/red]",
            str(sum(1 for s in sockets if s.inbound)),
            str(sum(1 for s in sockets if not s.inbound)),
            str(sum(s.stats.messages_in for s in sockets)),
            str(sum(s.stats.messages_out for s in sockets)),
            _milliseconds(statistics.mean(rtts)) if rtts else "-",
            str(len(self.received[index])),
            str(self.fetched(index)),
        ]

    # The verdict

    def rtts(self) -> list[float]:
        """The last ping round trip (s) each running server measured to each client."""
        return [
            s.stats.last_rtt
            for index, node in enumerate(self.nodes)
            if self.running[index]
            for s in node.sockets
            if s.inbound and s.stats.last_rtt is not None
        ]

    def planned_up(self) -> int:
        """How many of the planned connections (:func:`_links`) are up."""
        return sum(
            1
            for index, targets in self.links.items()
            for target in targets
            if self.running[index]
            and self.running[target]
            and self.nodes[target].peer_id in {s.peer_id for s in self.nodes[index].sockets}
        )

    def problems(self) -> list[str]:
        problems = list(self.trouble)
        for index in range(self.size):
            problems += self._node_problems(index)
        victim = self.stopped_node
        if victim is not None and self.restarted and self.running[victim]:
            gossip = self.nodes[victim].gossip
            if gossip is None or not gossip.caught_up:
                problems.append(f"node {victim} caught up on nothing after its restart")
        if not self.rtts():
            # Busy clients aren't pinged (they aren't silent), but some must have been.
            problems.append("no server measured a ping round trip")
        return problems

    def _node_problems(self, index: int) -> list[str]:
        problems = []
        received = self.received[index]
        if not self.running[index]:
            problems.append(f"node {index} is down: stopped, and not restarted")
        else:
            node = self.nodes[index]
            peers = [s.peer_id for s in node.sockets]
            if len(peers) != len(set(peers)):
                problems.append(f"node {index} has two connections to one peer")
            for target in self.links.get(index, []):
                if self.running[target] and self.nodes[target].peer_id not in peers:
                    problems.append(f"node {index} is not connected to node {target}")
            if any(s.stats.invalid_in for s in node.sockets):
                problems.append(f"node {index} received invalid packages")
        if len(received) != len(set(received)):
            problems.append(f"node {index} received a chat message twice")
        if not self.has_everything(index):
            got = len(self.published & set(received))
            problems.append(f"node {index} has {got} of {len(self.published)} chat messages")
        return problems

    def summary(self) -> list[str]:
        """What happened, in lines of less than 80 characters."""
        up = sum(self.running)
        connections = sum(
            1
            for index, node in enumerate(self.nodes)
            if self.running[index]
            for s in node.sockets
            if not s.inbound
        )
        planned = sum(len(targets) for targets in self.links.values())
        complete = sum(1 for index in range(self.size) if self.has_everything(index))
        twice = sum(1 for ids in self.received if len(ids) != len(set(ids)))
        rtts = [rtt * 1000 for rtt in self.rtts()]
        lines = [
            f"summary: {self.size} nodes, {up} up; {count_of(connections, 'connection')}, "
            f"{self.planned_up()} of {planned} planned ones up",
            f"chat: {len(self.published)} messages published; {complete} of {self.size} nodes "
            "have them all" + (f", {twice} got one twice" if twice else ", none twice"),
            f"pings: round trip median {statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms"
            if rtts
            else "pings: no round trip measured",
        ]
        if (extra := connections - self.planned_up()) > 0:
            lines.insert(1, f"  and {extra} more: dialled after peer exchange named more peers")
        return lines

    def report(self, elapsed: float, duration: float) -> bool:
        """Print the table, the summary and the problems; return whether it is healthy."""
        console = self.console
        console.print(self.table(elapsed, duration))
        for line in self.summary():
            console.print(line, highlight=False)
        problems = self.problems()
        for problem in problems[:PROBLEMS_SHOWN]:
            console.print(f"[red]problem:[/red] {problem}", highlight=False)
        if len(problems) > PROBLEMS_SHOWN:
            console.print(f"[red]problem:[/red] and {len(problems) - PROBLEMS_SHOWN} more")
        if problems:
            console.print(
                f"[red]the network is NOT healthy: {count_of(len(problems), 'problem')}[/red]"
            )
        else:
            console.print("[green]the network is healthy[/green]")
        return not problems


def _milliseconds(seconds: float) -> str:
    """A round trip in ms, in at most 5 characters below 100 s."""
    milliseconds = seconds * 1000
    return f"{milliseconds:.2f}" if milliseconds < 100 else f"{milliseconds:.0f}"


async def _connect(demo: _Demo) -> bool:
    """Dial the planned connections and wait for them; False if that takes too long."""
    for index in demo.links:
        demo.dial(index)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            for index, targets in demo.links.items():
                client = demo.nodes[index].client
                assert client is not None
                await client.wait_connected(len(targets))
    except TimeoutError:
        demo.trouble.append(f"the nodes didn't connect as planned in {CONNECT_TIMEOUT:g} s")
        return False
    return True


async def _run(demo: _Demo, duration: float, restart: bool) -> None:
    """Chat for ``duration`` seconds, stop a node a third of the way in and (if
    ``restart``) start it again two thirds of the way in, showing the table."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    victim = demo.size - 2 if demo.size >= 3 else None  # a node that has clients
    chat_interval = CHAT_INTERVAL / demo.speed
    # The chat stops a little before the end, so that the last messages settle. Its
    # rounds are counted, not timed: a loaded machine whose stop of the victim took the
    # rest of the run had every round before it (a --no-restart run missed nothing).
    chat_until = max(duration - QUIET_END / demo.speed, duration * 0.75)
    rounds = math.ceil(chat_until / chat_interval)
    chat_round = 0
    next_chat = started
    with _display(demo, duration) as show:
        while (now := loop.time()) < started + duration or chat_round < rounds:
            elapsed = now - started
            if victim is not None and demo.stopped_node is None and elapsed >= duration / 3:
                await demo.stop(victim)
                demo.stopped_node = victim
            elif restart and demo.stopped_node is not None and elapsed >= 2 * duration / 3:
                await demo.restart_stopped()
            if next_chat <= now and chat_round < rounds:
                await demo.chat(chat_round)
                chat_round += 1
                next_chat += chat_interval
            show(elapsed)
            await asyncio.sleep(min(0.1, chat_interval / 4))
    # A loaded machine may overrun the schedule: the stop and the restart happen all the
    # same (tester40 F4: a run with no stop was called healthy with --no-restart).
    if victim is not None and demo.stopped_node is None:
        await demo.stop(victim)
        demo.stopped_node = victim
    if restart:
        await demo.restart_stopped()


@contextlib.contextmanager
def _display(demo: _Demo, duration: float) -> Iterator[Callable[[float], None]]:
    """Yield ``show(elapsed)``, which refreshes the live table on a terminal (4 times a
    second) or prints it every 5 s otherwise."""
    console = demo.console
    live = None
    if console.is_terminal:
        live = Live(demo.table(0, duration), console=console, auto_refresh=False, transient=True)
    refresh = 0.25 if live is not None else 5.0
    next_refresh = refresh

    def show(elapsed: float) -> None:
        nonlocal next_refresh
        if elapsed < next_refresh:
            return
        next_refresh += refresh
        if live is not None:
            live.update(demo.table(elapsed, duration), refresh=True)
        else:
            console.print(demo.table(elapsed, duration))

    with live if live is not None else contextlib.nullcontext():
        yield show


async def _settle(demo: _Demo) -> None:
    """Wait until every running node has every chat message, at most
    :data:`SETTLE_TIMEOUT` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT
    # Polls the nodes' deliveries, which have no event to wait on.
    while not demo.settled() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
