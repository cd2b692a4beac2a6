"""
A subscriber whose handler is slow, behind a relay, with default options: a publisher
and the subscriber are clients of the relay (a server subscribed to the topic), all in
one process. The publisher sends COUNT messages of SIZE bytes as fast as it may; the
subscriber's handler takes DELAY seconds a message.

    PYTHONPATH=src .venv/bin/python benchmarks/slow_subscriber.py [--count 1000]
        [--size 100000] [--delay 0.02] [--timeout 120] [--fast-every 0.1]

Prints, every 2 s, how many messages the subscriber got and whether its link to the
relay is the one it started with; then whether every message came in order, once, and
what the relay counted (gossip pushes dropped for a full send queue, peers closed for
not reading, and lost: no pong in time). Not a ratio: a behaviour under load, recorded
in docs/reliability.md. With ``--fast-every``, the publisher also publishes a small
message on a second topic ("fast", whose handler takes no time) every that many seconds
while the subscriber works through the first, and the fast messages' latency (published
to handled) is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import trustp2p
from trustp2p.protocol.gossip import GossipMessage


async def main(count: int, size: int, delay: float, timeout: float, fast_every: float) -> None:
    base = Path(tempfile.mkdtemp(prefix="trustp2p-slow-"))
    for name in ("relay", "subscriber", "publisher"):
        (base / name / "threads-enabled").mkdir(parents=True)
    relay = await trustp2p.create_node(cwd=base / "relay", port=0, name="relay")
    relay.subscribe("chat")
    assert relay.url is not None
    got: list[int] = []

    async def slow(message: GossipMessage) -> None:
        await asyncio.sleep(delay)
        got.append(message.seq)

    latencies: list[float] = []

    def fast(message: GossipMessage) -> None:
        latencies.append(time.time() - json.loads(message.data)["t"])

    subscriber = await trustp2p.create_client(cwd=base / "subscriber", peers=[relay.url])
    subscriber.subscribe("chat", slow)
    publisher = await trustp2p.create_client(cwd=base / "publisher", peers=[relay.url])
    publisher.subscribe("chat")
    if fast_every:
        for node in (relay, subscriber, publisher):
            node.subscribe("fast", fast if node is subscriber else None)
    for node in (subscriber, publisher):
        assert node.client is not None
        await node.client.wait_connected()
    await asyncio.sleep(3)  # the mesh forms
    link = subscriber.sockets[0]
    start = time.monotonic()
    sent = 0

    async def publish_fast() -> None:
        nonlocal sent
        while True:
            await publisher.publish("fast", {"t": time.time()})
            sent += 1
            await asyncio.sleep(fast_every)

    fast_task = asyncio.create_task(publish_fast()) if fast_every else None
    for n in range(count):
        await publisher.publish("chat", {"n": n, "x": "a" * size})
    print(f"published {count} in {time.monotonic() - start:.1f} s", flush=True)
    while len(got) < count and time.monotonic() - start < timeout:
        await asyncio.sleep(2)
        same = subscriber.sockets == [link]
        print(f"{time.monotonic() - start:6.1f} s: got {len(got)}, same link {same}", flush=True)
    print("in order, once:", got == list(range(1, count + 1)), f"({len(got)} of {count})")
    if fast_task is not None:
        fast_task.cancel()
        ordered = sorted(latencies) or [float("nan")]
        p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        print(f"fast topic: {len(latencies)} of {sent} handled, latency p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")  # fmt: skip
    metrics = relay.metrics
    print(
        f"relay: {metrics.send_dropped} pushes dropped, {metrics.stall_disconnects} closed, "
        f"{metrics.lost_peers} lost"
    )
    for node in (publisher, subscriber, relay):
        await node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--fast-every", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.count, args.size, args.delay, args.timeout, args.fast_every))
