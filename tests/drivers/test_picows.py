"""The conformance suite for :class:`PicowsDriver`, and interop with the ``ws`` driver."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.datastructures import HeadersLike
from websockets.exceptions import InvalidStatus

from tests.drivers.conformance import (
    TIMEOUT,
    DriverConformance,
    DriverFactory,
    DriverHarness,
    RecordingListener,
)
from tests.drivers.websocket import WebSocketChecks, WebSocketUrls, harness_fixture
from trustp2p.drivers import CloseCode, DriverEvent, DriverOptions, Socket, driver_class
from trustp2p.drivers.ws import WsDriver

pytest.importorskip("picows", reason="picows isn't installed (the fast extra)")

from trustp2p.drivers.ws_picows import PicowsDriver


class TestPicowsConformance(WebSocketUrls, DriverConformance):
    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        return PicowsDriver


# Interop with the ws driver, on either side

SIZES = [0, 1, 125, 126, 65535, 65536, 100_000]
"""Around each WebSocket length encoding: 7 bits, 16 bits, 64 bits."""


@pytest.mark.parametrize(
    ("server_driver", "client_driver"), [(PicowsDriver, WsDriver), (WsDriver, PicowsDriver)]
)
async def test_interop_with_the_ws_driver(
    server_driver: DriverFactory, client_driver: DriverFactory
) -> None:
    options = DriverOptions(max_message_size=None)
    server_events, client_events = RecordingListener(), RecordingListener()
    listening = await server_driver(options).listen("127.0.0.1", 0, server_events)
    client = await client_driver(options).connect(listening.url, client_events)
    try:
        server = (await server_events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        messages = [bytes(i % 251 for i in range(size)) for size in SIZES]
        for this, other, events in (
            (client, server, server_events),
            (server, client, client_events),
        ):
            for message in messages:  # in one event loop iteration: sent together
                this.write(message)
            assert await events.wait_messages(other, len(messages)) == messages
            this.write(b"alone")
            assert (await events.wait_messages(other, len(messages) + 1))[-1] == b"alone"
        await client.close(CloseCode.GOING_AWAY, "bye")
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()
        assert (server.close_code, server.close_reason) == (CloseCode.GOING_AWAY, "bye")
        assert (client.close_code, client.close_reason) == (CloseCode.GOING_AWAY, "bye")
    finally:
        client.abort()
        listening.close()
        await listening.wait_closed()


# WebSocket details, against the websockets client


harness = harness_fixture(PicowsDriver)


def test_driver_class() -> None:
    assert driver_class("picows") is PicowsDriver


async def test_text_and_fragmented_messages(harness: DriverHarness) -> None:
    listening, events = await harness.listen(DriverOptions(max_message_size=6))
    async with ws_connect(listening.url) as client:
        await client.send("héllo")
        await client.send([b"ab", b"cd", b"ef"])
        await client.send(["x", "y"])
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        assert await events.wait_messages(server, 3) == ["héllo", b"abcdef", "xy"]
        assert server.stats.bytes_in == len("héllo".encode()) + 6 + 2
        server.write(b"reply")
        assert await client.recv() == b"reply"
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()
    assert server.close_code == CloseCode.NORMAL_CLOSURE


async def test_fragmented_message_too_big(harness: DriverHarness) -> None:
    listening, events = await harness.listen(DriverOptions(max_message_size=4))
    async with ws_connect(listening.url) as client:
        await client.send([b"ab", b"cd", b"e"])
        async with asyncio.timeout(TIMEOUT):
            await client.wait_closed()
        assert client.close_code == CloseCode.MESSAGE_TOO_BIG
    server = (await events.next(DriverEvent.CONNECTION)).socket
    assert server is not None
    error = (await events.next(DriverEvent.ERROR, server)).payload
    assert str(error) == "message too big: 5 bytes exceeds limit of 4 bytes"
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()
    assert server.close_code == CloseCode.MESSAGE_TOO_BIG
    assert events.messages(server) == []


async def _connect_with_headers(
    harness: DriverHarness, options: DriverOptions, headers: HeadersLike
) -> Socket:
    listening, events = await harness.listen(options)
    async with ws_connect(listening.url, additional_headers=headers) as client:
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        await client.send(b"hi")
        await events.wait_messages(server, 1)
    return server


@pytest.mark.parametrize(
    ("options", "headers", "host"),
    [
        (DriverOptions(), {"X-Real-IP": "203.0.113.7"}, "203.0.113.7"),
        (DriverOptions(), {"X-Real-IP": "2001:db8::7"}, "2001:db8::7"),
        (DriverOptions(trust_real_ip=False), {"X-Real-IP": "203.0.113.7"}, "127.0.0.1"),
        (DriverOptions(), {}, "127.0.0.1"),
    ],
)
async def test_real_ip_from_loopback_proxy(
    harness: DriverHarness, options: DriverOptions, headers: HeadersLike, host: str
) -> None:
    server = await _connect_with_headers(harness, options, headers)
    assert server.host == host
    assert server.peer.startswith("127.0.0.1:")


@pytest.mark.parametrize(
    "headers", [[("X-Real-IP", "not-an-ip")], [("X-Real-IP", "1.2.3.4"), ("X-Real-IP", "1.2.3.5")]]
)
async def test_invalid_real_ip_rejected(
    harness: DriverHarness, headers: list[tuple[str, str]]
) -> None:
    listening, events = await harness.listen()
    with pytest.raises(InvalidStatus) as exc_info:
        async with ws_connect(listening.url, additional_headers=headers):
            pytest.fail("handshake should fail")
    assert exc_info.value.response.status_code == 400
    assert exc_info.value.response.body == b"Invalid X-Real-IP header.\n"
    await asyncio.sleep(0)
    assert [record.event for record in events.records] == [DriverEvent.START]


class TestPicowsWebSocket(WebSocketChecks):
    """The shared WebSocket checks, on this driver (``harness`` above)."""
