"""The conformance suite for :class:`PicowsDriver`, and interop with the ``ws`` driver."""

from __future__ import annotations

import asyncio
import socket as socket_module

import pytest

from tests.drivers.conformance import (
    TIMEOUT,
    DriverConformance,
    DriverFactory,
    RecordingListener,
)
from trustp2p.drivers import CloseCode, DriverEvent, DriverOptions
from trustp2p.drivers.ws import WsDriver

pytest.importorskip("picows", reason="picows isn't installed (pip install 'trustp2p[fast]')")

from trustp2p.drivers.ws_picows import PicowsDriver


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestPicowsConformance(DriverConformance):
    scheme = "ws"

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        return PicowsDriver

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"ws://127.0.0.1:{_closed_port()}"

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
