"""
Building and driving a simulated network: :func:`simulate`.

The runner starts a :class:`~trustp2p.testing.Network`, waits until it is connected and
its meshes formed, publishes at the simulation's rate while the churn and partition
schedules run, waits for the messages to settle, and hands what it recorded to
:func:`~trustp2p.apps.simulate.metrics.measure`.

"""

from __future__ import annotations

__all__ = [
    "LATE",
    "Progress",
    "cpu_seconds",
    "peak_rss_mib",
    "router_counts",
    "simulate",
    "traffic_thread",
]

import asyncio
import gc
import os
import random
import time
from collections.abc import Callable

from ...drivers.base import Socket, SocketStats
from ...exceptions import NodeStateError
from ...node import Node
from ...protocol.package import Package, PackageType
from ...testing import Network
from ...threads.base import EventMap, Thread
from .config import TOPIC, Simulation
from .metrics import (
    Observations,
    Outage,
    Published,
    RouterCounts,
    SimulationReport,
    measure,
    per_process,
)

Progress = Callable[[int, int, int, int], None]
"""``progress(published, messages, delivered, expected)``: messages published so far,
and (live node, message) pairs delivered out of those expected."""

LATE = 0.5
"""Seconds the run goes on after every live node has every message: late duplicates
and announcements still count."""


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
        TimeoutError: If the nodes don't connect and form their meshes in time
            (30 s plus 0.1 s per node).
        WorkerError: With ``sim.workers`` > 1, if a worker process dies or fails.

    """
    if sim.workers > 1:
        from .workers import simulate_workers  # it builds on this module

        return await simulate_workers(sim, progress=progress)
    return await _Runner(sim, progress).run()


def traffic_thread(traffic: list[SocketStats]) -> type[Thread]:
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
            threads=(traffic_thread(self.traffic),),
        )
        self.instances: list[tuple[int, Node]] = []  # every node started, by index
        self.seen = Observations(published={}, received=self.network.received, live=[])
        # Per node, per message number: 1 once the node delivered it (updated by _scan).
        # Not a set of ids: 150 bytes a node rather than 8 KiB at 100 messages.
        self.got = [bytearray(sim.messages) for _ in range(sim.nodes)]
        self._scanned = [0] * sim.nodes
        self.start = 0.0

    async def run(self) -> SimulationReport:
        sim = self.sim
        network = self.network
        wall = time.monotonic()
        async with network:
            self.instances = list(enumerate(network.nodes))
            timeout = 30.0 + 0.1 * sim.nodes
            try:
                await network.wait_connected(timeout=timeout)
                await network.wait_meshes(TOPIC, timeout=timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"the nodes didn't connect and form their meshes within {timeout:g} s"
                ) from None
            bytes_before = sum(stats.bytes_out for stats in self.traffic)
            # While publishing, the cycle collector finds nothing to free (measured at
            # 1,000 nodes), yet its full passes walk every node's state again and again:
            # a quarter of the CPU. Leave the nodes' state out of it, and pause it.
            gc.collect()
            gc.freeze()
            gc.disable()
            self.start = time.monotonic()
            monitor = asyncio.create_task(self._monitor())
            try:
                await self._drive()
            finally:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
                gc.enable()
                gc.unfreeze()
            seen = self.seen
            seen.bytes_total = sum(stats.bytes_out for stats in self.traffic) - bytes_before
            seen.live = [i for i in range(sim.nodes) if network.alive(i)]
            seen.counts = [router_counts(index, node) for index, node in self.instances]
        report = measure(sim, self.seen)
        report.wall_seconds = time.monotonic() - wall
        report.peak_rss_mib = per_process(peak_rss_mib(), [])
        report.cpu_seconds = per_process(cpu_seconds(), [])
        return report

    async def _drive(self) -> None:
        """Publish while the churn and partition schedules run, then let it settle."""
        sim = self.sim
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish_all())
            if sim.partition_at is not None:
                group.create_task(self._partition(sim.partition_at, sim.partition_for))
            window = sim.publish_window
            for index in self.schedule.sample(range(sim.nodes), sim.churned):
                kill_at = self.schedule.uniform(0.1, 0.5) * window
                down = max(0.2, self.schedule.uniform(0.2, 0.4) * window)
                group.create_task(self._outage(index, kill_at, kill_at + down))
        published_end = time.monotonic()
        deadline = published_end + sim.timeout
        # Polls many nodes' state, which has no event to wait on.
        while not self._complete() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.seen.settle_seconds = time.monotonic() - published_end
        last_publish = max((p.when for p in self.seen.published.values()), default=self.start)
        self.seen.publish_seconds = last_publish - self.start
        await asyncio.sleep(min(LATE, sim.timeout))
        self._scan()

    # Phases

    async def _publish_all(self) -> None:
        """Publish at the simulation's rate, each message from its own task: publishers
        are independent nodes, and one publish() that waits (a loop iteration, its
        pacing) doesn't hold back the others' (awaited in turn, 100 messages took 38 s
        at 1,000 nodes rather than 20)."""
        sim = self.sim
        async with asyncio.TaskGroup() as group:
            for number in range(sim.messages):
                delay = self.start + number / sim.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(self._publish(number))

    async def _publish(self, number: int) -> None:
        network = self.network
        while True:
            live = [i for i in range(self.sim.nodes) if network.alive(i)]
            origin = self.publishers.choice(live)
            gossip = network.nodes[origin].gossip
            assert gossip is not None
            when = time.monotonic()
            try:
                message_id = await gossip.publish(TOPIC, {"n": number})
            except NodeStateError:
                continue  # stopped by the churn before it signed: another publishes it
            self.seen.published[message_id] = Published(number, origin, when)
            return

    async def _partition(self, at: float, duration: float) -> None:
        await asyncio.sleep(max(0.0, self.start + at - time.monotonic()))
        half = self.sim.nodes // 2
        self.network.partition([range(half), range(half, self.sim.nodes)])
        self.seen.partitioned_at = time.monotonic()
        await asyncio.sleep(duration)
        self.network.heal()
        self.seen.healed_at = time.monotonic()

    async def _outage(self, index: int, kill_at: float, restart_at: float) -> None:
        outage = Outage(index)
        self.seen.outages.append(outage)
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
                delivered = sum(self.got[i].count(1) for i in live)
                published = len(self.seen.published)
                self.progress(published, self.sim.messages, delivered, len(live) * published)
            await asyncio.sleep(0.1)

    def _scan(self) -> None:
        published = self.seen.published
        for index, deliveries in enumerate(self.network.received):
            got = self.got[index]
            scanned = self._scanned[index]
            for delivery in deliveries[scanned:]:
                message = published.get(delivery.id)
                if message is None:
                    break  # published, not recorded yet: looked at again next time
                got[message.number] = 1
                scanned += 1
            self._scanned[index] = scanned

    def _complete(self) -> bool:
        self._scan()
        published = len(self.seen.published)  # (publishes may end out of order)
        return all(
            self.got[i].count(1) >= published
            for i in range(self.sim.nodes)
            if self.network.alive(i)
        )


def router_counts(index: int, node: Node) -> RouterCounts:
    assert node.gossip is not None
    stats = node.gossip.router.stats
    return RouterCounts(index, stats.duplicates, stats.received, node.gossip.caught_up)


def cpu_seconds() -> float:
    """CPU time this process used so far (user and system), in seconds."""
    times = os.times()
    return times.user + times.system


def peak_rss_mib() -> float | None:
    """This process's peak resident set size so far (Linux's ``VmHWM``), in MiB;
    ``None`` where ``/proc`` doesn't say."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
