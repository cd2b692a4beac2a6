"""
The network simulator behind ``trustp2p simulate``.

:func:`simulate` runs a :class:`~trustp2p.testing.Network` of in-process nodes on the
memory driver (plain mode, the simulation timings of :mod:`trustp2p.testing`), waits
until every node is connected and its mesh formed, then publishes messages from random
live nodes at a steady rate. Meanwhile it may kill a fraction of the nodes and restart
them later (churn), or cut the network into two halves for a while and heal it. Then it
waits until every live node delivered every message, or ``timeout`` passes, and returns
a :class:`SimulationReport`.

The figures, all over the nodes alive at the end (*live nodes*):

- **coverage**: the fraction of (live node, message) pairs delivered, and per message
  the fraction of live nodes it reached;
- **time to full coverage**, per message: from just before ``publish()`` to the last
  delivery to a live node that was up from the publish to the end (a node down at any
  time after the publish may have missed it and catches up: see churn). Both ends are
  ``time.monotonic()``; the delivery time is when the subscriber callback ran;
- **duplicates**: copies of a message a node received after the first, summed over
  nodes (the routers' ``stats.duplicates``), per message per node;
- **bytes per message**: bytes written on every connection, from the first publish to
  the end of the run, divided by the number of messages. That is all traffic: message
  copies, duplicates included, mesh control talks (subscriptions, graft, prune, ihave,
  iwant), catch-up requests and answers (``gossip/hwm``, ``gossip/fetch``) and the
  hello talks of reconnections; each package protobuf-encoded, without encryption
  (plain mode) or transport framing;
- **catch-up**: after the partition heals, the fraction of the nodes up from the heal
  to the end that have every message published before the heal, and how long after the
  heal they had it; after a restart (churn), the same for each restarted node and the
  messages published before its restart.

"""

from __future__ import annotations

__all__ = ["Simulation", "SimulationReport", "plot_report", "simulate"]

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .drivers.base import Socket, SocketStats
from .identity import Identity
from .node import Node
from .protocol.gossip import sign_message
from .protocol.package import Package, PackageType, build_package, encode
from .testing import Network
from .threads.base import EventMap, Thread

TOPIC = "sim"

PLOT_MISSING = "--plot needs matplotlib: pip install 'trustp2p[plot]'"

Progress = Callable[[int, int, int, int], None]
"""``progress(published, messages, delivered, expected)``: messages published so far,
and (live node, message) pairs delivered out of those expected."""


@dataclass(frozen=True, slots=True)
class Simulation:
    """
    What to simulate.

    Attributes:
        nodes: Nodes in the network.
        degree: Peers each node dials at random; each node has about twice as many
            connections, since others dial it too.
        mesh_degree: Mesh peers per topic each gossip router aims for.
        messages: Messages to publish, each from a random live node.
        rate: Messages published per second.
        churn: Fraction of the nodes killed during publishing, each restarted later.
        partition_at: Seconds into publishing when the network is cut into two
            halves; ``None``: no partition.
        partition_for: Seconds until the partition heals.
        mode: ``"gossip"`` or ``"flood"`` (the baseline).
        seed: Seed of the topology, the publishers and the churn schedule.
        timeout: After publishing (and the last restart and heal), seconds to wait for
            every live node to deliver every message.

    """

    nodes: int = 100
    degree: int = 6
    messages: int = 200
    rate: float = 5.0
    churn: float = 0.0
    partition_at: float | None = None
    partition_for: float = 2.0
    mode: Literal["gossip", "flood"] = "gossip"
    mesh_degree: int = 6
    seed: int | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError(f"a simulation needs at least 2 nodes, not {self.nodes}")
        if self.degree < 1 or self.mesh_degree < 1:
            raise ValueError("degree and mesh_degree must be at least 1")
        if self.messages < 1:
            raise ValueError(f"messages must be at least 1, not {self.messages}")
        for name in ("rate", "partition_for", "timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        if not 0 <= self.churn < 1:
            raise ValueError(f"churn must be in [0, 1), not {self.churn}")
        if self.partition_at is not None and not 0 <= self.partition_at < math.inf:
            raise ValueError(f"partition_at must not be negative, not {self.partition_at}")
        if self.mode not in ("gossip", "flood"):
            raise ValueError(f"mode must be 'gossip' or 'flood', not {self.mode!r}")

    @property
    def publish_window(self) -> float:
        """Seconds publishing takes at ``rate``."""
        return self.messages / self.rate


@dataclass(slots=True)
class SimulationReport:
    """
    What a simulation measured; :meth:`to_json` gives every figure.

    Times are in seconds, ``None`` when there is nothing to measure.

    """

    simulation: Simulation
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    published: int = 0
    publish_seconds: float = 0.0
    settle_seconds: float = 0.0
    wall_seconds: float = 0.0
    live_nodes: int = 0
    coverage: float = 0.0
    reached_per_message: dict[str, float] = field(default_factory=dict)
    fully_covered: float = 0.0
    time_to_full_coverage: dict[str, float | int | None] = field(default_factory=dict)
    time_to_full_coverage_outside_partition: dict[str, float | int | None] | None = None
    duplicates_per_message_per_node: float = 0.0
    duplicates_per_node: dict[str, float] = field(default_factory=dict)
    copies_per_message_per_node: float = 0.0
    redelivered: int = 0
    out_of_order: int = 0
    bytes_total: int = 0
    bytes_per_message: float = 0.0
    message_package_bytes: int = 0
    caught_up: int = 0
    partition: dict[str, Any] | None = None
    churn: dict[str, Any] | None = None
    # For plots, not in to_json(): per message, the delays (s) of its first delivery to
    # each live node, sorted; and per node, duplicates received per message.
    delays: list[list[float]] = field(default_factory=list, repr=False)
    duplicates_by_node: list[float] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        sim = self.simulation
        return {
            "nodes": sim.nodes,
            "degree": sim.degree,
            "mesh_degree": sim.mesh_degree,
            "mode": sim.mode,
            "messages": sim.messages,
            "rate": sim.rate,
            "churn": sim.churn,
            "partition_at": sim.partition_at,
            "partition_for": sim.partition_for if sim.partition_at is not None else None,
            "seed": sim.seed,
            "ok": self.ok,
            "problems": self.problems,
            "published": self.published,
            "publish_seconds": _round(self.publish_seconds),
            "publish_rate": _round(self.published / self.publish_seconds)
            if self.publish_seconds > 0
            else None,
            "settle_seconds": _round(self.settle_seconds),
            "wall_seconds": _round(self.wall_seconds),
            "live_nodes": self.live_nodes,
            "coverage": _round(self.coverage, 6),
            "reached_per_message": _rounded(self.reached_per_message, 6),
            "fully_covered_messages": _round(self.fully_covered, 6),
            "time_to_full_coverage": _rounded(self.time_to_full_coverage),
            "time_to_full_coverage_outside_partition": _rounded(
                self.time_to_full_coverage_outside_partition
            ),
            "duplicates_per_message_per_node": _round(self.duplicates_per_message_per_node),
            "duplicates_per_node": _rounded(self.duplicates_per_node),
            "copies_per_message_per_node": _round(self.copies_per_message_per_node),
            "redelivered": self.redelivered,
            "out_of_order": self.out_of_order,
            "bytes_total": self.bytes_total,
            "bytes_per_message": _round(self.bytes_per_message, 1),
            "message_package_bytes": self.message_package_bytes,
            "caught_up": self.caught_up,
            "after_heal": _rounded(self.partition),
            "after_restart": _rounded(self.churn),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rounded(values: dict[str, Any] | None, digits: int = 4) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def _quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values``, interpolated linearly; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "p50": _quantile(values, 0.5),
        "p99": _quantile(values, 0.99),
        "max": max(values) if values else None,
        "messages": len(values),
    }


def _traffic_thread(traffic: list[SocketStats]) -> type[Thread]:
    """A thread that notes the counters of every connection its node makes."""

    class TrafficThread(Thread):
        @property
        def event_map(self) -> EventMap:
            return {PackageType.TALK: {"simulate/none": _ignore}}

        def on_socket_connection(self, socket: Socket) -> None:
            traffic.append(socket.stats)

        def on_socket_open(self, socket: Socket) -> None:
            traffic.append(socket.stats)

    return TrafficThread


def _ignore(socket: Socket, package: Package) -> None:
    return None


@dataclass(slots=True)
class _Published:
    number: int
    origin: int  # node index
    when: float  # time.monotonic() just before publish()


@dataclass(slots=True)
class _Outage:
    node: int
    killed: float | None = None
    restarted: float | None = None


class _Runner:
    def __init__(self, sim: Simulation, progress: Progress | None) -> None:
        self.sim = sim
        self.progress = progress
        seed = sim.seed
        self.publishers = random.Random(None if seed is None else seed + 1)
        self.schedule = random.Random(None if seed is None else seed + 2)
        self.traffic: list[SocketStats] = []
        self.network = Network(
            sim.nodes,
            degree=sim.degree,
            topics=[TOPIC],
            seed=seed,
            gossip_mode=sim.mode,
            gossip_degree=sim.mesh_degree,
            gossip_degree_low=min(4, sim.mesh_degree),
            gossip_degree_high=max(12, sim.mesh_degree),
            threads=(_traffic_thread(self.traffic),),
        )
        self.instances: list[tuple[int, Node]] = []  # every node started, by index
        self.published: dict[str, _Published] = {}
        self.outages: list[_Outage] = []
        self.partitioned_at: float | None = None
        self.healed_at: float | None = None
        # Per node: ids of the messages it delivered (updated by _scan).
        self.got: list[set[str]] = [set() for _ in range(sim.nodes)]
        self._scanned = [0] * sim.nodes
        self.start = 0.0

    async def run(self) -> SimulationReport:
        sim = self.sim
        network = self.network
        report = SimulationReport(sim)
        wall = time.monotonic()
        async with network:
            self.instances = list(enumerate(network.nodes))
            timeout = 30.0 + 0.1 * sim.nodes
            try:
                await network.wait_connected(timeout=timeout)
                await self._wait_meshes(timeout=timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"the nodes didn't connect and form their meshes within {timeout:g} s"
                ) from None
            bytes_before = sum(stats.bytes_out for stats in self.traffic)
            self.start = time.monotonic()
            monitor = asyncio.create_task(self._monitor())
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._publish_all())
                    if sim.partition_at is not None:
                        group.create_task(self._partition(sim.partition_at, sim.partition_for))
                    if sim.churn:
                        # Someone stays up to publish.
                        count = min(max(1, round(sim.churn * sim.nodes)), sim.nodes - 1)
                        window = sim.publish_window
                        for index in self.schedule.sample(range(sim.nodes), count):
                            kill_at = self.schedule.uniform(0.1, 0.5) * window
                            down = max(0.2, self.schedule.uniform(0.2, 0.4) * window)
                            group.create_task(self._outage(index, kill_at, kill_at + down))
                published_end = time.monotonic()
                deadline = published_end + sim.timeout
                # Polls many nodes' state, which has no event to wait on.
                while not self._complete() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                settled = time.monotonic()
                # Late duplicates and announcements still count.
                await asyncio.sleep(min(0.5, sim.timeout))
                self._scan()
            finally:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
            report.publish_seconds = self._last_publish() - self.start
            report.settle_seconds = settled - published_end
            report.bytes_total = sum(stats.bytes_out for stats in self.traffic) - bytes_before
            self._figures(report)
        report.wall_seconds = time.monotonic() - wall
        return report

    # Phases

    async def _wait_meshes(self, timeout: float) -> None:
        """Until every node knows its peers' subscriptions and (gossip) filled its mesh."""
        async with asyncio.timeout(timeout):
            while not self._meshes_formed():  # noqa: ASYNC110 - polls many nodes' state
                await asyncio.sleep(0.02)

    def _meshes_formed(self) -> bool:
        for node in self.network.nodes:
            assert node.gossip is not None
            router = node.gossip.router
            peers = router.peers
            if any(TOPIC not in router.peer_topics(peer) for peer in peers):
                return False
            if self.sim.mode == "gossip":
                wanted = min(node.options.gossip_degree_low, len(peers))
                if len(router.mesh.get(TOPIC, ())) < wanted:
                    return False
        return True

    async def _publish_all(self) -> None:
        sim = self.sim
        network = self.network
        for number in range(sim.messages):
            delay = self.start + number / sim.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            live = [i for i in range(sim.nodes) if network.alive(i)]
            origin = self.publishers.choice(live)
            gossip = network.nodes[origin].gossip
            assert gossip is not None
            when = time.monotonic()
            message_id = await gossip.publish(TOPIC, {"n": number})
            self.published[message_id] = _Published(number, origin, when)

    async def _partition(self, at: float, duration: float) -> None:
        await asyncio.sleep(max(0.0, self.start + at - time.monotonic()))
        half = self.sim.nodes // 2
        self.network.partition([range(half), range(half, self.sim.nodes)])
        self.partitioned_at = time.monotonic()
        await asyncio.sleep(duration)
        self.network.heal()
        self.healed_at = time.monotonic()

    async def _outage(self, index: int, kill_at: float, restart_at: float) -> None:
        outage = _Outage(index)
        self.outages.append(outage)
        await asyncio.sleep(max(0.0, self.start + kill_at - time.monotonic()))
        outage.killed = time.monotonic()
        await self.network.kill(index)
        await asyncio.sleep(max(0.0, self.start + restart_at - time.monotonic()))
        node = await self.network.restart(index)
        outage.restarted = time.monotonic()
        self.instances.append((index, node))

    async def _monitor(self) -> None:
        while True:
            self._scan()
            if self.progress is not None:
                live = [i for i in range(self.sim.nodes) if self.network.alive(i)]
                delivered = sum(len(self.got[i]) for i in live)
                expected = len(live) * len(self.published)
                self.progress(len(self.published), self.sim.messages, delivered, expected)
            await asyncio.sleep(0.1)

    def _scan(self) -> None:
        for index, deliveries in enumerate(self.network.received):
            got = self.got[index]
            for delivery in deliveries[self._scanned[index] :]:
                got.add(delivery.id)
            self._scanned[index] = len(deliveries)

    def _complete(self) -> bool:
        self._scan()
        total = len(self.published)
        return all(
            len(self.got[i]) >= total and self.got[i] >= self.published.keys()
            for i in range(self.sim.nodes)
            if self.network.alive(i)
        )

    def _last_publish(self) -> float:
        return max((p.when for p in self.published.values()), default=self.start)

    # Figures

    def _figures(self, report: SimulationReport) -> None:
        sim = self.sim
        network = self.network
        published = self.published
        live = [i for i in range(sim.nodes) if network.alive(i)]
        report.live_nodes = len(live)
        report.published = len(published)
        count = max(1, len(published))

        # First delivery of each message to each node; repeats are a bug, and so is a
        # message delivered after a later one of the same origin.
        first: list[dict[str, float]] = [{} for _ in range(sim.nodes)]
        for index, deliveries in enumerate(network.received):
            mine = first[index]
            last_seq: dict[str, int] = {}
            for delivery in deliveries:
                if delivery.id not in published:
                    continue
                if delivery.id in mine:
                    report.redelivered += 1
                else:
                    mine[delivery.id] = delivery.when
                if delivery.seq <= last_seq.get(delivery.origin, 0):
                    report.out_of_order += 1
                last_seq[delivery.origin] = delivery.seq

        # Per node, when it came back from each outage (inf: still down).
        back: list[list[float]] = [[] for _ in range(sim.nodes)]
        for outage in self.outages:
            if outage.killed is not None:
                back[outage.node].append(outage.restarted or math.inf)

        delivered_pairs = 0
        reached: list[float] = []
        coverage_times: list[float] = []
        outside_partition: list[float] = []
        for message_id, info in published.items():
            delays = sorted(
                first[i][message_id] - info.when for i in live if message_id in first[i]
            )
            report.delays.append(delays)
            delivered_pairs += len(delays)
            reached.append(len(delays) / max(1, len(live)))
            # Nodes down at any time after the publish may have missed it: they catch up
            # after their restart, measured apart.
            stable = [i for i in live if all(b <= info.when for b in back[i])]
            if all(message_id in first[i] for i in stable):
                took = max((first[i][message_id] - info.when for i in stable), default=0.0)
                coverage_times.append(took)
                if not self._during_partition(info.when):
                    outside_partition.append(took)

        report.coverage = delivered_pairs / max(1, len(live) * len(published))
        report.reached_per_message = {
            "min": min(reached, default=0.0),
            "p50": _quantile(reached, 0.5) or 0.0,
            "mean": sum(reached) / len(reached) if reached else 0.0,
        }
        report.fully_covered = sum(1 for r in reached if r >= 1.0) / count
        report.time_to_full_coverage = _summary(coverage_times)
        if sim.partition_at is not None:
            report.time_to_full_coverage_outside_partition = _summary(outside_partition)

        duplicates = [0] * sim.nodes
        received = caught_up = 0
        for index, node in self.instances:
            assert node.gossip is not None
            stats = node.gossip.router.stats
            duplicates[index] += stats.duplicates
            received += stats.received
            caught_up += node.gossip.caught_up
        report.duplicates_by_node = [d / count for d in duplicates]
        report.duplicates_per_message_per_node = sum(duplicates) / (count * sim.nodes)
        report.duplicates_per_node = {
            "min": min(report.duplicates_by_node),
            "p50": _quantile(report.duplicates_by_node, 0.5) or 0.0,
            "max": max(report.duplicates_by_node),
        }
        report.copies_per_message_per_node = received / (count * sim.nodes)
        report.caught_up = caught_up
        report.bytes_per_message = report.bytes_total / count
        report.message_package_bytes = _message_package_bytes()

        if self.healed_at is not None:
            # Nodes down at the heal or after it catch up after their restart instead.
            healed = self.healed_at
            up = [i for i in live if all(b <= healed for b in back[i])]
            report.partition = self._catch_up(first, up, healed)
            report.partition["at"] = sim.partition_at
            report.partition["for"] = sim.partition_for
        if self.outages:
            restarted = [o for o in self.outages if o.restarted is not None]
            times: list[float] = []
            missed = complete = 0
            for outage in restarted:
                assert outage.restarted is not None
                one = self._catch_up(first, [outage.node], outage.restarted)
                missed += one["missing"]
                complete += one["nodes_complete"] == 1.0
                if one["seconds_max"] is not None:
                    times.append(one["seconds_max"])
            report.churn = {
                "killed": sum(1 for o in self.outages if o.killed is not None),
                "restarted": len(restarted),
                "missing": missed,
                "nodes_complete": complete / len(restarted) if restarted else 0.0,
                "seconds_p50": _quantile(times, 0.5),
                "seconds_max": max(times, default=None),
            }

        missing = [i for i in live if len(first[i]) < len(published)]
        if missing:
            pairs = len(live) * len(published) - delivered_pairs
            report.problems.append(
                f"{len(missing)} of {len(live)} live nodes miss messages "
                f"({pairs} (node, message) pairs) after waiting {sim.timeout:g} s"
            )
        if report.redelivered:
            report.problems.append(
                f"{report.redelivered} deliveries repeated a message to a node (exactly once "
                "was broken)"
            )
        if report.out_of_order:
            report.problems.append(
                f"{report.out_of_order} deliveries came after a later message of the same "
                "origin (per-origin order was broken)"
            )
        if len(published) < sim.messages:
            report.problems.append(f"only {len(published)} of {sim.messages} messages published")
        report.ok = not report.problems

    def _during_partition(self, when: float) -> bool:
        if self.partitioned_at is None:
            return False
        return self.partitioned_at <= when and (self.healed_at is None or when < self.healed_at)

    def _catch_up(
        self, first: list[dict[str, float]], nodes: list[int], since: float
    ) -> dict[str, Any]:
        """How ``nodes`` got the messages published before ``since`` that they lacked then."""
        before = [m for m, info in self.published.items() if info.when < since]
        times: list[float] = []
        missing = complete = 0
        for index in nodes:
            mine = first[index]
            lacking = [m for m in before if mine.get(m, math.inf) >= since]
            missing += len(lacking)
            if all(m in mine for m in lacking):
                complete += 1
                times.append(max((mine[m] - since for m in lacking), default=0.0))
        return {
            "nodes": len(nodes),
            "messages_before": len(before),
            "missing": missing,
            "nodes_complete": complete / max(1, len(nodes)),
            "seconds_p50": _quantile(times, 0.5),
            "seconds_max": max(times, default=None),
        }


def _message_package_bytes() -> int:
    """Bytes of one message copy on the wire: a GOSSIP package like those simulated."""
    message = sign_message(Identity.generate(), TOPIC, 1, int(time.time() * 1000), {"n": 100})
    return len(encode(build_package(PackageType.GOSSIP, TOPIC, message.to_body(hops=1))))


async def simulate(sim: Simulation, *, progress: Progress | None = None) -> SimulationReport:
    """
    Run a simulation and measure it.

    Args:
        sim: What to simulate.
        progress: Called about every 0.1 s with the progress so far.

    Returns:
        The figures; ``report.ok`` is true when every live node delivered every
        message exactly once, in per-origin order, and ``report.problems`` says why
        not.

    Raises:
        TimeoutError: If the nodes don't connect and form their meshes in time.

    """
    return await _Runner(sim, progress).run()


def plot_report(report: SimulationReport, path: Path) -> None:
    """
    Draw the propagation curves and the duplicates histogram into a PNG file.

    Raises:
        ImportError: If matplotlib is missing (``pip install 'trustp2p[plot]'``).

    """
    try:
        import numpy as np
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ImportError(PLOT_MISSING) from exc

    sim = report.simulation
    live = max(1, report.live_nodes)
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    curves, histogram = figure.subplots(1, 2, width_ratios=[3, 2])

    delays = [d for d in report.delays if d]
    end = max((d[-1] for d in delays), default=1.0)
    grid = np.geomspace(1e-4, max(end * 1.05, 2e-4), 400)
    if delays:
        reached = np.array(
            [np.searchsorted(np.array(d), grid, side="right") / live for d in delays]
        )
        for row in reached[:: max(1, len(reached) // 30)]:
            curves.plot(grid, row, color="tab:blue", alpha=0.12, linewidth=0.8)
        low, median, high = np.percentile(reached, [10, 50, 90], axis=0)
        curves.fill_between(grid, low, high, color="tab:blue", alpha=0.25, label="p10-p90")
        curves.plot(grid, median, color="tab:blue", linewidth=2, label="median")
    curves.set_xscale("log")
    curves.set_ylim(0, 1.02)
    curves.set_xlabel("time since publish (s)")
    curves.set_ylabel("fraction of live nodes reached")
    events = []
    if sim.churn:
        events.append(f"churn {sim.churn:g}")
    if sim.partition_at is not None:
        events.append(f"partition at {sim.partition_at:g} s for {sim.partition_for:g} s")
    curves.set_title(
        f"{sim.mode}: {sim.nodes} nodes, degree {sim.degree}, {report.published} messages"
        + (f" ({', '.join(events)})" if events else "")
    )
    curves.grid(True, which="both", alpha=0.3)
    curves.legend(loc="lower right")

    histogram.hist(report.duplicates_by_node, bins=30, color="tab:orange")
    histogram.axvline(
        report.duplicates_per_message_per_node,
        color="black",
        linestyle="--",
        label=f"mean {report.duplicates_per_message_per_node:.2f}",
    )
    histogram.set_xlabel("duplicates received per message")
    histogram.set_ylabel("nodes")
    histogram.yaxis.set_major_locator(MaxNLocator(integer=True))
    histogram.set_title("duplicates per node")
    histogram.legend()
    figure.savefig(path, dpi=100)
