"""
Peer discovery: how long 20 nodes bootstrapped from one seed take to reach their
outbound target through peer exchange.

Run ``.venv/bin/python benchmarks/discovery.py`` (about 17 min with the defaults;
``--quick`` for a smoke test, ``--json`` for every run as JSON).

Methodology
-----------

One process, one event loop, real ``ws`` connections on 127.0.0.1 with the secure
channel (the default), as in ``tests/test_discovery.py``: a seed ``Node(server=True)``,
then 20 ``Node(server=True, client=True, peers=[seed.url], target_outbound=T,
exchange_interval=I)``, all with ``port=0`` and otherwise default options (reconnect
back-off from 1 s, peer store in memory, no heartbeat thread). The clock starts just
before the first of the 20 nodes starts; the 20 ``start()`` calls follow each other at
once (they return before dialling completes). Every 20 ms the script reads each node's
outbound connections (``len(node.client.sockets)``, connections it dialled and that
completed the Noise handshake) and notes the first time each node has ``T``. A run ends
when all 20 have, or at ``--deadline``.

Reported per configuration (median over ``--runs`` runs): the time until all 20 nodes
reached ``T`` (when they did), the median node's time, how many nodes reached ``T``, the
distribution of outbound counts at the end and the total number of connections; and,
over all runs, whether any two nodes held two connections to each other.

Why ``T = 8`` may not converge: each connection is outbound for its dialler only and
there is one connection per pair of peers. 20 nodes with 8 outbound each need 160
outbound connections; the seed takes at most 20 (one per node), so at least 140 of the
20 * 19 / 2 = 190 node pairs must be connected, oriented just so; and a node that others
dialled first can't dial them any more: with ``i`` inbound connections it has at most
``20 - i`` peers left to dial (19 nodes and the seed). The report lists the (outbound,
inbound) counts of the nodes that fell short. The default ``target_outbound`` is 8, so
this is what a 20-node network started with defaults does.

"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from trustp2p import Node

NODES = 20
POLL = 0.02


@dataclass
class Run:
    target: int
    interval: float
    reached: dict[int, float] = field(default_factory=dict)  # node index -> seconds
    # node index -> seconds: reached the target, or connected to every other node and
    # the seed (short of the target only because the network is too small)
    settled: dict[int, float] = field(default_factory=dict)
    final: list[int] = field(default_factory=list)  # outbound counts at the end
    inbound: list[int] = field(default_factory=list)  # inbound counts at the end
    seed_inbound: int = 0
    connections: int = 0  # distinct node pairs connected (seed excluded)
    duplicates: int = 0  # node pairs with more than one connection
    duration: float = 0.0  # seconds the run lasted
    cpu: float = 0.0  # process CPU seconds during the run

    @property
    def all_reached(self) -> float | None:
        return max(self.reached.values()) if len(self.reached) == NODES else None

    @property
    def all_settled(self) -> float | None:
        return max(self.settled.values()) if len(self.settled) == NODES else None


def outbound(node: Node) -> int:
    return len(node.client.sockets) if node.client is not None else 0


async def one_run(target: int, interval: float, deadline: float) -> Run:
    """Start a seed and 20 nodes, watch them until all reach ``target`` or ``deadline``."""
    run = Run(target=target, interval=interval)
    seed = Node(server=True, port=0, max_inbound=None)
    await seed.start()
    nodes: list[Node] = []
    loop = asyncio.get_running_loop()
    cpu_start = time.process_time()
    start = loop.time()
    try:
        for _ in range(NODES):
            node = Node(
                server=True,
                client=True,
                port=0,
                peers=[seed.url],
                target_outbound=target,
                exchange_interval=interval,
            )
            await node.start()
            nodes.append(node)
        while len(run.reached) < NODES and loop.time() - start < deadline:
            now = loop.time() - start
            for index, node in enumerate(nodes):
                if index not in run.reached and outbound(node) >= target:
                    run.reached[index] = now
                if index not in run.settled and (
                    index in run.reached or len({s.peer_id for s in node.sockets}) == NODES
                ):
                    run.settled[index] = now
            settled = run.all_settled
            if settled is not None and loop.time() - start >= settled + 10:
                break  # settled for 10 s: the short nodes are saturated for good
            if len(run.reached) < NODES:
                await asyncio.sleep(POLL)
        run.duration = loop.time() - start
        run.cpu = time.process_time() - cpu_start
        run.final = [outbound(node) for node in nodes]
        run.inbound = [len(node.server.sockets) if node.server else 0 for node in nodes]
        run.seed_inbound = len(seed.server.sockets) if seed.server else 0
        for a, b in itertools.combinations(nodes, 2):
            between = [s for s in a.sockets if s.peer_id == b.peer_id]
            if between:
                run.connections += 1
            if len(between) > 1:
                run.duplicates += 1
    finally:
        for node in reversed(nodes):
            await node.stop()
        await seed.stop()
    return run


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Median figures over the runs of one configuration."""
    complete = [r.all_reached for r in runs if r.all_reached is not None]
    per_node = [statistics.median(r.reached.values()) for r in runs if r.reached]
    finals = collections.Counter(count for r in runs for count in r.final)
    return {
        "target": runs[0].target,
        "interval": runs[0].interval,
        "runs": len(runs),
        "runs_all_reached": len(complete),
        "all_settled_s": sorted(r.all_settled for r in runs if r.all_settled is not None),
        "all_reached_s": sorted(complete),
        "all_reached_median_s": statistics.median(complete) if complete else None,
        "median_node_s": statistics.median(per_node) if per_node else None,
        "nodes_reached": [len(r.reached) for r in runs],
        "nodes_reached_by_60s": [sum(t <= 60 for t in r.reached.values()) for r in runs],
        "final_outbound_distribution": dict(sorted(finals.items())),
        "connections": [r.connections for r in runs],
        "seed_inbound": [r.seed_inbound for r in runs],
        "duplicates": sum(r.duplicates for r in runs),
        # (outbound, inbound) of each node that missed the target, over all runs
        "short_nodes": sorted(
            (out, inb)
            for r in runs
            for out, inb in zip(r.final, r.inbound, strict=True)
            if out < r.target
        ),
        "cpu_s": [round(r.cpu, 2) for r in runs],
    }


def format_report(summaries: list[dict[str, Any]], deadline: float) -> str:
    lines = [
        f"{NODES} nodes from one seed, secure ws on 127.0.0.1; deadline {deadline:g} s.",
        "",
        f"{'target':>6} {'interval':>9} {'all reached (runs)':>22} {'median node':>12} "
        f"{'nodes reached':>16}  final outbound counts (all runs)",
    ]
    for s in summaries:
        times = ", ".join(f"{t:.1f}" for t in s["all_reached_s"]) or "-"
        median_all = s["all_reached_median_s"]
        all_reached = f"{median_all:.1f} s" if median_all is not None else "never"
        all_reached += f" ({s['runs_all_reached']}/{s['runs']})"
        median_node = s["median_node_s"]
        lines.append(
            f"{s['target']:>6} {s['interval']:>8g}s {all_reached:>22} "
            f"{(f'{median_node:.1f} s' if median_node is not None else '-'):>12} "
            f"{'/'.join(str(n) for n in s['nodes_reached']):>16}  "
            + " ".join(f"{k}:{v}" for k, v in s["final_outbound_distribution"].items())
        )
        lines.append(
            f"{'':>17} times: {times}; node pairs connected: {s['connections']}; "
            f"seed inbound: {s['seed_inbound']}; duplicates: {s['duplicates']}; "
            f"CPU s: {s['cpu_s']}; reached within 60 s: {s['nodes_reached_by_60s']}"
        )
        settled = s.get("all_settled_s")
        if settled is not None and settled != s["all_reached_s"]:
            lines.append(
                f"{'':>17} every node at the target or connected to all {NODES} others: "
                + (", ".join(f"{t:.1f}" for t in settled) or "never")
                + " s"
            )
        if s["short_nodes"]:
            lines.append(
                f"{'':>17} nodes short of the target (outbound, inbound): "
                + " ".join(f"({o}, {i})" for o, i in s["short_nodes"])
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--targets", default="4,8", help="outbound targets (default: 4,8)")
    parser.add_argument(
        "--intervals",
        default="60,1",
        help="exchange_interval values in seconds (default: 60,1; 60 is the default)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration")
    parser.add_argument(
        "--deadline",
        type=float,
        default=130.0,
        help="seconds per run at most (default: %(default)s, two exchange rounds at 60 s)",
    )
    parser.add_argument("--quick", action="store_true", help="1 run, short interval only")
    parser.add_argument("--json", action="store_true", help="print every run as JSON")
    parser.add_argument(
        "--from-json", metavar="FILE", help="print the report of a run saved with --json, only"
    )
    args = parser.parse_args(argv)
    args.targets = [int(t) for t in args.targets.split(",")]
    args.intervals = [float(i) for i in args.intervals.split(",")]
    if args.quick:
        args.runs, args.intervals, args.deadline = 1, [1.0], 30.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        with open(args.from_json) as file:
            print(format_report(json.load(file)["summaries"], args.deadline))
        return 0
    # Dial failures and refusals are part of the game; keep the output readable.
    logging.getLogger("trustp2p").setLevel(logging.ERROR)
    summaries = []
    every: list[dict[str, Any]] = []
    for interval in args.intervals:
        for target in args.targets:
            runs = []
            for number in range(1, args.runs + 1):
                run = asyncio.run(one_run(target, interval, args.deadline))
                runs.append(run)
                every.append({**asdict(run), "all_reached": run.all_reached})
                all_reached = run.all_reached
                print(
                    f"target {target}, interval {interval:g} s, run {number}/{args.runs}: "
                    + (
                        f"all reached in {all_reached:.1f} s"
                        if all_reached is not None
                        else f"{len(run.reached)}/{NODES} reached in {run.duration:.0f} s"
                    )
                    + f"; final outbound {sorted(run.final)}",
                    file=sys.stderr,
                    flush=True,
                )
            summaries.append(summarize(runs))
    if args.json:
        print(json.dumps({"summaries": summaries, "runs": every}, indent=2))
    else:
        print(format_report(summaries, args.deadline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
