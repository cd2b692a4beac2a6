"""
The figures of a simulation, computed from what a run recorded (:class:`Observations`).

Nothing here touches the network: :func:`measure` turns the deliveries, the publishes,
the outages, the partition and the routers' counters into a :class:`SimulationReport`.
See :mod:`trustp2p.apps.simulate` for what each figure means.

"""

from __future__ import annotations

__all__ = [
    "Observations",
    "Outage",
    "Published",
    "RouterCounts",
    "SimulationReport",
    "latency_summary",
    "measure",
    "message_package_bytes",
    "per_process",
    "quantile",
]

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...identity import Identity
from ...protocol.gossip import sign_message
from ...protocol.package import PackageType, build_package, encode
from ...testing import Delivery
from .config import TOPIC, Simulation


@dataclass(frozen=True, slots=True)
class Published:
    """One message published: its number, the publishing node's index, and
    ``time.monotonic()`` just before ``publish()``."""

    number: int
    origin: int
    when: float


@dataclass(slots=True)
class Outage:
    """One node killed (at ``killed``) and restarted (at ``restarted``), both
    ``time.monotonic()``; ``None`` until it happens."""

    node: int
    killed: float | None = None
    restarted: float | None = None


@dataclass(frozen=True, slots=True)
class RouterCounts:
    """The gossip counters of one node instance (a restarted node has two)."""

    node: int
    duplicates: int
    received: int
    caught_up: int


@dataclass(slots=True)
class Observations:
    """
    What a run recorded, for :func:`measure`.

    Attributes:
        published: By message id.
        received: Per node index, every delivery in order (across restarts).
        live: Indexes of the nodes up at the end.
        outages: Every node killed, in the order they were scheduled.
        counts: The gossip counters of every node instance started.
        partitioned_at: When the network was cut (``time.monotonic()``), if it was.
        healed_at: When it healed.
        publish_seconds: From the first to the last publish.
        settle_seconds: From the end of publishing until every live node had every
            message (or the timeout).
        bytes_total: Bytes written on every connection since the first publish.

    """

    published: dict[str, Published]
    received: Sequence[Sequence[Delivery]]
    live: list[int]
    outages: list[Outage] = field(default_factory=list)
    counts: list[RouterCounts] = field(default_factory=list)
    partitioned_at: float | None = None
    healed_at: float | None = None
    publish_seconds: float = 0.0
    settle_seconds: float = 0.0
    bytes_total: int = 0

    def during_partition(self, when: float) -> bool:
        """Whether ``when`` falls between the cut and the heal."""
        if self.partitioned_at is None:
            return False
        return self.partitioned_at <= when and (self.healed_at is None or when < self.healed_at)


@dataclass(slots=True)
class SimulationReport:
    """
    What a simulation measured; :func:`~trustp2p.apps.simulate.report.to_json` gives
    every figure.

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
    peak_rss_mib: dict[str, Any] | None = None
    cpu_seconds: dict[str, Any] | None = None
    # For plots, not in to_json(): per message, the delays (s) of its first delivery to
    # each live node, sorted; and per node, duplicates received per message.
    delays: list[list[float]] = field(default_factory=list, repr=False)
    duplicates_by_node: list[float] = field(default_factory=list, repr=False)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of ``values``, interpolated linearly; ``None`` if
    there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p99 and max of ``values`` (s), and how many there are."""
    return {
        "p50": quantile(values, 0.5),
        "p99": quantile(values, 0.99),
        "max": max(values) if values else None,
        "messages": len(values),
    }


def per_process(parent: float | None, workers: Sequence[float | None]) -> dict[str, Any]:
    """A figure of each process (peak RSS in MiB, CPU seconds): the parent's, each
    worker's (none in a one-process run), and their sum (of those known; ``None`` if
    none is)."""
    known = [mib for mib in (parent, *workers) if mib is not None]
    return {"parent": parent, "workers": list(workers), "total": sum(known) if known else None}


def message_package_bytes() -> int:
    """Bytes of one message copy on the wire: a GOSSIP package like those simulated."""
    message = sign_message(Identity.generate(), TOPIC, 1, int(time.time() * 1000), {"n": 100})
    return len(encode(build_package(PackageType.GOSSIP, TOPIC, message.to_body(hops=1))))


# Per node: message id -> when it was first delivered (time.monotonic()).
_First = list[dict[str, float]]


def measure(sim: Simulation, seen: Observations) -> SimulationReport:
    """Compute every figure of ``sim`` from what its run recorded."""
    report = SimulationReport(
        sim,
        published=len(seen.published),
        publish_seconds=seen.publish_seconds,
        settle_seconds=seen.settle_seconds,
        live_nodes=len(seen.live),
        bytes_total=seen.bytes_total,
        message_package_bytes=message_package_bytes(),
    )
    first = _first_deliveries(report, seen)
    # Per node, when it came back from each outage (inf: still down).
    back: list[list[float]] = [[] for _ in range(sim.nodes)]
    for outage in seen.outages:
        if outage.killed is not None:
            back[outage.node].append(outage.restarted or math.inf)
    _coverage(report, seen, first, back)
    _traffic(report, seen)
    if seen.healed_at is not None:
        # Nodes down at the heal or after it catch up after their restart instead.
        up = [i for i in seen.live if all(b <= seen.healed_at for b in back[i])]
        report.partition = {
            **_catch_up(seen, first, up, seen.healed_at),
            "at": sim.partition_at,
            "for": sim.partition_for,
        }
    if seen.outages:
        report.churn = _churn(seen, first)
    report.problems = _problems(report, seen, first)
    report.ok = not report.problems
    return report


def _first_deliveries(report: SimulationReport, seen: Observations) -> _First:
    """First delivery of each message to each node; counts the repeats (a bug) and the
    messages delivered after a later one of the same origin (a bug too)."""
    first: _First = []
    for deliveries in seen.received:
        mine: dict[str, float] = {}
        last_seq: dict[str, int] = {}
        for delivery in deliveries:
            if delivery.id not in seen.published:
                continue
            if delivery.id in mine:
                report.redelivered += 1
            else:
                mine[delivery.id] = delivery.when
            if delivery.seq <= last_seq.get(delivery.origin, 0):
                report.out_of_order += 1
            last_seq[delivery.origin] = delivery.seq
        first.append(mine)
    return first


def _coverage(
    report: SimulationReport, seen: Observations, first: _First, back: list[list[float]]
) -> None:
    live = seen.live
    reached: list[float] = []
    coverage_times: list[float] = []
    outside_partition: list[float] = []
    for message_id, info in seen.published.items():
        delays = sorted(first[i][message_id] - info.when for i in live if message_id in first[i])
        report.delays.append(delays)
        reached.append(len(delays) / max(1, len(live)))
        # Nodes down at any time after the publish may have missed it: they catch up
        # after their restart, measured apart.
        stable = [i for i in live if all(b <= info.when for b in back[i])]
        if all(message_id in first[i] for i in stable):
            took = max((first[i][message_id] - info.when for i in stable), default=0.0)
            coverage_times.append(took)
            if not seen.during_partition(info.when):
                outside_partition.append(took)
    delivered = sum(len(delays) for delays in report.delays)
    report.coverage = delivered / max(1, len(live) * len(seen.published))
    report.reached_per_message = {
        "min": min(reached, default=0.0),
        "p50": quantile(reached, 0.5) or 0.0,
        "mean": sum(reached) / len(reached) if reached else 0.0,
    }
    report.fully_covered = sum(1 for r in reached if r >= 1.0) / max(1, len(reached))
    report.time_to_full_coverage = latency_summary(coverage_times)
    if report.simulation.partition_at is not None:
        report.time_to_full_coverage_outside_partition = latency_summary(outside_partition)


def _traffic(report: SimulationReport, seen: Observations) -> None:
    """Duplicates, copies, catch-ups and bytes, per message (per node)."""
    nodes = report.simulation.nodes
    count = max(1, len(seen.published))
    duplicates = [0] * nodes
    for counts in seen.counts:
        duplicates[counts.node] += counts.duplicates
    report.duplicates_by_node = [d / count for d in duplicates]
    report.duplicates_per_message_per_node = sum(duplicates) / (count * nodes)
    report.duplicates_per_node = {
        "min": min(report.duplicates_by_node),
        "p50": quantile(report.duplicates_by_node, 0.5) or 0.0,
        "max": max(report.duplicates_by_node),
    }
    received = sum(counts.received for counts in seen.counts)
    report.copies_per_message_per_node = received / (count * nodes)
    report.caught_up = sum(counts.caught_up for counts in seen.counts)
    report.bytes_per_message = report.bytes_total / count


def _catch_up(seen: Observations, first: _First, nodes: list[int], since: float) -> dict[str, Any]:
    """How ``nodes`` got the messages published before ``since`` that they lacked then."""
    before = [m for m, info in seen.published.items() if info.when < since]
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
        "seconds_p50": quantile(times, 0.5),
        "seconds_max": max(times, default=None),
    }


def _churn(seen: Observations, first: _First) -> dict[str, Any]:
    """How each restarted node caught up on what was published before its restart."""
    restarted = [o for o in seen.outages if o.restarted is not None]
    times: list[float] = []
    missed = complete = 0
    for outage in restarted:
        assert outage.restarted is not None
        one = _catch_up(seen, first, [outage.node], outage.restarted)
        missed += one["missing"]
        complete += one["nodes_complete"] == 1.0
        if one["seconds_max"] is not None:
            times.append(one["seconds_max"])
    return {
        "killed": sum(1 for o in seen.outages if o.killed is not None),
        "restarted": len(restarted),
        "missing": missed,
        "nodes_complete": complete / len(restarted) if restarted else 0.0,
        "seconds_p50": quantile(times, 0.5),
        "seconds_max": max(times, default=None),
    }


def _problems(report: SimulationReport, seen: Observations, first: _First) -> list[str]:
    sim = report.simulation
    problems = []
    live, published = seen.live, seen.published
    missing = [i for i in live if len(first[i]) < len(published)]
    if missing:
        pairs = sum(len(published) - len(first[i]) for i in missing)
        problems.append(
            f"{len(missing)} of {len(live)} live nodes miss messages "
            f"({pairs} (node, message) pairs) after waiting {sim.timeout:g} s"
        )
    if report.redelivered:
        problems.append(
            f"{report.redelivered} deliveries repeated a message to a node (exactly once "
            "was broken)"
        )
    if report.out_of_order:
        problems.append(
            f"{report.out_of_order} deliveries came after a later message of the same "
            "origin (per-origin order was broken)"
        )
    if len(published) < sim.messages:
        problems.append(f"only {len(published)} of {sim.messages} messages published")
    return problems
