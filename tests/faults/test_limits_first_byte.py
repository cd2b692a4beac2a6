"""
Limits from the first byte, against a real ``python -m trustp2p`` process with its
default options: connections that never finish their HTTP upgrade or their Noise
handshake count against ``max_inbound`` (100) from TCP accept, the oldest make room for
an honest client, and the handshake deadline ends them; a plain node that dials itself
lets go instead of staying connected to itself.

"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from trustp2p import Node
from trustp2p.identity import Identity
from trustp2p.protocol.handshake import HANDSHAKE_MAGIC
from trustp2p.security.noise import NoiseHandshake

from ..processes import Spawned, free_port


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[Spawned]]:
    processes: list[Spawned] = []
    yield processes
    for process in processes:
        process.stop()
        assert "Traceback" not in process.output, process.output


async def start_server(spawn: list[Spawned], tmp_path: Path, *args: str) -> str:
    port = free_port()
    cwd = tmp_path / f"server-{port}"
    cwd.mkdir()
    server = Spawned("server", "--cwd", str(cwd), "--port", str(port), *args)
    spawn.append(server)
    await server.wait_for("= node started")
    return f"ws://127.0.0.1:{port}"


class Raw:
    """A TCP connection that never sends its HTTP upgrade."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def dropped(self, timeout: float = 3.0) -> bool:
        """Whether the server ends the connection within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw_connections(url: str, count: int) -> AsyncIterator[list[Raw]]:
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    raws: list[Raw] = []
    try:
        for _ in range(count):
            raws.append(Raw(*await asyncio.open_connection(host, int(port))))
        yield raws
    finally:
        for raw in raws:
            raw.close()


@contextlib.asynccontextmanager
async def honest_client(url: str) -> AsyncIterator[Node]:
    """An in-process client with the default options, connected to ``url``."""
    async with Node(client=True, peers=[url]) as client:
        assert client.client is not None
        async with asyncio.timeout(5):
            await client.client.wait_connected()
        yield client


async def test_upgrades_never_finished_count_from_accept(
    spawn: list[Spawned], tmp_path: Path
) -> None:
    url = await start_server(spawn, tmp_path)
    async with raw_connections(url, 200) as raws:
        # The server holds 100 at most: each of the last 100 pushed the oldest out.
        dropped = await asyncio.gather(*(raw.dropped() for raw in raws[:100]))
        assert all(dropped)
        async with honest_client(url) as client:
            # It took the slot of the oldest raw connection left, and stays.
            assert await raws[100].dropped()
            assert client.client is not None
            [server] = client.client.sockets
            assert await client.client.request(server, "get_peers", {}) == {"peers": []}
    assert "inbound connections maxed out, and its handshake was the oldest" in spawn[0].output


async def test_the_handshake_deadline_ends_unfinished_upgrades(
    spawn: list[Spawned], tmp_path: Path
) -> None:
    url = await start_server(spawn, tmp_path, "--handshake-timeout", "0.5")
    async with raw_connections(url, 150) as raws:
        dropped = await asyncio.gather(*(raw.dropped() for raw in raws))
        assert all(dropped)  # the oldest 50 pushed out, the other 100 at 0.5 s
        async with honest_client(url) as client:
            assert client.client is not None and client.client.sockets


async def half_finished_noise(url: str) -> ClientConnection:
    """Upgrade, send Noise message 1, read message 2, and stop there."""
    ws = await connect(url, compression=None)
    noise = NoiseHandshake(Identity.generate(), initiator=True)
    await ws.send(HANDSHAKE_MAGIC + noise.write_message())
    await ws.recv()
    return ws


async def test_half_finished_noise_handshakes_make_room(
    spawn: list[Spawned], tmp_path: Path
) -> None:
    url = await start_server(spawn, tmp_path)
    stalled = [await half_finished_noise(url) for _ in range(100)]
    try:
        # Every slot is held by a handshake that will never finish; an honest client
        # still connects (the original code answered it 1013 "maxed out").
        async with honest_client(url) as client:
            assert client.client is not None and client.client.sockets
        await stalled[0].wait_closed()
    finally:
        for ws in stalled:
            ws.transport.abort()


async def test_a_plain_node_that_dials_itself_lets_go(spawn: list[Spawned], tmp_path: Path) -> None:
    port = free_port()
    node = Spawned(
        "node",
        "--insecure",
        "--cwd",
        str(tmp_path),
        "--port",
        str(port),
        "--connect",
        f"ws://127.0.0.1:{port}",
    )
    spawn.append(node)
    await node.wait_for("is this node: dialled again only every 60 s")
    # Real time passing: the default reconnect_initial (1 s) would have redialled twice
    # in 2.5 s (it did before); now reconnect_max (60 s). The original stayed connected
    # to itself.
    await asyncio.sleep(2.5)
    lines = node.output.splitlines()
    dials = [line for line in lines if line.endswith(f"[ws://127.0.0.1:{port}] = connected")]
    closes = [line for line in lines if "connection closed (1000 dialled ourselves)" in line]
    assert len(dials) == 1, node.output
    assert len(closes) == 2, node.output  # both ends
