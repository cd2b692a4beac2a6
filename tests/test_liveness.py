"""
Liveness over real TCP, in one process: a raw peer whose pong waits behind a large
frame, in either direction, stays connected; one that stops answering is dropped.

The peer is a plain asyncio stream speaking the ``tcp`` driver's framing in plain mode,
so that each byte's timing is the test's to choose.

"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from trustp2p import Node, PackageType
from trustp2p.protocol.package import Package, build_package, decode, encode

from .nodes import wait_for

TIMINGS: dict[str, Any] = {
    "heartbeat_interval": 0.05,
    "heartbeat_jitter": 0.0,
    "heartbeat_timeout": 0.1,
    "heartbeat_response_timeout": 0.3,
}
"""A pong not heard within 0.3 s (charged) drops the peer."""


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class RawPeer:
    """
    Dials the node, answers its pings, records them.

    Attributes:
        answering: Answer pings.
        before_pong: Awaited between reading a ping and answering it, if set.
        slow: Read 4 KiB every 10 ms, about 400 KB/s.

    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pings: list[float] = []
        self.packages: list[Package] = []
        self.answering = True
        self.before_pong: Callable[[], Awaitable[None]] | None = None
        self.slow = False
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def dial(cls, url: str, *, receive_buffer: int | None = None) -> RawPeer:
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        sock = socket.socket()
        if receive_buffer is not None:
            # A small window: the node's frame leaves it only as fast as we read.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        return cls(reader, writer)

    async def _read(self) -> None:
        buffer = b""
        while chunk := await self.reader.read(4096):
            buffer += chunk
            while len(buffer) >= 4 and len(buffer) >= 4 + (
                size := struct.unpack_from(">I", buffer)[0]
            ):
                package, buffer = decode(buffer[4 : 4 + size]), buffer[4 + size :]
                await self._receive(package)
            if self.slow:
                await asyncio.sleep(0.01)  # real time passing: a slow reader

    async def _receive(self, package: Package) -> None:
        self.packages.append(package)
        if package.type is PackageType.HEARTBEAT_PING:
            self.pings.append(time.monotonic())
            if self.answering:
                if self.before_pong is not None:
                    await self.before_pong()
                pong = build_package(
                    PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, tag=package.tag
                )
                self.writer.write(frame(encode(pong)))

    def task_cancel(self) -> None:
        """Stop reading (and so answering): frozen."""
        self._task.cancel()

    async def aclose(self) -> None:
        self._task.cancel()
        self.writer.close()
        await asyncio.gather(self._task, self.writer.wait_closed(), return_exceptions=True)


@pytest.fixture
async def server() -> AsyncIterator[Node]:
    node = Node(
        server=True,
        port=0,
        driver="tcp",
        secure=False,
        gossip=False,
        peer_exchange=False,
        **TIMINGS,
    )
    await node.start()
    yield node
    await node.stop()


async def test_a_pong_behind_the_peers_large_frame_is_waited_for(server: Node) -> None:
    assert server.url is not None
    peer = await RawPeer.dial(server.url)
    sent: list[float] = []

    async def trickle_a_frame() -> None:
        # 256 KiB in 32 pieces, 40 ms apart: over a second, more than three timeouts.
        data = frame(encode(build_package(PackageType.TALK, "big", {"x": "x" * 2**18})))
        step = len(data) // 32 + 1
        start = time.monotonic()
        for i in range(0, len(data), step):
            peer.writer.write(data[i : i + step])
            await asyncio.sleep(0.04)  # real time passing: a slow link
        sent.append(time.monotonic() - start)
        peer.before_pong = None  # once

    peer.before_pong = trickle_a_frame
    try:
        await wait_for(lambda: len(server.sockets) == 1)
        inbound = server.sockets[0]
        await wait_for(lambda: bool(sent) and inbound.stats.last_rtt is not None, timeout=10)
        assert sent[0] > 3 * TIMINGS["heartbeat_response_timeout"]
        await wait_for(lambda: len(peer.pings) >= 3)  # pinged again, answered again
        assert server.sockets == [inbound] and not inbound.closed
    finally:
        await peer.aclose()


async def test_a_ping_behind_our_own_large_frame_is_waited_for(server: Node) -> None:
    assert server.url is not None and server.server is not None
    peer = await RawPeer.dial(server.url, receive_buffer=4096)
    try:
        await wait_for(lambda: len(peer.pings) >= 1)
        inbound = server.sockets[0]
        peer.slow = True
        start = time.monotonic()
        # 600 KB at 400 KB/s: the next ping waits 1.5 s behind it, 5 timeouts.
        await server.server.send_talk(inbound, "big", {"x": "x" * 600_000})
        await wait_for(lambda: any(p.event == "big" for p in peer.packages), timeout=20)
        took = time.monotonic() - start
        peer.slow = False
        assert took > 3 * TIMINGS["heartbeat_response_timeout"]
        pings = len(peer.pings)
        await wait_for(lambda: len(peer.pings) >= pings + 2, timeout=5)
        assert server.sockets == [inbound] and not inbound.closed
    finally:
        await peer.aclose()


async def test_a_peer_that_stops_answering_is_dropped(
    server: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    assert server.url is not None
    peer = await RawPeer.dial(server.url)
    try:
        await wait_for(lambda: len(peer.pings) >= 1)
        peer.answering = False
        await wait_for(lambda: server.sockets == [], timeout=5)
    finally:
        await peer.aclose()
    # Something wrong, said as such, and counted (`trustp2p_heartbeat_lost_peers_total`).
    [lost] = [r for r in caplog.records if "lost peer: no pong within" in r.getMessage()]
    assert lost.levelno == logging.WARNING and "] ! lost peer" in lost.getMessage()
    assert server.metrics.lost_peers == 1
    # The close says what the peer was sent: "closed (1006 -)" said nothing of it.
    [closed] = [r.getMessage() for r in caplog.records if "= connection closed" in r.getMessage()]
    assert closed.endswith(
        "= connection closed (1006 no close frame received; sent 1001 lost peer)"
    )


async def test_a_frozen_peer_we_keep_writing_to_is_dropped(server: Node) -> None:
    """Found by a tester: a frozen peer (SIGSTOP) that we sent a talk every second was
    never dropped: its host took (and acknowledged) each write, which counted as the
    peer reading. Here the peer stops reading; its kernel's buffer takes our talks."""
    assert server.url is not None and server.server is not None
    peer = await RawPeer.dial(server.url)
    try:
        await wait_for(lambda: len(peer.pings) >= 1)
        inbound = server.sockets[0]
        peer.task_cancel()  # frozen: reads nothing, answers nothing
        sent = 0
        async with asyncio.timeout(5):  # (before: dropped only by chance, or never)
            while not inbound.closed:  # a talk every 5 ms, for its host to take
                await server.server.send_talk(inbound, "news", {"n": sent})
                sent += 1
                await asyncio.sleep(0.005)  # real time passing: a steady flow of writes
                assert inbound.bytes_in_flight() < 2**16  # all taken, still
        assert server.metrics.lost_peers == 1
    finally:
        await peer.aclose()


async def test_a_flood_of_silent_peers_logs_ten_warnings_and_counts_them_all(
    server: Node, caplog: pytest.LogCaptureFixture
) -> None:
    # Found in review: the lost-peer WARNING was outside the log budget that holds the
    # same connections' "connected to us" and "connection closed" lines.
    caplog.set_level(logging.DEBUG, logger="trustp2p")
    assert server.url is not None
    peers = [await RawPeer.dial(server.url) for _ in range(25)]
    for peer in peers:
        peer.answering = False
    try:
        await wait_for(lambda: server.metrics.lost_peers == 25, timeout=10)
    finally:
        await asyncio.gather(*(peer.aclose() for peer in peers))
    lost = [r.levelno for r in caplog.records if "! lost peer: no pong" in r.getMessage()]
    assert lost == [logging.WARNING] * 10 + [logging.DEBUG] * 15
