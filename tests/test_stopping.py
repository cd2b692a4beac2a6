"""What the API does while a node stops and once it stopped: the waits end, and a
thread's ``stop()`` may still publish (found by new-user tester 29)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from trustp2p import EventMap, Node, PackageType, Socket, Thread
from trustp2p.exceptions import NodeStateError
from trustp2p.protocol.gossip import GossipMessage

from .nodes import FAST, MakeNode, wait_for

_DEAD = "ws://127.0.0.1:9"  # nothing listens there: a dial that never succeeds


async def test_waiters_are_released_when_the_node_stops(make_node: MakeNode) -> None:
    """A task in wait_connected() or connection_to() outlived the node's stop, for
    ever; on a stopped node both waited out their timeout (or for ever, with none)
    where publish() says the node isn't running."""
    server = await make_node(server=True)
    client = await make_node(client=True, peers=[_DEAD])
    assert client.client is not None and server.server is not None
    role = client.client
    waiters = [
        asyncio.create_task(role.wait_connected()),
        asyncio.create_task(role.connection_to(_DEAD)),
        asyncio.create_task(server.server.wait_connected()),
    ]
    await asyncio.sleep(0)  # (each waits: none of them can end by itself)
    assert not any(waiter.done() for waiter in waiters)
    async with asyncio.timeout(10):  # (bounds the failing test: they waited for ever)
        await asyncio.gather(client.stop(), server.stop())
        for waiter in waiters:
            with pytest.raises(NodeStateError, match=r"^the node is stopping, not running$"):
                await waiter
        # Once stopped, at once: no timeout given, they would wait for ever.
        with pytest.raises(NodeStateError, match=r"^the node is stopped, not running$"):
            await role.wait_connected()
        with pytest.raises(NodeStateError, match=r"^the node is stopped, not running$"):
            await role.connection_to(_DEAD, timeout=60)
        with pytest.raises(NodeStateError, match=r"^the node is stopped, not running$"):
            await server.server.wait_connected(timeout=60)


async def test_a_wait_before_the_start_waits_for_the_start(make_node: MakeNode) -> None:
    server = await make_node(server=True)
    assert server.url is not None
    client = Node(client=True, peers=[server.url], **FAST)
    assert client.client is not None
    waiting = asyncio.create_task(client.client.wait_connected())
    reaching = asyncio.create_task(client.client.connection_to(server.url))
    await asyncio.sleep(0)
    assert not waiting.done() and not reaching.done()
    await client.start()
    try:
        async with asyncio.timeout(10):
            await waiting
            assert await reaching is client.client.sockets[0]
    finally:
        await client.stop()


async def test_waits_that_are_met_already_return_while_the_node_stops() -> None:
    """A thread's stop() runs before the connections close: a connection it asks for
    is still there (as send_talk() works there)."""
    met: list[object] = []

    class Asks(Thread):
        @property
        def event_map(self) -> EventMap:
            return {PackageType.TALK: {"x": lambda socket, package: None}}

        async def stop(self) -> None:
            assert self.client is not None
            await self.client.wait_connected()
            met.append(await self.client.connection_to(url))

    server = Node(server=True, port=0, **FAST)
    await server.start()
    url = server.url
    assert url is not None
    client = Node(client=True, peers=[url], threads=[Asks], **FAST)
    try:
        await client.start()
        assert client.client is not None
        socket = await client.client.connection_to(url, timeout=10)
        await client.stop()
        assert met == [socket]
    finally:
        await client.stop()
        await server.stop()


class Goodbye(Thread):
    """Publishes a goodbye on ``presence`` in its stop(); records its own deliveries."""

    delivered: list[Any]
    errors: list[str]

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"presence": self.on_presence}}

    async def start(self) -> None:
        self.delivered, self.errors = [], []

    def on_presence(self, socket: Socket | None, message: GossipMessage) -> None:
        self.delivered.append(message.body)

    async def stop(self) -> None:
        await self.node.publish("presence", {"bye": True})

    async def on_socket_close(self, socket: Socket) -> None:
        # The connections close once every thread's stop() returned: too late.
        try:
            await self.node.publish("presence", {"late": True})
        except NodeStateError as exc:
            self.errors.append(str(exc))


async def test_a_thread_publishes_a_goodbye_from_its_stop(tmp_path: Path) -> None:
    """publish() from a thread's stop() raised NodeStateError "the node is stopping",
    though stop() runs before the connections close and send_talk() works there. The
    peers get it; the node's own handlers, stopped by then, at its next start."""
    server = Node(server=True, port=0, **FAST)
    await server.start()
    got: list[Any] = []
    server.subscribe("presence", lambda message: got.append(message.body))
    assert server.url is not None and server.gossip is not None
    options: dict[str, Any] = {"client": True, "peers": [server.url], "cwd": tmp_path}
    client = Node(threads=[Goodbye], **options, **FAST)
    try:
        await client.start()
        thread = client.threads[0]
        assert isinstance(thread, Goodbye) and client.gossip is not None
        router = client.gossip.router
        await wait_for(lambda: any("presence" in router.peer_topics(p) for p in router.peers))
        await client.stop()
        await wait_for(lambda: got == [{"bye": True}])
        assert thread.errors == [
            "the node is stopping: publish() works until the threads' stop() returned"
        ]
        assert thread.delivered == []  # gossip delivery had stopped
        with pytest.raises(NodeStateError, match=r"^the node is stopped, not running$"):
            await client.publish("presence", {})
        again = Node(threads=[Goodbye], **{**options, **FAST, "peers": []})
        await again.start()
        try:
            rerun = again.threads[0]
            assert isinstance(rerun, Goodbye)
            await wait_for(lambda: rerun.delivered == [{"bye": True}])
        finally:
            await again.stop()
    finally:
        await client.stop()
        await server.stop()


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_a_negative_timeout_is_refused(make_node: MakeNode, timeout: float) -> None:
    """``timeout=-1`` timed out at once, as if no connection had come (tester29): it is
    refused, as the request timeouts are; 0 asks whether it is there now."""
    server = await make_node(server=True)
    client = await make_node(client=True, peers=[_DEAD])
    assert client.client is not None and server.server is not None
    with pytest.raises(ValueError, match=r"^timeout must be None or at least 0, not "):
        await client.client.wait_connected(timeout=timeout)
    with pytest.raises(ValueError, match=r"^timeout must be None or at least 0, not "):
        await client.client.connection_to(_DEAD, timeout=timeout)
    with pytest.raises(ValueError, match=r"^count must not be negative, not -1$"):
        await server.server.wait_connected(-1)
    await server.server.wait_connected(0)  # (none asked: there at once)
    with pytest.raises(TimeoutError, match=r"^1 connection\(s\) not open within 0 s"):
        await server.server.wait_connected(timeout=0)


class HangingStop(Thread):
    """A thread whose ``stop()`` waits for what never comes, and a second thread's
    ``stop()`` that doesn't wait."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"x": lambda socket, package: None}}

    async def stop(self) -> None:
        await asyncio.Event().wait()


class QuickStop(Thread):
    stopped = False

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"y": lambda socket, package: None}}

    def stop(self) -> None:
        QuickStop.stopped = True


async def test_a_hurried_stop_gives_up_a_stop_that_hangs_and_says_what_it_waited_for(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """tester39 F8: a thread's stop() that hung held the node's stop for close_timeout
    (a minute here), saying nothing, and the CLI's second SIGTERM couldn't shorten it.
    ``stop_waits`` says what the stop waits for; ``hurry()`` gives it up, and a
    ``stop()`` after it still runs (one that doesn't wait ends)."""
    QuickStop.stopped = False
    node = await make_node(server=True, threads=[HangingStop, QuickStop], close_timeout=60.0)
    stopping = asyncio.ensure_future(node.stop())
    await wait_for(lambda: node.stop_waits.waiting == ["stop() of HangingStop"])
    assert node.stop_waits.hurry() == ["stop() of HangingStop"]
    async with asyncio.timeout(30):  # (before: 60 s)
        await stopping
    assert QuickStop.stopped
    assert "! stop of HangingStop cancelled: the stop was cut short" in caplog.text
    assert node.stop_waits.waiting == []


async def test_the_stop_says_how_many_closing_handshakes_are_left(
    make_node: MakeNode,
) -> None:
    """tester49 F2: the stop's line said the connections it began closing ("2
    connection(s)" 3 s in, when 1 was left): it says those left when it is said."""
    server = await make_node(server=True, close_timeout=60.0)
    frozen = await make_node(client=True, peers=[server.url])
    live = await make_node(client=True, peers=[server.url])
    assert frozen.client is not None and live.client is not None
    await frozen.client.wait_connected()
    await live.client.wait_connected()
    assert server.server is not None
    await wait_for(lambda: len(server.server.sockets) == 2)
    frozen.client.sockets[0].pause_reading()
    stopping = asyncio.ensure_future(server.stop())
    left = ["the closing handshake of 1 connection(s)"]  # (the live one's answered)
    await wait_for(lambda: server.stop_waits.waiting == left)
    server.stop_waits.hurry()
    async with asyncio.timeout(30):
        await stopping


async def test_a_hurried_stop_drops_a_connection_whose_close_is_not_answered(
    make_node: MakeNode,
) -> None:
    """``stop_waits.hurry()`` alone cuts the closing handshake short (the CLI drops the
    connections itself too): a peer that reads nothing (frozen) doesn't answer."""
    server = await make_node(server=True, close_timeout=60.0)
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    client.client.sockets[0].pause_reading()
    stopping = asyncio.ensure_future(server.stop())
    waiting = ["the closing handshake of 1 connection(s)"]
    await wait_for(lambda: server.stop_waits.waiting == waiting)
    assert server.stop_waits.hurry() == waiting
    async with asyncio.timeout(30):  # (else: 60 s)
        await stopping
