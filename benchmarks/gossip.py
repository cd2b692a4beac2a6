"""
Gossip and catch-up: 100 in-process nodes, mesh gossip against plain flooding.

Run ``.venv/bin/python benchmarks/gossip.py`` (about 4 min with the defaults;
``--quick`` for a smoke test, ``--json`` for every figure as JSON).

Methodology
-----------

One process, one event loop: a :class:`trustp2p.testing.Network` of ``--nodes`` (100)
nodes on the memory driver, in plain mode, with the simulation timings of
``trustp2p.testing`` (gossip heartbeat 0.2 s, catch-up round 1 s). Each node dials
``--degree`` (6) random others, so it has about 12 connections; the gossip mesh aims for
6 peers per topic (bounds 4-12) and a relay pushes each new message to 3 of them.
Every node subscribes to the one topic. All nodes share one CPU core, so the network's
throughput is that core's: the figures per node are what one node spends.

For each mode (``gossip``, then ``flood`` on a fresh network with the same seed):

1. Start the nodes, wait until every connection of the topology is up and every mesh
   has at least 4 peers (gossip).
2. Kill one node (the *sleeper*); it misses everything that follows.
3. **Ramp.** Publish from random live nodes at a rate, in steps: 2, 3, 4, 6, 8, 10,
   12, 16, 20, 24, 32, 40 messages/s, each step for ``max(10 s, 40 messages)``. Then
   wait until every live node has every message of the step (at most 10 s) and 2 s more. A step is
   *sustained* when every live node got every message and the p99 time to full
   coverage is at most ``--bound`` (1 s). The ramp stops at the first step that isn't.
   Per step: time to full coverage p50/p99/max (publish to the last live node's
   delivery, ``time.monotonic()`` both), duplicates per message per node (the routers'
   ``stats.duplicates``, including the 2 s pause), and, from the step's first publish
   until every live node has every message of the step: bytes per message
   (``bytes_out`` of every connection: all traffic, control talks and catch-up
   included) and process CPU per message (SQLite worker threads included).
4. **Catch-up in the big network.** Restart the sleeper and time until it delivered
   every message of the ramp.

Then **catch-up of 10 000 messages** (``--catchup``) on a small network (8 nodes, each
dialling 3): kill one node, publish 10 000 messages from 5 nodes as fast as the other
live nodes deliver them, restart it, and time until it delivered all of them (exactly
once, in per-origin order, checked). A small network keeps publishing 10 000 messages
to about a minute; the catch-up itself involves the restarted node and the peers it
fetches from.

"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from trustp2p.testing import Network

TOPIC = "chat"
RATES = [2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40]


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def until(condition: Callable[[], bool], *, timeout: float, poll: float = 0.01) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


def traffic(network: Network) -> int:
    return sum(
        socket.stats.bytes_out
        for index, node in enumerate(network.nodes)
        if network.alive(index)
        for socket in node.sockets
    )


def duplicates(network: Network) -> int:
    total = 0
    for index, node in enumerate(network.nodes):
        if network.alive(index) and node.gossip is not None:
            total += node.gossip.router.stats.duplicates
    return total


async def wait_meshes(network: Network, mode: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            formed = True
            for node in network.nodes:
                assert node.gossip is not None
                router = node.gossip.router
                if any(TOPIC not in router.peer_topics(p) for p in router.peers):
                    formed = False
                elif mode == "gossip" and len(router.mesh.get(TOPIC, ())) < min(
                    4, len(router.peers)
                ):
                    formed = False
            if formed:
                return
            await asyncio.sleep(0.05)


class Ramp:
    """One network, publishing in steps of increasing rate."""

    def __init__(self, network: Network, rng: random.Random, bound: float) -> None:
        self.network = network
        self.rng = rng
        self.bound = bound
        self.published: dict[str, float] = {}  # every message id -> publish time

    def first_deliveries(self) -> list[dict[str, float]]:
        result = []
        for deliveries in self.network.received:
            mine: dict[str, float] = {}
            for d in deliveries:
                mine.setdefault(d.id, d.when)
            result.append(mine)
        return result

    def live(self) -> list[int]:
        return [i for i in range(self.network.size) if self.network.alive(i)]

    def complete(self, ids: list[str]) -> bool:
        live = self.live()
        for index in live:
            got = {d.id for d in self.network.received[index]}
            if not got.issuperset(ids):
                return False
        return True

    async def step(self, rate: float, min_duration: float, min_messages: int) -> dict[str, Any]:
        network = self.network
        count = max(min_messages, math.ceil(rate * min_duration))
        live = self.live()
        bytes_before, duplicates_before = traffic(network), duplicates(network)
        cpu_before = time.process_time()
        start = time.monotonic()
        ids: list[str] = []
        for number in range(count):
            delay = start + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            gossip = network.nodes[self.rng.choice(live)].gossip
            assert gossip is not None
            when = time.monotonic()
            message_id = await gossip.publish(TOPIC, {"n": len(self.published)})
            self.published[message_id] = when
            ids.append(message_id)
        last = time.monotonic()
        await until(lambda: self.complete(ids), timeout=10.0, poll=0.05)
        bytes_sent = traffic(network) - bytes_before
        cpu = time.process_time() - cpu_before
        await asyncio.sleep(2.0)  # late duplicates still count
        first = self.first_deliveries()
        times, delivered = [], 0
        for message_id in ids:
            when = self.published[message_id]
            got = [first[i][message_id] - when for i in live if message_id in first[i]]
            delivered += len(got)
            if len(got) == len(live):
                times.append(max(got))
        coverage = delivered / (len(ids) * len(live))
        p99 = quantile(times, 0.99)
        return {
            "rate": rate,
            "messages": count,
            "achieved_rate": round(count / max(last - start, 1e-9), 2),
            "coverage": round(coverage, 5),
            "p50_s": quantile(times, 0.5),
            "p99_s": p99,
            "max_s": max(times) if times else None,
            "duplicates_per_message_per_node": (duplicates(network) - duplicates_before)
            / (count * len(live)),
            "bytes_per_message": bytes_sent / count,
            "cpu_ms_per_message": 1000 * cpu / count,
            "sustained": coverage == 1.0 and p99 is not None and p99 <= self.bound,
        }


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    network = Network(
        args.nodes, degree=args.degree, topics=[TOPIC], seed=args.seed, gossip_mode=mode
    )
    result: dict[str, Any] = {"mode": mode, "steps": []}
    async with network:
        await network.wait_connected(timeout=60)
        await wait_meshes(network, mode)
        sleeper = args.nodes - 1
        await network.kill(sleeper)
        ramp = Ramp(network, random.Random(args.seed), args.bound)
        rates = RATES[:3] if args.quick else RATES
        for rate in rates:
            step = await ramp.step(
                rate,
                min_duration=3.0 if args.quick else 10.0,
                min_messages=10 if args.quick else 40,
            )
            result["steps"].append(step)
            print(f"  {mode} {json.dumps(round_floats(step))}", file=sys.stderr)
            if not step["sustained"]:
                break
        sustained = [s["rate"] for s in result["steps"] if s["sustained"]]
        result["sustained_rate"] = max(sustained) if sustained else None
        # The sleeper missed the whole ramp.
        missed = list(ramp.published)
        start = time.monotonic()
        restarted = await network.restart(sleeper)
        await until(
            lambda: {d.id for d in network.received[sleeper]}.issuperset(missed), timeout=120
        )
        took = time.monotonic() - start
        got = {d.id for d in network.received[sleeper]}
        assert restarted.gossip is not None
        result["sleeper"] = {
            "missed": len(missed),
            "delivered": len(got & set(missed)),
            "seconds": took,
            "messages_per_s": len(got & set(missed)) / took,
            "caught_up": restarted.gossip.caught_up,
        }
        print(f"  {mode} sleeper {json.dumps(round_floats(result['sleeper']))}", file=sys.stderr)
    result["wall_s"] = time.monotonic() - started
    return result


async def run_catchup(args: argparse.Namespace) -> dict[str, Any]:
    """A node restarted after missing ``args.catchup`` messages."""
    count = args.catchup
    nodes = 8
    network = Network(nodes, degree=3, topics=[TOPIC], seed=args.seed)
    async with network:
        await network.wait_connected()
        await wait_meshes(network, "gossip")
        sleeper = nodes - 1
        await network.kill(sleeper)
        publishers = [0, 1, 2, 3, 4]
        live = [i for i in range(nodes) if network.alive(i)]
        start = time.monotonic()
        for number in range(count):
            gossip = network.nodes[publishers[number % len(publishers)]].gossip
            assert gossip is not None
            await gossip.publish(TOPIC, {"n": number})
            if number % 50 == 49:
                # Publish no faster than the live nodes deliver.
                behind = number + 1 - 200

                def caught_up(behind: int = behind) -> bool:
                    return min(len(network.received[i]) for i in live) >= behind

                await until(caught_up, timeout=60, poll=0.005)
        await until(lambda: min(len(network.received[i]) for i in live) >= count, timeout=60)
        publish_s = time.monotonic() - start
        await asyncio.sleep(1.0)
        start = time.monotonic()
        restarted = await network.restart(sleeper)
        await until(lambda: len(network.received[sleeper]) >= count, timeout=300, poll=0.005)
        took = time.monotonic() - start
        deliveries = network.received[sleeper]
        pairs = [(d.origin, d.seq) for d in deliveries]
        in_order = all(
            [s for o, s in pairs if o == origin] == sorted(s for o, s in pairs if o == origin)
            for origin in {o for o, _ in pairs}
        )
        assert restarted.gossip is not None
        return {
            "nodes": nodes,
            "messages": count,
            "publish_s": publish_s,
            "delivered": len(deliveries),
            "exactly_once": len(pairs) == len(set(pairs)),
            "in_order": in_order,
            "caught_up_by_fetch": restarted.gossip.caught_up,
            "seconds": took,
            "messages_per_s": len(deliveries) / took,
        }


def round_floats(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v) for v in value]
    return value


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def report(results: dict[str, Any]) -> None:
    nodes, degree, bound = results["nodes"], results["degree"], results["bound"]
    print(f"{nodes} nodes, each dialling {degree}; a sustained step has p99 <= {bound} s")
    print()
    header = (
        f"{'mode':<7}{'rate/s':>7}{'msgs':>6}{'coverage':>10}{'p50':>9}{'p99':>9}{'max':>9}"
        f"{'dups/msg/node':>15}{'bytes/msg':>11}{'cpu ms/msg':>12}  sustained"
    )
    print(header)
    for mode in results["modes"]:
        for s in mode["steps"]:
            print(
                f"{mode['mode']:<7}{s['rate']:>7}{s['messages']:>6}{s['coverage']:>10.4f}"
                f"{ms(s['p50_s']):>9}{ms(s['p99_s']):>9}{ms(s['max_s']):>9}"
                f"{s['duplicates_per_message_per_node']:>15.2f}{s['bytes_per_message']:>11,.0f}"
                f"{s['cpu_ms_per_message']:>12.1f}  {'yes' if s['sustained'] else 'no'}"
            )
    print()
    for mode in results["modes"]:
        sleeper = mode["sleeper"]
        print(
            f"{mode['mode']}: sustained {mode['sustained_rate']} messages/s; the sleeper caught "
            f"up {sleeper['delivered']}/{sleeper['missed']} messages in {sleeper['seconds']:.2f} s "
            f"({sleeper['messages_per_s']:.0f}/s, {sleeper['caught_up']} by gossip/fetch)"
        )
    catchup = results.get("catchup")
    if catchup:
        print(
            f"catch-up of {catchup['messages']} messages ({catchup['nodes']} nodes): "
            f"{catchup['delivered']} delivered in {catchup['seconds']:.2f} s = "
            f"{catchup['messages_per_s']:.0f} messages/s; exactly once: {catchup['exactly_once']}, "
            f"in order: {catchup['in_order']} ({catchup['caught_up_by_fetch']} by gossip/fetch; "
            f"publishing them took {catchup['publish_s']:.0f} s)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--degree", type=int, default=6, help="peers each node dials")
    parser.add_argument(
        "--bound", type=float, default=1.0, help="p99 bound of a sustained step (s)"
    )
    parser.add_argument("--catchup", type=int, default=10_000, help="messages the node misses")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="gossip,flood")
    parser.add_argument("--quick", action="store_true", help="3 short steps, 1000 to catch up")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.add_argument(
        "--from-json", metavar="FILE", help="print the report of a run saved with --json, only"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.catchup = min(args.catchup, 1000)
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "nodes": args.nodes,
        "degree": args.degree,
        "bound": args.bound,
        "modes": [],
    }
    for mode in args.modes.split(","):
        results["modes"].append(await run_mode(mode, args))
    if args.catchup:
        results["catchup"] = await run_catchup(args)
        print(f"  catch-up {json.dumps(round_floats(results['catchup']))}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        with open(args.from_json) as file:
            report(json.load(file))
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    results = asyncio.run(amain(args))
    if args.json:
        print(json.dumps(round_floats(results), indent=2))
    else:
        report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
