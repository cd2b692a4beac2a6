"""
Publishing on one node with default options, no peers: the rate of ``publish()`` alone,
and of ``publish()`` with the node's own subscriber's delivery (``durable_delivery``:
the delivered marks reach the disk), measured in the same run; the second is the one
that counts (``publish()`` lets the event loop run once per message, so delivery goes
on beside a publishing loop rather than after it).

    PYTHONPATH=src .venv/bin/python benchmarks/publish_rate.py [--count 3000] [--rounds 3]

Prints the best rate of the rounds of each, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import trustp2p


async def _rates(cwd: str, count: int, rounds: int) -> tuple[float, float]:
    node = await trustp2p.create_node(cwd=cwd, port=0, name="publisher")
    got, done = 0, asyncio.Event()

    def delivered(message: object) -> None:
        nonlocal got
        got += 1
        if got == count:
            done.set()

    node.subscribe("delivered", delivered)
    alone = both = 0.0
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            for n in range(count):
                await node.publish("alone", {"n": n})
            alone = max(alone, count / (time.perf_counter() - began))
            got, began = 0, time.perf_counter()
            done.clear()
            for n in range(count):
                await node.publish("delivered", {"n": n})
            await done.wait()
            both = max(both, count / (time.perf_counter() - began))
    finally:
        await node.stop()
    return alone, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        Path(cwd, "threads-enabled").mkdir()
        alone, both = asyncio.run(_rates(cwd, args.count, args.rounds))
    print(f"publish() alone:               {alone:9,.0f} /s")
    print(f"publish() and delivered (own): {both:9,.0f} /s  ({both / alone:.2f} x alone)")


if __name__ == "__main__":
    main()
