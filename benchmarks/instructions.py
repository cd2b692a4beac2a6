"""
Instructions per request/response round trip, counted by valgrind's callgrind: a
deterministic figure for comparing two builds on a busy machine (rates and CPU times
are not). Both nodes run in this process over ws:// on 127.0.0.1, plain, 100 requests
outstanding, 100-byte bodies.

    PYTHONHASHSEED=0 PYTHONPATH=src valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/instructions.py 500
    (the same with 2500; ``--secure`` over the Noise channel, ``--depth 1`` sequential,
    ``--driver tcp`` over tcp://)

The difference of the two totals ("Collected"), divided by 2000, is the cost of one
round trip, both sides, start-up and shutdown cancelled out. Runs of one build still
differ by about ±0.5 % (how many messages one read takes depends on scheduling): compare
medians of three.

``--side client`` (or ``server``) counts one side alone: the other node runs in a child
process, which valgrind doesn't follow, at full speed; the side counted then reads the
other's messages in larger batches than with both in one process, as the slower side of
a pipelined run does. ``--port`` sets the server's port (0: any free one), ``--loop
uvloop`` runs both on uvloop (as ``fast_path.py`` does)::

    PYTHONHASHSEED=0 PYTHONPATH=src valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/instructions.py \
        --driver tcp --side client 300    (then 1300; the difference divided by 1000)

``--connections`` counts connection set-ups instead, as ``handshake.py --part e2e``
makes them one after another: a server node (``max_inbound=None``), and a client that
dials with the ``ws`` driver (plain) or a ``SecureLayer`` over it (``--secure``), sends
its ``version`` or ``hello`` talk, waits for the server's first package and closes.
The secure client takes each connection's identity from a pool made before measuring
(``--pool``, 1,100 by default, the same size whatever the count, so that its cost
cancels out; no identity is used twice if the count stays below it):

    PYTHONHASHSEED=0 PYTHONPATH=src valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/instructions.py \
        --connections [--secure] 200    (then 1000; the difference divided by 800)

``--returning`` lets the count exceed the pool: the identities are used again in turn,
as peers that reconnect (each keeps its Noise static key, so the server finds its
identity payload among the signatures it checked lately and skips the Ed25519 check).
``--port`` sets the server's port here too.

``--handshakes`` counts the sans-I/O Noise XX handshakes alone (no sockets, no loop),
both sides in this process, as the secure layer runs them: each dialler a node of the
pool (``--pool``), all to one responder; the dialler's check of the responder's payload
is found in the cache after the first, as in a client process of ``handshake.py``:

    PYTHONHASHSEED=0 PYTHONPATH=src valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/instructions.py \
        --handshakes 100    (then 600; the difference divided by 500)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from handshake import _Counter, _Dialler, pool_identity
from request_response import NO_RATE_LIMIT, EchoThread, make_body

import trustp2p
from trustp2p.identity import Identity
from trustp2p.loop import LOOPS
from trustp2p.security.noise import NoiseHandshake, NoiseKey


async def _server(*, secure: bool, driver: str, port: int) -> trustp2p.Node:
    return await trustp2p.create_server(
        host="127.0.0.1", port=port, threads=(EchoThread,), max_inbound=None, secure=secure,
        driver=driver, **NO_RATE_LIMIT,
    )  # fmt: skip


async def _round_trips(url: str, count: int, *, secure: bool, depth: int, driver: str) -> None:
    """Make ``count`` round trips to the server node at ``url``, ``depth`` at a time."""
    client = await trustp2p.create_client(peers=[url], secure=secure, driver=driver)
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


async def main(
    count: int,
    *,
    secure: bool = False,
    depth: int = 100,
    driver: str = "ws",
    side: str = "both",
    port: int = 0,
    loop: str = "asyncio",
) -> None:
    """Round trips with both nodes in this process, or one side here and the other in
    a child process (not under valgrind: ``--trace-children`` is off by default)."""
    flags = ["--driver", driver, "--depth", str(depth), "--loop", loop]
    flags += ["--secure"] if secure else []
    if side == "client":
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "0", "--serve", "--port", str(port), *flags,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdin is not None
        url = (await child.stdout.readline()).decode().strip()
        await _round_trips(url, count, secure=secure, depth=depth, driver=driver)
        child.stdin.close()
        await child.wait()
        return
    server = await _server(secure=secure, driver=driver, port=port)
    assert server.url is not None
    if side == "server":
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, str(count), "--dial", server.url, *flags
        )
        if await child.wait():
            raise SystemExit("the client failed")
    else:
        await _round_trips(server.url, count, secure=secure, depth=depth, driver=driver)
    await server.stop()


async def _serve(*, secure: bool, driver: str, port: int) -> None:
    """``--serve``: a server node that prints its URL and runs until stdin closes."""
    server = await _server(secure=secure, driver=driver, port=port)
    print(server.url, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


async def connections(
    count: int, *, secure: bool, pool: int, port: int = 0, returning: bool = False
) -> None:
    """Open ``count`` connections one after another to a server node in this process;
    ``returning``: the identities of the pool in turn, each again once all were used."""
    server = await trustp2p.create_server(
        host="127.0.0.1", port=port, threads=(EchoThread,), max_inbound=None, secure=secure,
        **NO_RATE_LIMIT,
    )  # fmt: skip
    assert server.url is not None
    if secure and count > pool and not returning:
        raise SystemExit(f"--pool {pool} is smaller than {count} connections")
    dialler = _Dialler(server.url, secure, pool)
    counter = _Counter()
    for _ in range(count):
        await dialler.open_one(counter)
    if counter.failed:
        raise SystemExit(f"{counter.failed} connections failed")
    await asyncio.sleep(0.2)  # the last closing handshake
    await server.stop()


async def handshakes(count: int, *, pool: int) -> None:
    """Run ``count`` sans-I/O handshakes, a new dialler of the pool each time."""
    if count > pool:
        raise SystemExit(f"--pool {pool} is smaller than {count} handshakes")
    keys = [NoiseKey(pool_identity(index)) for index in range(pool)]
    responder_key = NoiseKey(Identity.generate())
    for key in keys[:count]:
        dialler = NoiseHandshake(key, initiator=True)
        responder = NoiseHandshake(responder_key, initiator=False)
        responder.read_message(dialler.write_message())
        dialler.read_message(responder.write_message())
        responder.read_message(dialler.write_message())
        dialler.transport()
        responder.transport()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int, help="round trips")
    parser.add_argument("--secure", action="store_true", help="over the Noise channel")
    parser.add_argument("--depth", type=int, default=100, help="requests outstanding")
    parser.add_argument(
        "--connections", action="store_true", help="count connection set-ups, not round trips"
    )
    parser.add_argument(
        "--handshakes", action="store_true", help="count sans-I/O Noise handshakes alone"
    )
    parser.add_argument("--pool", type=int, default=1100, help="secure client identities")
    parser.add_argument(
        "--returning",
        action="store_true",
        help="connections: use the pool's identities again in turn (peers that reconnect)",
    )
    parser.add_argument(
        "--driver", default="ws", help="round trips over this driver (ws, tcp, picows)"
    )
    parser.add_argument(
        "--side",
        choices=("both", "client", "server"),
        default="both",
        help="count one side only: the other runs in a child process",
    )
    parser.add_argument("--port", type=int, default=0, help="the server's port (0: any)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="%(default)s")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dial", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = {"secure": args.secure, "driver": args.driver}
    if args.handshakes:
        coroutine = handshakes(args.count, pool=args.pool)
    elif args.connections:
        coroutine = connections(
            args.count, secure=args.secure, pool=args.pool, port=args.port, returning=args.returning
        )
    elif args.serve:
        coroutine = _serve(port=args.port, **options)
    elif args.dial:
        coroutine = _round_trips(args.dial, args.count, depth=args.depth, **options)
    else:
        coroutine = main(
            args.count, depth=args.depth, side=args.side, port=args.port, loop=args.loop, **options
        )
    trustp2p.run(coroutine, loop=args.loop)
