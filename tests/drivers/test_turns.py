"""
Read turns (:attr:`DriverOptions.read_turn`): a connection's messages take at most a
turn of an event loop iteration, then the rest of what was read from it waits for the
next one (attacker48 F1: a flooding peer's read of thousands of packages held the loop
for seconds, and other peers' requests went unanswered). Over real loopback sockets,
on the drivers that read a stream (``tcp``, ``ws``, ``picows``) and on ``memory``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import MS, stays
from tests.drivers.conformance import QUIET, TIMEOUT, DriverHarness, pause_at
from trustp2p.drivers import DriverEvent, DriverOptions, Socket
from trustp2p.drivers.memory import MemoryDriver, MemoryHub, MemorySocket
from trustp2p.drivers.tcp import TcpDriver
from trustp2p.drivers.ws import WsDriver
from trustp2p.exceptions import ConnectionDropped

DRIVERS = {"tcp": TcpDriver, "ws": WsDriver}

try:
    from trustp2p.drivers.ws_picows import PicowsDriver
except ImportError:  # pragma: no cover - picows not installed
    pass
else:
    DRIVERS["picows"] = PicowsDriver


@pytest.fixture(params=[*DRIVERS, "memory"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[DriverHarness]:
    if request.param == "memory":
        hub = MemoryHub()
        made = DriverHarness(lambda options: MemoryDriver(options, hub=hub), "127.0.0.1")
    else:
        made = DriverHarness(DRIVERS[request.param], "127.0.0.1")
    try:
        yield made
    finally:
        await made.aclose()


def burn(seconds: float) -> None:
    """Take the CPU for ``seconds``, as a handler's work on a package does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Iterations:
    """Counts the event loop's iterations: a callback that schedules itself again."""

    def __init__(self) -> None:
        self.count = 0
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


def messages(count: int) -> list[bytes]:
    return [b"%09d" % i for i in range(count)]


async def test_a_flood_on_one_connection_leaves_another_its_turn(harness: DriverHarness) -> None:
    """Another peer's message is delivered among the flood's first few turns, not after
    the whole read (before: after all 2,000, the flood's read being one)."""
    listening, events = await harness.listen()
    flooder, _ = await harness.connect(listening.url)
    flooded = (await events.next(DriverEvent.CONNECTION)).socket
    honest, _ = await harness.connect(listening.url)
    served = (await events.next(DriverEvent.CONNECTION)).socket
    order: list[Socket] = []

    def on_message(socket: Socket, data: bytes | str) -> None:
        order.append(socket)
        if socket is flooded:
            burn(0.1 * MS)  # 2,000 of them: 0.2 s in all
            if len(order) == 1:
                honest.write(b"echo?")  # it goes out once this iteration ends

    events.on_message_hook = on_message
    flood = messages(2000)
    for message in flood:
        flooder.write(message)  # one iteration: the server reads them at once
    assert served is not None
    await events.wait_messages(served, 1, timeout=10 * TIMEOUT)
    await events.wait_messages(flooded, len(flood), timeout=10 * TIMEOUT)  # (order kept, below)
    assert order.index(served) < 500, order.index(served)
    assert events.messages(flooded) == flood


@pytest.mark.parametrize("turn", [0.0, 0.005])
async def test_turns_keep_a_connections_order(harness: DriverHarness, turn: float) -> None:
    """Every message its own turn (``read_turn=0``) or a few, with the node's pause and
    resume in between: all arrive, in the order sent."""
    pair = await harness.pair(DriverOptions(read_turn=turn))
    events = pair.server_events
    paused: list[int] = []

    def on_message(socket: Socket, data: bytes | str) -> None:
        burn(0.05 * MS)
        if len(events.messages(socket)) % 97 == 0:
            socket.pause_reading()
            paused.append(1)
            asyncio.get_running_loop().call_later(MS, socket.resume_reading)

    events.on_message_hook = on_message
    sent = messages(1000)
    for message in sent:
        pair.client.write(message)
    assert await events.wait_messages(pair.server, len(sent), timeout=10 * TIMEOUT) == sent
    assert len(paused) == 10


async def test_a_turns_end_doesnt_resume_what_the_node_paused(harness: DriverHarness) -> None:
    """The node pauses while a turn's end holds the rest: nothing more comes until the
    node resumes (the turn's next iteration finds it paused), then all, in order."""
    pair = await harness.pair(DriverOptions(read_turn=0.0))  # a turn per message
    events = pair.server_events
    events.on_message_hook = pause_at(events, 3)
    sent = messages(50)
    for message in sent:
        pair.client.write(message)
    await events.wait_messages(pair.server, 3)
    assert await stays(lambda: len(events.messages(pair.server)) == 3, QUIET)
    events.on_message_hook = None
    pair.server.resume_reading()
    assert await events.wait_messages(pair.server, len(sent), timeout=10 * TIMEOUT) == sent


async def test_a_burst_then_a_close_is_all_delivered_in_turns(harness: DriverHarness) -> None:
    """3,000 messages then a close, read at once; their delivery outlasts both sides'
    ``close_timeout`` (10 ms): all arrive, in order, over several iterations, then the
    close (review93 M1: 1,800 of 3,000 with the earlier fix)."""
    options = DriverOptions(close_timeout=10 * MS)
    pair = await harness.pair(options)
    events = pair.server_events
    iterations = Iterations()
    seen: list[int] = []

    def on_message(socket: Socket, data: bytes | str) -> None:
        burn(0.05 * MS)  # 0.15 s in all
        seen.append(iterations.count)

    events.on_message_hook = on_message
    sent = messages(3000)
    for message in sent:
        pair.client.write(message)
    pair.client.close_soon()
    await events.next(DriverEvent.CLOSE, pair.server, timeout=10 * TIMEOUT)
    iterations.stop()
    assert events.messages(pair.server) == sent
    assert seen[-1] - seen[0] >= 10  # in turns (before: one iteration)


async def test_a_burst_then_a_close_outlasting_the_close_timer_is_all_delivered(
    harness: DriverHarness,
) -> None:
    """As above, but the peer answers nothing and never ends the connection: our close
    timer drops it while the burst is being delivered, and what it holds still comes
    (ws: its close frame is parsed with the burst and answered at once; review93 M1)."""
    options = DriverOptions(close_timeout=10 * MS)
    listening, events = await harness.listen(options)
    if not listening.url.startswith("ws://"):
        pytest.skip("a raw WebSocket client")
    host, port = listening.url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await reader.readuntil(b"\r\n\r\n")
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        events.on_message_hook = lambda socket, data: burn(0.05 * MS)
        sent = messages(3000)
        # Masked binary frames, a zero mask key: the payload goes as it is.
        frames = [bytes((0x82, 0x80 | len(m))) + b"\0\0\0\0" + m for m in sent]
        writer.write(b"".join(frames) + b"\x88\x82\0\0\0\0\x03\xe8")  # then a close (1000)
        await events.next(DriverEvent.CLOSE, server, timeout=10 * TIMEOUT)
        assert events.messages(server) == sent
    finally:
        writer.transport.abort()


async def test_a_peers_abort_then_a_node_pause_ends_within_the_close_timeout() -> None:
    """memory: the peer aborts while messages wait for their turn, then the node pauses
    among them for good: the end comes ``close_timeout`` after the abort, what waits
    dropped, as a stream driver's (review94 F3: never, while the pause lasted)."""
    hub = MemoryHub()
    harness = DriverHarness(lambda options: MemoryDriver(options, hub=hub), "127.0.0.1")
    try:
        pair = await harness.pair(DriverOptions(close_timeout=10 * MS, read_turn=0))
        events = pair.server_events
        events.on_message_hook = pause_at(events, 5)  # the node pauses at the 5th
        for i in range(50):
            pair.client.write(b"%d" % i)
        pair.client.abort()
        await events.next(DriverEvent.CLOSE, pair.server, timeout=TIMEOUT)
        assert len(events.messages(pair.server)) == 5
    finally:
        await harness.aclose()


async def test_a_node_pausing_briefly_and_often_keeps_what_waits(harness: DriverHarness) -> None:
    """A node that pauses 2 ms at each message (a throttle's pattern), never for
    ``close_timeout`` (30 ms): a burst then the peer's close (memory: its abort); every
    message arrives (review95 M1: what waited was dropped if reading was paused at the
    instant the end's timer fired: ws 15-42 of 300, memory 14-42)."""
    pair = await harness.pair(DriverOptions(close_timeout=30 * MS, read_turn=0))
    events = pair.server_events
    loop = asyncio.get_running_loop()

    def hook(socket: Socket, data: bytes | str) -> None:
        socket.pause_reading()
        loop.call_later(2 * MS, socket.resume_reading)

    events.on_message_hook = hook
    sent = messages(300)
    for message in sent:
        pair.client.write(message)
    if isinstance(pair.client, MemorySocket):
        pair.client.abort()
    else:
        pair.client.close_soon()
    await events.next(DriverEvent.CLOSE, pair.server, timeout=10 * TIMEOUT)
    assert events.messages(pair.server) == sent


async def test_a_close_then_an_abort_behind_a_long_pause_is_no_drop() -> None:
    """memory: the peer's close frame then its abort wait behind messages, the node
    pauses among them for good: the end comes, and no ConnectionDropped (the close
    frame was on its way; review95 L2: the inbox was emptied before it was looked at)."""
    hub = MemoryHub()
    harness = DriverHarness(lambda options: MemoryDriver(options, hub=hub), "127.0.0.1")
    try:
        pair = await harness.pair(DriverOptions(close_timeout=10 * MS, read_turn=0))
        events = pair.server_events
        events.on_message_hook = pause_at(events, 5)
        for i in range(50):
            pair.client.write(b"%d" % i)
        pair.client.close_soon()
        pair.client.abort()
        await events.next(DriverEvent.CLOSE, pair.server, timeout=TIMEOUT)
        dropped = [e for e in events.errors(pair.server) if isinstance(e, ConnectionDropped)]
        assert not dropped, dropped
    finally:
        await harness.aclose()
