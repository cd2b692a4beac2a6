"""The conformance suite and memory-only checks for :class:`MemoryDriver`."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import MS
from tests.drivers.conformance import (
    TIMEOUT,
    DriverConformance,
    DriverFactory,
    DriverHarness,
    RecordingListener,
)
from trustp2p.drivers import CloseCode, DriverEvent, DriverOptions, driver_class
from trustp2p.drivers.memory import MemoryDriver, MemoryHub
from trustp2p.exceptions import DriverError


class TestMemoryConformance(DriverConformance):
    scheme = "memory"
    lost_ends_after_held = False

    @pytest.fixture
    def hub(self) -> MemoryHub:
        return MemoryHub()

    @pytest.fixture
    def driver_factory(self, hub: MemoryHub) -> DriverFactory:
        return lambda options: MemoryDriver(options, hub=hub)

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"memory://{self.host}:1"

    @pytest.fixture(
        params=[
            "not a url",
            "ws://127.0.0.1:1",
            "memory://",
            "memory:127.0.0.1:1",
            "memory://[::1",
        ]
    )
    def invalid_url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.param
        return url


class TestMemoryOnly:
    def test_driver_class(self) -> None:
        assert driver_class("memory") is MemoryDriver

    async def test_connect_unknown_address_message(self) -> None:
        driver = MemoryDriver(hub=MemoryHub())
        events = RecordingListener()
        with pytest.raises(DriverError) as exc_info:
            await driver.connect("memory://127.0.0.1:1", events)
        assert str(exc_info.value) == "can't connect to memory://127.0.0.1:1: nothing listens there"
        assert events.records == []

    async def test_connect_invalid_url_message(self) -> None:
        driver = MemoryDriver(hub=MemoryHub())
        with pytest.raises(DriverError) as exc_info:
            await driver.connect("ws://127.0.0.1:1", RecordingListener())
        assert str(exc_info.value) == "invalid memory URL 'ws://127.0.0.1:1'"

    async def test_hubs_are_separate(self) -> None:
        harness = DriverHarness(lambda options: MemoryDriver(options, hub=MemoryHub()), "h")
        try:
            listening, _ = await harness.listen()
            # Each driver from this factory has its own hub: nothing listens there.
            with pytest.raises(DriverError):
                await harness.connect(listening.url)
        finally:
            await harness.aclose()

    async def test_listen_on_fixed_port(self) -> None:
        hub = MemoryHub()
        harness = DriverHarness(lambda options: MemoryDriver(options, hub=hub), "node-a")
        try:
            listening, _ = await harness.listen(port=1107)
            assert listening.url == "memory://node-a:1107"
            client, _ = await harness.connect("memory://node-a:1107")
            assert client.host == "node-a"
        finally:
            await harness.aclose()

    async def test_delay(self) -> None:
        hub = MemoryHub(delay=10 * MS)
        harness = DriverHarness(lambda options: MemoryDriver(options, hub=hub), "127.0.0.1")
        try:
            pair = await harness.pair()
            messages = [b"one", b"", b"three"]
            for message in messages:
                pair.client.write(message)
            pair.server.write(b"back")
            # Not delivered before a yield to the event loop.
            assert pair.server_events.messages(pair.server) == []
            assert pair.client_events.messages(pair.client) == []
            assert await pair.server_events.wait_messages(pair.server, 3) == messages
            assert await pair.client_events.wait_messages(pair.client, 1) == [b"back"]

            # The close travels behind the messages sent before it.
            pair.client.write(b"last")
            pair.client.close_soon(CloseCode.GOING_AWAY, "bye")
            async with asyncio.timeout(TIMEOUT):
                await pair.client.wait_closed()
                await pair.server.wait_closed()
            assert pair.server_events.messages(pair.server) == [*messages, b"last"]
            assert pair.server_events.events(pair.server) == [
                DriverEvent.CONNECTION,
                *[DriverEvent.MESSAGE] * 4,
                DriverEvent.CLOSE,
            ]
            assert (pair.server.close_code, pair.server.close_reason) == (1001, "bye")
            assert (pair.client.close_code, pair.client.close_reason) == (1001, "bye")
        finally:
            await harness.aclose()

    async def test_server_uses_its_own_limits(self) -> None:
        hub = MemoryHub()
        harness = DriverHarness(lambda options: MemoryDriver(options, hub=hub), "127.0.0.1")
        try:
            listening, server_events = await harness.listen(DriverOptions(max_message_size=4))
            client, client_events = await harness.connect(listening.url)
            server = (await server_events.next(DriverEvent.CONNECTION)).socket
            assert server is not None
            server.write(b"12345")  # the client's limit is the default one
            assert await client_events.wait_messages(client, 1) == [b"12345"]
            client.write(b"12345")
            await server_events.next(DriverEvent.ERROR, server)
            async with asyncio.timeout(TIMEOUT):
                await client.wait_closed()
            assert client.close_code == CloseCode.MESSAGE_TOO_BIG
            assert client.close_reason == "message too big"
        finally:
            await harness.aclose()
