"""What a peer that sends requests and reads none of their answers holds at the node:
the requests read (their text and the values read from it) and the answer waiting to
be written count against ``max_pending_bytes``; past it, reading pauses."""

from __future__ import annotations

import asyncio
import gc
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trustp2p import EventMap, Package, PackageType, Socket, Thread
from trustp2p.protocol.package import Tag, build_package, decode, encode

from .conftest import stays
from .nodes import MakeNode, wait_for

BODY = 1_000_000
"""The attacker's bodies (attacker48 F2): under ``max_package_size`` (1 MiB)."""


class Echo(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self.echo}}

    def echo(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"echo": package.body}


@contextmanager
def traced() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def held() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_a_peer_that_reads_no_answers_holds_at_most_the_pending_bytes(
    make_node: MakeNode,
) -> None:
    # Found by an attacker (attacker48 F2): echo requests of 1 MB from a peer that read
    # nothing held about 14 MB each at the node (default options), 1.5 GB for 100 such
    # peers: a request's body counted its text, not the string read from it as well,
    # and the request being answered, and its answer, counted for nothing while the
    # answer waited for room. Bytes held, traced (not RSS); the raw peer in this process
    # holds one request at most, in its transport's buffer.
    with traced():
        server = await make_node(server=True, secure=False, driver="tcp", threads=[Echo])
        assert server.url is not None and server.server is not None
        options = server.options
        host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
        request = build_package(PackageType.REQUEST, "echo", {"pad": "x" * BODY}, tag=Tag("1"))
        data = encode(request)
        frame = struct.pack(">I", len(data)) + data
        del request, data
        before = held()
        _, writer = await asyncio.open_connection(host, int(port))
        writer.transport.pause_reading()  # reads no answer
        sent = 0

        async def send() -> None:
            nonlocal sent
            while True:
                writer.write(frame)
                sent += 1
                await writer.drain()

        sending = asyncio.ensure_future(send())
        try:
            await server.server.wait_connected()
            inbound = server.server.sockets[0]
            conn = server.connection(inbound)
            assert conn is not None
            await wait_for(lambda: conn.worker is not None and conn.worker.paused, timeout=30)
            await wait_for(lambda: inbound.write_paused, timeout=30)
            # What it holds when the peer's writes stop getting through.
            last = [sent]
            while not await stays(lambda: sent == last[0], 0.5):
                last[0] = sent
            holding = held() - before
        finally:
            sending.cancel()
            writer.transport.abort()
        # max_pending_bytes, the package that crossed it (its text and its value), the
        # answer written past write_limit; and the peer's own request, part written.
        bound = options.max_pending_bytes + 3 * len(frame) + options.write_limit + len(frame)
        assert holding <= bound, (holding, bound, sent)
        assert sent > 3  # (it read some, and answered them)


async def test_a_peer_that_reads_late_gets_every_answer_in_order(make_node: MakeNode) -> None:
    # The bound slows a peer that reads slowly, and loses it nothing: it reads nothing
    # until the node stopped reading from it, then every answer comes, in order.
    server = await make_node(server=True, secure=False, driver="tcp", threads=[Echo])
    assert server.url is not None and server.server is not None
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.transport.pause_reading()
    count = 12

    async def send() -> None:
        for n in range(count):
            body = {"pad": "x" * BODY, "n": n}
            data = encode(build_package(PackageType.REQUEST, "echo", body, tag=Tag(str(n))))
            writer.write(struct.pack(">I", len(data)) + data)
            await writer.drain()

    sending = asyncio.ensure_future(send())
    try:
        await server.server.wait_connected()
        conn = server.connection(server.server.sockets[0])
        assert conn is not None
        await wait_for(lambda: conn.worker is not None and conn.worker.paused, timeout=30)
        writer.transport.resume_reading()
        answers = []
        while len(answers) < count:
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            package = decode(await reader.readexactly(size))
            if package.type is PackageType.RESPONSE:  # (not its introduction)
                answers.append(package)
        await sending
    finally:
        sending.cancel()
        writer.transport.abort()
    assert [answer.tag for answer in answers] == [str(n) for n in range(count)]
    assert [answer.body["echo"]["n"] for answer in answers] == list(range(count))
