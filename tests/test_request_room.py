"""A request's timeout counts its wait for room to send (tester45 F3, review82 R1-R3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from websockets.asyncio.client import ClientConnection, connect

from trustp2p import Node, Package, PackageType, RequestTimeout, Socket
from trustp2p.protocol.package import build_package
from trustp2p.threads.base import EventMap, Thread

from .nodes import MakeNode


@asynccontextmanager
async def a_full_link(make_node: MakeNode) -> AsyncIterator[tuple[Node, Socket, ClientConnection]]:
    """A plain server and its connection to a raw peer (it never introduces itself)
    that has read nothing yet: the server's write buffer for it is full."""
    options = {"write_limit": 1024, "max_send_bytes": 2**22, "max_package_size": 2**22}
    server = await make_node(server=True, secure=False, **options)
    assert server.url is not None and server.server is not None
    async with connect(server.url, compression=None, max_queue=1) as ws:
        await server.server.wait_connected()
        inbound = server.server.sockets[0]
        talk = build_package(PackageType.TALK, "news", {"pad": "z" * 100_000})
        while not inbound.write_paused:
            server.send_package(inbound, talk)
            await asyncio.sleep(0)
        yield server, inbound, ws
        ws.transport.abort()


async def test_a_request_waiting_for_room_times_out_within_its_timeout(
    make_node: MakeNode,
) -> None:
    """tester45 F3: a request first waited for room to write, uncounted: one with
    ``timeout=60`` on a busy slow link raised after 111.7 s (here: never, the peer
    reading nothing). The wait is within the timeout, and the request is counted as
    sent and timed out (review82 R3: not timed out alone)."""
    async with a_full_link(make_node) as (server, inbound, _):
        assert server.server is not None
        metrics = server.metrics
        sent, timed_out = metrics.requests_sent, metrics.requests_timed_out
        async with asyncio.timeout(10):  # (before: waited for room for good)
            with pytest.raises(RequestTimeout, match=r"within 0\.2 s"):
                await server.server.request(inbound, "echo", {}, timeout=0.2)
        assert (metrics.requests_sent, metrics.requests_timed_out) == (sent + 1, timed_out + 1)


async def test_the_wait_for_room_and_for_the_introduction_share_the_timeout(
    make_node: MakeNode,
) -> None:
    """review82 R1: after a wait for room, the wait for the peer's introduction was given
    the whole timeout again: a request with ``timeout=2`` to a peer that makes room
    after 1.8 s and never introduces itself raised after 3.8 s. It raises at 2 s."""
    async with a_full_link(make_node) as (server, inbound, ws):
        assert server.server is not None

        async def read_later() -> None:
            await asyncio.sleep(1.8)
            while True:
                await ws.recv()

        reader = asyncio.ensure_future(read_later())
        try:
            async with asyncio.timeout(3.0):  # (before: 3.8 s)
                with pytest.raises(RequestTimeout, match=r"within 2 s"):
                    await server.server.request(inbound, "echo", {}, timeout=2.0)
        finally:
            reader.cancel()


class RoomAtTheDeadline:
    """A socket whose room comes back just before a request's deadline, in a loop
    iteration that then runs past it (a busy handler)."""

    id = 987_654
    closed = False
    close_code = None
    close_reason = ""
    peer = "fake"
    write_paused = True

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        room = loop.create_future()

        def resume_writing() -> None:  # (the transport's callback)
            room.set_result(None)
            self.write_paused = False
            time.sleep(0.25)  # the rest of this loop iteration

        loop.call_later(0.1, resume_writing)
        await room


async def test_room_that_comes_at_the_deadline_is_a_timeout_not_a_value_error(
    make_node: MakeNode,
) -> None:
    """review82 R2, in the first mend of tester45 F3: room that came back as the
    deadline passed left 0 s for the response, and the request table raised
    ``ValueError``."""
    node = await make_node(server=True, secure=False)
    socket = cast(Socket, cast(Any, RoomAtTheDeadline()))
    with pytest.raises(RequestTimeout, match=r"within 0\.2 s"):
        await node.requests.request_package(socket, "echo", {}, timeout=0.2)


@pytest.mark.parametrize("timeout", [0, -1.0])
async def test_a_bad_timeout_is_refused_whether_or_not_the_link_is_full(
    make_node: MakeNode, timeout: Any
) -> None:
    """review83 F3: on a full link, ``timeout=0`` raised ``RequestTimeout`` (counted as
    sent); on a free one, ``ValueError``. The same error either way, nothing counted.
    (``timeout=True``: ``TypeError`` in pure Python; the compiled build takes a bool
    as the float 1.0 where the call enters it, on either path.)"""
    async with a_full_link(make_node) as (server, inbound, _):
        assert server.server is not None
        with pytest.raises(ValueError, match="timeout must be positive"):
            await server.server.request(inbound, "echo", {}, timeout=timeout)
        assert server.metrics.requests_sent == 0


class Echo(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self.echo}, PackageType.TALK: {"news": self.news}}

    async def echo(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"echoed": package.body}

    async def news(self, socket: Socket, package: Package) -> None:
        return None


async def a_full_link_to_the_first_of(
    make_node: MakeNode, servers: int, **options: Any
) -> tuple[Node, Node, Socket]:
    """A client of ``servers`` echo servers, and its link to the first one full (that
    server reads nothing): the client, the first server and the client's socket to it."""
    options = {"write_limit": 1024, "max_send_bytes": 2**24, "max_package_size": 2**22} | options
    nodes = [
        await make_node(server=True, secure=False, threads=[Echo], **options)
        for _ in range(servers)
    ]
    first = nodes[0]
    peers = [node.url for node in nodes]
    client = await make_node(client=True, secure=False, peers=peers, **options)
    assert client.client is not None and first.server is not None and first.url is not None
    await client.client.wait_connected(servers)
    await first.server.wait_connected()
    port = first.url.rsplit(":", 1)[1]
    to_first = next(s for s in client.client.sockets if s.peer.endswith(f":{port}"))
    first.server.sockets[0].pause_reading()  # it reads nothing: no room
    talk = build_package(PackageType.TALK, "news", {"pad": "z" * 1_000_000})
    while not to_first.write_paused:
        client.send_package(to_first, talk)
        await asyncio.sleep(0)
    return client, first, to_first


async def test_a_rerouted_request_whose_connection_closes_while_it_waits_for_room(
    make_node: MakeNode,
) -> None:
    """review83 F1: with ``reroute=True``, a connection lost while the request waited
    for room to send raised ``ConnectionClosed`` with another server connected. It goes
    to that server, as a request lost in flight does."""
    client, first, to_first = await a_full_link_to_the_first_of(make_node, 2)
    assert client.client is not None and first.server is not None
    asyncio.get_running_loop().call_later(0.3, first.server.sockets[0].abort)
    async with asyncio.timeout(10):  # (before: ConnectionClosed)
        answer = await client.client.request(to_first, "echo", {"n": 1}, reroute=True)
    assert answer == {"echoed": {"n": 1}}


async def test_a_rerouted_request_with_no_room_goes_to_the_next_server_when_stalled(
    make_node: MakeNode,
) -> None:
    """review83 F2: with ``reroute=True``, a request that found no room on a full link
    waited out its whole timeout there (``RequestTimeout``), another server idle. After
    ``stalled_timeout`` it goes to the next server, counted as rerouted."""
    client, _, to_first = await a_full_link_to_the_first_of(make_node, 2, stalled_timeout=0.2)
    assert client.client is not None
    rerouted = client.metrics.requests_rerouted
    async with asyncio.timeout(10):
        answer = await client.client.request(
            to_first, "echo", {"n": 2}, reroute=True, timeout=3.0
        )  # (before: RequestTimeout after 3 s)
    assert answer == {"echoed": {"n": 2}}
    assert client.metrics.requests_rerouted == rerouted + 1


async def test_a_rerouted_request_with_no_room_and_no_other_server_waits_its_timeout(
    make_node: MakeNode,
) -> None:
    """With ``reroute=True`` and no other server, a request that finds no room waits
    on past ``stalled_timeout``, within its timeout: ``RequestTimeout`` names it."""
    client, _, to_first = await a_full_link_to_the_first_of(make_node, 1, stalled_timeout=0.1)
    assert client.client is not None
    start = time.monotonic()
    with pytest.raises(RequestTimeout, match=r"within 0\.5 s"):
        await client.client.request(to_first, "echo", {"n": 3}, reroute=True, timeout=0.5)
    assert time.monotonic() - start >= 0.45  # (it didn't give up at the first stall)
    assert client.metrics.requests_rerouted == 0


async def test_a_bad_timeout_is_refused_before_the_peer_introduced_itself(
    make_node: MakeNode,
) -> None:
    """review87 R1: on a free link whose peer hadn't introduced itself yet (the state
    just after a secure connect), ``timeout=0`` raised ``RequestTimeout`` "within 0 s",
    counted as sent."""
    server = await make_node(server=True, secure=False)
    assert server.url is not None and server.server is not None
    async with connect(server.url, compression=None) as ws:  # (never introduces itself)
        await server.server.wait_connected()
        with pytest.raises(ValueError, match="timeout must be positive"):
            await server.server.request(server.server.sockets[0], "echo", {}, timeout=0)
        assert server.metrics.requests_sent == 0
        ws.transport.abort()
