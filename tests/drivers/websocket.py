"""What the conformance suites of the WebSocket drivers (``ws``, ``picows``) share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from trustp2p.drivers import Driver, DriverEvent, DriverOptions

from ..conftest import MS
from ..processes import free_port
from .conformance import TIMEOUT, DriverHarness


class WebSocketUrls:
    """The URL fixtures of :class:`~tests.drivers.conformance.DriverConformance` for a
    ``ws://`` driver: mix in before it."""

    scheme = "ws"

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"ws://127.0.0.1:{free_port()}"  # free a moment ago: nothing listens

    @pytest.fixture(
        params=[
            "not a url",
            "http://127.0.0.1:1/",
            "memory://127.0.0.1:1",
            "ws://",
            "ws://127.0.0.1:1/#fragment",
            "ws://127.0.0.1:99999/",
            "ws://127.0.0.1:port/",
            "ws://[::1",
        ]
    )
    def invalid_url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.param
        return url


class WebSocketChecks:
    """Checks of a ``ws://`` driver beyond the conformance suite, the same for each:
    subclass it as ``Test...`` in a module that defines the ``harness`` fixture."""

    async def test_handshake_timeout_drops_client(self, harness: DriverHarness) -> None:
        listening, events = await harness.listen(DriverOptions(open_timeout=50 * MS))
        host, port = listening.url.removeprefix("ws://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET / HTTP/1.1\r\n")  # and never the rest
            async with asyncio.timeout(TIMEOUT):
                assert await reader.read() == b""  # dropped by the server
        finally:
            writer.close()
            await writer.wait_closed()
        assert [record.event for record in events.records] == [DriverEvent.START]

    async def test_last_seen_advances_on_a_partial_frame(self, harness: DriverHarness) -> None:
        """Any bytes are life: a large frame in flight keeps its sender alive (liveness)."""
        listening, events = await harness.listen()
        async with ws_connect(listening.url) as client:
            server = (await events.next(DriverEvent.CONNECTION)).socket
            assert server is not None
            before = server.last_seen
            await asyncio.sleep(MS)  # let the event loop clock move on
            # Half of a masked binary frame of 1000 bytes (mask key 0: the payload as is).
            header = b"\x82" + bytes([0x80 | 126]) + (1000).to_bytes(2, "big") + b"\0\0\0\0"
            client.transport.write(header + b"x" * 500)
            async with asyncio.timeout(TIMEOUT):
                while server.last_seen <= before:  # noqa: ASYNC110 - a plain attribute
                    await asyncio.sleep(MS)
            assert events.messages(server) == []
            client.transport.write(b"x" * 500)
            assert await events.wait_messages(server, 1) == [b"x" * 1000]


def harness_fixture(driver: type[Driver]) -> Callable[[], Any]:
    """A ``harness`` fixture: a :class:`DriverHarness` of ``driver`` on 127.0.0.1, closed
    after the test. A module assigns it: ``harness = harness_fixture(WsDriver)``."""

    @pytest.fixture
    async def harness() -> AsyncIterator[DriverHarness]:
        made = DriverHarness(driver, "127.0.0.1")
        try:
            yield made
        finally:
            await made.aclose()

    return harness
