"""The fast path: uvloop as the event loop (``trustp2p.run``, ``--loop``), and the
picows driver between nodes, talking to the websockets-based ``ws`` driver."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
from click.testing import CliRunner

from trustp2p import EventMap, Node, NodeOptions, Package, PackageType, Socket, Thread, run
from trustp2p.cli import cli
from trustp2p.drivers import driver_class
from trustp2p.exceptions import DriverError, UsageError
from trustp2p.loop import loop_clock
from trustp2p.security.channel import SecureSocket

from .nodes import MakeNode


class Echo(Thread):
    """Answers ``echo`` requests with their body."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self.echo}}

    def echo(self, socket: Socket, package: Package) -> Any:
        return package.body


async def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


# The event loop


def test_run_on_asyncio_and_uvloop() -> None:
    pytest.importorskip("uvloop")
    assert run(_loop_name()) == "asyncio"
    assert run(_loop_name(), loop="uvloop") == "uvloop"


async def _clock_of_running_loop() -> tuple[bool, float, float, float]:
    loop = asyncio.get_running_loop()
    clock = loop_clock(loop)
    before, now, after = loop.time(), clock(), loop.time()
    return clock is time.monotonic, before, now, after


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_loop_clock_is_the_loops_time(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    direct, before, now, after = run(_clock_of_running_loop(), loop=loop)
    # asyncio's loop.time() is time.monotonic(), read directly; uvloop's is its own.
    assert direct is (loop == "asyncio")
    assert before <= now <= after


async def test_a_loop_time_patched_on_the_instance_is_the_loop_clock() -> None:
    loop = asyncio.get_running_loop()
    loop.time = lambda: 12345.0  # type: ignore[method-assign] # as a test's fake clock
    try:
        assert loop_clock(loop)() == 12345.0
    finally:
        del loop.time  # type: ignore[method-assign]


def test_unknown_loop_is_a_usage_error() -> None:
    main = _loop_name()
    with pytest.raises(UsageError, match="unknown event loop 'trio'"):
        run(main, loop="trio")
    assert main.cr_frame is None  # closed, not left "never awaited"


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make packages impossible to import, as if they weren't installed."""

    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
        # Modules that imported them load again, and fail.
        monkeypatch.delitem(sys.modules, "trustp2p.drivers.ws_picows", raising=False)

    return hide


def test_uvloop_missing_is_a_clear_error(without: Any) -> None:
    without("uvloop")
    with pytest.raises(
        UsageError, match=r"needs the uvloop package \(trustp2p's fast extra\): pip install uvloop"
    ):
        run(_loop_name(), loop="uvloop")
    result = CliRunner().invoke(cli, ["demo", "--loop", "uvloop"])
    assert result.exit_code == 2
    assert "needs the uvloop package" in result.output


def test_picows_missing_is_a_clear_error(without: Any) -> None:
    without("picows")
    with pytest.raises(
        DriverError, match=r"needs the picows package \(trustp2p's fast extra\): pip install picows"
    ):
        driver_class("picows")
    with pytest.raises(DriverError, match="needs the picows package"):
        NodeOptions(server=True, driver="picows")
    result = CliRunner().invoke(cli, ["server", "--driver", "picows", "--port", "0"])
    assert result.exit_code == 2
    assert "needs the picows package" in result.output
    # The default install doesn't need it.
    assert driver_class("ws").__name__ == "WsDriver"


# The picows driver between nodes


def _raw(socket: Socket) -> Socket:
    """The driver's socket under a secure channel's."""
    return socket.raw if isinstance(socket, SecureSocket) else socket


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
@pytest.mark.parametrize(
    ("server_driver", "client_driver"),
    [("picows", "ws"), ("ws", "picows"), ("picows", "picows")],
)
async def test_picows_node_talks_to_a_ws_node(
    make_node: MakeNode, server_driver: str, client_driver: str, secure: bool
) -> None:
    pytest.importorskip("picows")
    server: Node = await make_node(server=True, driver=server_driver, secure=secure, threads=[Echo])
    client: Node = await make_node(
        client=True, driver=client_driver, secure=secure, peers=[server.url], threads=[Echo]
    )
    assert server.url.startswith("ws://")
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    outbound, inbound = client.client.sockets[0], server.server.sockets[0]
    expected = {"picows": "PicowsSocket", "ws": "WsSocket"}
    assert type(_raw(outbound)).__name__ == expected[client_driver]
    assert type(_raw(inbound)).__name__ == expected[server_driver]
    for body in ({"x": 1}, {"big": "y" * 300_000}):
        assert await client.client.request(outbound, "echo", body, timeout=5) == body
        assert await server.server.request(inbound, "echo", body, timeout=5) == body
    await client.stop()
    async with asyncio.timeout(5):
        await inbound.wait_closed()
    assert inbound.close_code == 1001  # going away
