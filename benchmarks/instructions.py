"""
Instructions per request/response round trip, counted by valgrind's callgrind: a
deterministic figure for comparing two builds on a busy machine (rates and CPU times
are not). Both nodes run in this process over ws:// on 127.0.0.1, plain, 100 requests
outstanding, 100-byte bodies.

    PYTHONHASHSEED=0 PYTHONPATH=src valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/instructions.py 500
    (the same with 2500; ``--secure`` over the Noise channel, ``--depth 1`` sequential)

The difference of the two totals ("Collected"), divided by 2000, is the cost of one
round trip, both sides, start-up and shutdown cancelled out. Runs of one build still
differ by about ±0.5 % (how many messages one read takes depends on scheduling): compare
medians of three.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from request_response import NO_RATE_LIMIT, EchoThread, make_body

import trustp2p


async def main(count: int, *, secure: bool = False, depth: int = 100) -> None:
    server = await trustp2p.create_server(
        host="127.0.0.1", port=0, threads=(EchoThread,), max_inbound=None, secure=secure,
        **NO_RATE_LIMIT,
    )  # fmt: skip
    assert server.url is not None
    client = await trustp2p.create_client(peers=[server.url], secure=secure)
    assert client.client is not None
    await asyncio.wait_for(client.client.wait_connected(), 30)
    socket = client.client.sockets[0]
    numbers = itertools.count()
    left = [count]

    async def loop() -> None:
        assert client.client is not None
        while left[0] > 0:
            left[0] -= 1
            await client.client.request(socket, "echo", make_body(next(numbers)))

    await asyncio.gather(*(loop() for _ in range(depth)))
    await client.stop()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int, help="round trips")
    parser.add_argument("--secure", action="store_true", help="over the Noise channel")
    parser.add_argument("--depth", type=int, default=100, help="requests outstanding")
    args = parser.parse_args()
    asyncio.run(main(args.count, secure=args.secure, depth=args.depth))
