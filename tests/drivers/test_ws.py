"""The conformance suite and WebSocket-only checks for :class:`WsDriver`."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve as ws_serve
from websockets.datastructures import HeadersLike
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request

from tests.conftest import MS
from tests.drivers.conformance import (
    TIMEOUT,
    DriverConformance,
    DriverFactory,
    DriverHarness,
)
from tests.drivers.websocket import WebSocketChecks, WebSocketUrls, harness_fixture
from tests.processes import free_port  # nothing listens there: it was free a moment ago
from trustp2p.drivers import CloseCode, DriverEvent, DriverOptions, Socket, driver_class
from trustp2p.drivers.tcp import TcpSocket
from trustp2p.drivers.ws import WsDriver, WsSocket
from trustp2p.exceptions import DriverError


class TestWsConformance(WebSocketUrls, DriverConformance):
    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        return WsDriver

    @pytest.mark.parametrize("closer", ["client", "server"])
    async def test_messages_before_close_arrive_first(
        self, harness: DriverHarness, closer: str
    ) -> None:
        await super().test_messages_before_close_arrive_first(harness, closer)

    @pytest.mark.parametrize("sender", ["client", "server"])
    async def test_messages_before_too_big_message_arrive(
        self, harness: DriverHarness, sender: str
    ) -> None:
        await super().test_messages_before_too_big_message_arrive(harness, sender)

    async def test_close_times_out_when_peer_does_not_answer(self, harness: DriverHarness) -> None:
        await super().test_close_times_out_when_peer_does_not_answer(harness)

    async def test_pause_reading_from_on_message(self, harness: DriverHarness) -> None:
        await super().test_pause_reading_from_on_message(harness)

    async def test_drain_after_connection_lost_raises(self, harness: DriverHarness) -> None:
        await super().test_drain_after_connection_lost_raises(harness)


harness = harness_fixture(WsDriver)


def test_driver_class() -> None:
    assert driver_class("ws") is WsDriver
    assert driver_class("wss") is WsDriver


async def test_websockets_line_per_closed_connection_is_at_debug(
    harness: DriverHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="websockets")
    pair = await harness.pair()
    await pair.client.close()
    await pair.server.wait_closed()
    closed = [r for r in caplog.records if r.getMessage() == "connection closed"]
    assert [(r.name, r.levelno) for r in closed] == [("websockets.server", logging.DEBUG)]


async def test_listening_url(harness: DriverHarness) -> None:
    listening, _ = await harness.listen()
    port = listening.url.rsplit(":", 1)[1]
    assert listening.url == f"ws://127.0.0.1:{port}"


async def test_connect_refused_message(harness: DriverHarness) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(DriverError) as exc_info:
        await harness.connect(url)
    assert str(exc_info.value) == f"can't connect to {url}: Connection refused"
    assert isinstance(exc_info.value.__cause__, OSError)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (  # a node's admin listener answers an upgrade with its status page
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            "HTTP 200 (an HTTP server, not a peer: is it a node's admin port?)",
        ),
        (  # a tcp:// server's CLOSE frame (1002 "protocol error")
            b"\x80\x00\x00\x11\x01\x03\xeaprotocol error",
            "did not receive a valid HTTP response (not HTTP: does it listen on tcp://?)",
        ),
        (  # closed at once, as a node drops a refusal repeated within a moment
            b"",
            "did not receive a valid HTTP response (closed unanswered: a stopping or"
            " overloaded server, or a node refusing an address whose dials it has just"
            " refused, e.g. for connecting too often)",
        ),
    ],
)
async def test_a_failed_upgrade_says_what_answered(
    harness: DriverHarness, answer: bytes, says: str
) -> None:
    """tester37 F7: a ws:// dial of an admin port said only "HTTP 200", of a tcp://
    server "did not receive a valid HTTP response"."""

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        writer.close()

    server = await asyncio.start_server(answering, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(DriverError) as exc_info:
            await harness.connect(url)
        assert str(exc_info.value).endswith(f": {says}")
    finally:
        server.close()


async def test_text_frame_arrives_as_str(harness: DriverHarness) -> None:
    listening, events = await harness.listen()
    async with ws_connect(listening.url) as client:
        await client.send("héllo")
        await client.send(b"bin")
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        assert await events.wait_messages(server, 2) == ["héllo", b"bin"]
        assert type(events.messages(server)[0]) is str
        server.write(b"reply")
        assert await client.recv() == b"reply"
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()
    assert server.close_code == CloseCode.NORMAL_CLOSURE
    assert events.events(server) == [
        DriverEvent.CONNECTION,
        DriverEvent.MESSAGE,
        DriverEvent.MESSAGE,
        DriverEvent.CLOSE,
    ]


async def test_text_frame_counts_bytes(harness: DriverHarness) -> None:
    listening, events = await harness.listen()
    async with ws_connect(listening.url) as client:
        await client.send("héllo")
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        await events.wait_messages(server, 1)
    assert server.stats.messages_in == 1
    assert server.stats.bytes_in == len("héllo".encode())


async def test_fragmented_message_is_reassembled(harness: DriverHarness) -> None:
    listening, events = await harness.listen(DriverOptions(max_message_size=6))
    async with ws_connect(listening.url) as client:
        await client.send([b"ab", b"cd", b"ef"])
        await client.send(["x", "y"])
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        assert await events.wait_messages(server, 2) == [b"abcdef", "xy"]


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
    assert isinstance(error, DriverError)
    assert (
        str(error)
        == "message too big: frame with 1 bytes after reading 4 bytes exceeds limit of 4 bytes"
    )
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()
    assert server.close_code == CloseCode.MESSAGE_TOO_BIG
    assert events.messages(server) == []


async def _get_response(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        async with asyncio.timeout(TIMEOUT):
            return await reader.read()  # the server ends its side after the response
    finally:
        writer.close()
        await writer.wait_closed()


async def test_plain_http_request_rejected(harness: DriverHarness) -> None:
    listening, events = await harness.listen()
    response = await _get_response(listening.url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    await asyncio.sleep(0)
    assert [record.event for record in events.records] == [DriverEvent.START]


async def test_accept_before_the_upgrade_and_close_without_it(harness: DriverHarness) -> None:
    """An accepting listener hears of a connection at TCP accept, and of its end even if
    it never upgrades (the peer leaves, or the open timeout drops it)."""
    events = harness.accepting_recorder()
    listening, _ = await harness.listen(DriverOptions(open_timeout=100 * MS), listener=events)
    host, port = listening.url.removeprefix("ws://").rsplit(":", 1)
    for leave in (True, False):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            accepted = (await events.next(DriverEvent.ACCEPT)).socket
            assert accepted is not None and accepted.host == "127.0.0.1"
            if leave:
                writer.close()
            else:
                async with asyncio.timeout(TIMEOUT):
                    assert await reader.read() == b""  # dropped at the open timeout
            await events.next(DriverEvent.CLOSE, accepted)
            assert events.events(accepted) == [DriverEvent.ACCEPT, DriverEvent.CLOSE]
        finally:
            writer.close()
            await writer.wait_closed()


async def test_close_on_accept_waits_for_the_upgrade_to_say_why(
    harness: DriverHarness,
) -> None:
    events = harness.accepting_recorder(
        lambda socket: socket.close_soon(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out")
    )
    listening, _ = await harness.listen(listener=events)
    async with ws_connect(listening.url) as client:
        with pytest.raises(ConnectionClosed):
            await client.recv()
    assert (client.close_code, client.close_reason) == (1013, "inbound connections maxed out")
    accepted = (await events.next(DriverEvent.ACCEPT)).socket
    await events.next(DriverEvent.CLOSE, accepted)
    assert events.events(accepted) == [DriverEvent.ACCEPT, DriverEvent.CLOSE]


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


@pytest.mark.parametrize("real_ip", ["203.0.113.7", "2001:db8::7"])
async def test_real_ip_from_loopback_proxy(harness: DriverHarness, real_ip: str) -> None:
    server = await _connect_with_headers(harness, DriverOptions(), {"X-Real-IP": real_ip})
    assert server.host == real_ip
    assert server.peer.startswith("127.0.0.1:")


async def test_real_ip_ignored_when_not_trusted(harness: DriverHarness) -> None:
    server = await _connect_with_headers(
        harness, DriverOptions(trust_real_ip=False), {"X-Real-IP": "203.0.113.7"}
    )
    assert server.host == "127.0.0.1"


async def test_no_real_ip(harness: DriverHarness) -> None:
    server = await _connect_with_headers(harness, DriverOptions(), {})
    assert server.host == "127.0.0.1"
    assert server.peer.startswith("127.0.0.1:")


async def test_invalid_real_ip_rejected(harness: DriverHarness) -> None:
    listening, events = await harness.listen()
    with pytest.raises(InvalidStatus) as exc_info:
        async with ws_connect(listening.url, additional_headers={"X-Real-IP": "not-an-ip"}):
            pytest.fail("handshake should fail")
    assert exc_info.value.response.status_code == 400
    assert exc_info.value.response.body == b"Invalid X-Real-IP header.\n"
    await asyncio.sleep(0)
    assert [record.event for record in events.records] == [DriverEvent.START]


async def test_repeated_real_ip_rejected(harness: DriverHarness) -> None:
    listening, events = await harness.listen()
    headers = [("X-Real-IP", "203.0.113.7"), ("X-Real-IP", "203.0.113.8")]
    with pytest.raises(InvalidStatus) as exc_info:
        async with ws_connect(listening.url, additional_headers=headers):
            pytest.fail("handshake should fail")
    assert exc_info.value.response.status_code == 400
    assert [record.event for record in events.records] == [DriverEvent.START]


class TestWsWebSocket(WebSocketChecks):
    """The shared WebSocket checks, on this driver (``harness`` above)."""


# The driver frames its messages itself (header and data queued apart): 7-bit, 16-bit
# and 64-bit lengths, masked from a client, read by bare websockets.
_SIZES = [0, 1, 125, 126, 2**16 - 1, 2**16, 2**18 + 3]


@pytest.mark.parametrize("size", _SIZES)
async def test_messages_from_the_server_reach_a_websockets_client(
    harness: DriverHarness, size: int
) -> None:
    message = bytes(i % 253 for i in range(size))
    listening, events = await harness.listen()
    async with ws_connect(listening.url, compression=None, max_size=None) as client:
        await client.send(message)
        server = (await events.next(DriverEvent.CONNECTION)).socket
        assert server is not None
        assert await events.wait_messages(server, 1) == [message]
        pong = await client.ping()  # a control frame among the driver's frames
        server.write(message)
        server.write(b"after")
        assert await client.recv() == message
        assert await client.recv() == b"after"
        async with asyncio.timeout(TIMEOUT):
            await pong


@pytest.mark.parametrize("size", _SIZES)
async def test_messages_from_the_client_reach_a_websockets_server(
    harness: DriverHarness, size: int
) -> None:
    message = bytes(i % 253 for i in range(size))
    received: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        async for data in ws:
            await received.put(data)
            await ws.send(data)

    async with ws_serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client, events = await harness.connect(f"ws://127.0.0.1:{port}")
        client.write(b"before")
        client.write(message)
        assert await received.get() == b"before"
        assert await received.get() == message
        assert await events.wait_messages(client, 2) == [b"before", message]
        client.close_soon()
        async with asyncio.timeout(TIMEOUT):
            await client.wait_closed()


async def test_an_open_connection_keeps_no_handshake_headers(harness: DriverHarness) -> None:
    """websockets' parser holds the upgrade request for the connection's life; the driver
    lets go of its headers once read (2 KiB a peer on a server with thousands)."""
    pair = await harness.pair()
    pair.client.write(b"hi")
    await pair.server_events.wait_messages(pair.server, 1)
    gc.collect()
    requests = [o for o in gc.get_objects() if isinstance(o, Request)]
    assert requests  # the server's, still referenced by the parser
    assert all(not request.headers for request in requests)


@pytest.mark.parametrize("socket_class", [WsSocket, TcpSocket])
def test_stream_sockets_have_no_instance_dict(socket_class: type[Socket]) -> None:
    """One socket per peer: slots, not a dict of 1.5 KiB (a subclass without
    ``__slots__`` in the chain would bring the dict back)."""
    assert socket_class.__dictoffset__ == 0
