"""Two nodes sharing one identity (a copied data directory), as a third node meets
them over loopback: it says so at WARNING, and tells the connection it drops why
(found by a new user's test: the original's link swapped to the copy, and the logs
said only "duplicate connection" at DEBUG and INFO)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from trustp2p import Node, Socket
from trustp2p.identity import Identity
from trustp2p.node.twins import CHECKING, DUPLICATE
from trustp2p.protocol.copies import COPY_REASON

from .conftest import wait_for
from .nodes import MakeNode

COPIED = "runs in two processes at once"
PINGS = {"heartbeat_interval": 0.05, "heartbeat_jitter": 0.0, "heartbeat_timeout": 0.2}
SECOND = "connected from another process ("
TOLD = "closed the connection: another process with our peer id"


def said(caplog: pytest.LogCaptureFixture, text: str, level: int) -> int:
    return sum(text in r.getMessage() and r.levelno == level for r in caplog.records)


async def dialling(make_node: MakeNode, identity: Identity, url: str) -> Node:
    """A client node of ``identity`` (a copy of another's) that dials ``url``."""
    node = await make_node(client=True, identity=identity)
    assert node.client is not None
    node.client.connect(url)
    return node


async def original_then_copy(make_node: MakeNode, node: Node) -> Socket:
    """A client of a fresh identity connected to ``node`` (the original), then a copy
    of it dialling ``node`` too: the original's connection at ``node``."""
    assert node.url is not None
    shared = Identity.generate()
    await dialling(make_node, shared, node.url)
    await wait_for(lambda: len(node.sockets) == 1)
    link = node.sockets[0]
    await dialling(make_node, shared, node.url)  # the copy
    return link


async def test_a_copy_displacing_the_original_is_said_at_both(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The new user's case: the node dialled the original; the copy dials the node,
    and (by the ids) its connection stays. The original is told why its link went."""
    caplog.set_level(logging.INFO)
    shared = Identity.generate()
    third = Identity.generate()
    while not shared.peer_id < third.peer_id:  # the copy's dial displaces the original
        third = Identity.generate()
    original = await make_node(server=True, identity=shared)
    node = await make_node(server=True, client=True, identity=third)
    assert node.client is not None and original.url is not None and node.url is not None
    node.client.connect(original.url)
    await wait_for(lambda: len(original.sockets) == 1)
    link = original.sockets[0]
    await dialling(make_node, shared, node.url)  # the copy
    async with asyncio.timeout(5):
        await link.wait_closed()
    assert (link.close_code, link.close_reason) == (1000, COPY_REASON)
    await wait_for(lambda: said(caplog, TOLD, logging.WARNING) == 1)
    assert said(caplog, SECOND, logging.INFO) == 1
    assert node.sockets[0].inbound and node.sockets[0].peer_id == shared.peer_id


async def test_a_copy_refused_while_the_original_talks_is_proof(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The original's connection stays (it came first; both dialled the node): the
    copy's dials are refused, as plain duplicates until the original is heard from
    after the copy came; then the node says two processes share the identity, once,
    and tells the copy why, which says so once (review35: at each redial)."""
    caplog.set_level(logging.INFO)
    node = await make_node(server=True, **PINGS)  # (the original answers)
    link = await original_then_copy(make_node, node)
    await wait_for(lambda: said(caplog, COPIED, logging.WARNING) == 1)
    refused = f"closed (1000 {COPY_REASON}); redialling"
    await wait_for(lambda: said(caplog, refused, logging.INFO) >= 3)
    assert node.sockets == [link]  # the original's stays
    assert said(caplog, TOLD, logging.WARNING) == 1  # at the copy, the first time
    assert said(caplog, TOLD, logging.INFO) >= 2  # then at INFO
    assert said(caplog, SECOND, logging.INFO) == 1
    assert said(caplog, COPIED, logging.WARNING) == 1


async def test_a_restart_whose_old_link_lingers_is_let_in_once_it_is_found_dead(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """tester39 F9: a node restarted while its old link lingers at the server (its host
    vanished: nothing reached the server) was refused "duplicate connection" until the
    server's heartbeat found the old link dead (20 s + 10 s by default), its backoff
    growing meanwhile. The server now probes the old link at once: no pong within the
    probe's time (here the 1 s response timeout) drops it, and the restart, told when
    to try again, is in then. Not a copy: no WARNING, nor the copy's reason (review35)."""
    caplog.set_level(logging.INFO)
    shared = Identity.generate()
    # (No heartbeat round in the test's time: the probe checks when its time is up.)
    server = await make_node(server=True, heartbeat_response_timeout=1.0, heartbeat_interval=60.0)
    assert server.url is not None
    relay = FreezableRelay(int(server.url.rsplit(":", 1)[1]))
    port = await relay.start()
    try:
        old = await make_node(client=True, identity=shared)
        assert old.client is not None
        old.client.connect(f"ws://127.0.0.1:{port}")
        await wait_for(lambda: len(server.sockets) == 1)
        lingering = server.sockets[0]
        relay.frozen = True  # the old host vanishes...
        await old.stop()  # ...and nothing of its stop reaches the server
        new = await make_node(client=True, identity=shared)  # the restart
        assert new.client is not None
        new.client.connect(server.url)
        refused = f"closed (1000 {DUPLICATE}: {CHECKING}: try again in 2 s); redialling in"
        await wait_for(lambda: said(caplog, refused, logging.INFO) == 1)
        await wait_for(lambda: lingering.closed and len(new.sockets) == 1, timeout=10.0)
        assert lingering.close_reason == "no close frame received; sent 1001 lost peer"
        assert said(caplog, "lost peer: no pong within 1 s", logging.WARNING) == 1
        assert said(caplog, refused, logging.INFO) == 1  # let in at the first redial
        assert said(caplog, COPY_REASON, logging.INFO) == 0
        assert said(caplog, COPY_REASON, logging.WARNING) == 0
        assert said(caplog, TOLD, logging.WARNING) == 0
        assert said(caplog, COPIED, logging.WARNING) == 0
        assert said(caplog, SECOND, logging.INFO) == 1
    finally:
        relay.close()


async def test_a_live_old_link_answers_the_probe_and_stays(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """tester39 F9's probe, on a copy: the original's connection answers the ping at
    once and stays; the copy, told to try again, is then refused as a copy (the
    answer proves both processes alive) without waiting for the original to talk."""
    caplog.set_level(logging.INFO)
    node = await make_node(server=True, heartbeat_response_timeout=1.0)
    link = await original_then_copy(make_node, node)
    await wait_for(lambda: link.stats.last_rtt is not None)  # the probe's pong
    await wait_for(lambda: said(caplog, COPIED, logging.WARNING) == 1, timeout=10.0)
    assert node.sockets == [link] and not link.closed
    assert said(caplog, f"{CHECKING}: try again in 2 s); redialling in", logging.INFO) == 1
    assert said(caplog, "lost peer", logging.WARNING) == 0


class FreezableRelay:
    """A TCP relay that can lose its client silently: once frozen it forwards nothing
    and keeps its connection to the server open (review35's)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.frozen = False
        self.kept: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.frozen:
            data = await reader.read(65536)
            if not data or self.frozen:
                return
            writer.write(data)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.kept += [up_writer, writer]
        pumps = (self._pump(reader, up_writer), self._pump(up_reader, writer))
        await asyncio.gather(*pumps, return_exceptions=True)

    def close(self) -> None:
        self.server.close()
        for writer in self.kept:
            writer.close()


async def test_a_restarted_peer_is_no_copy(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A node stopped and started again (a new static key) connects as before, and
    nothing is said of another process: its old connection closed first."""
    caplog.set_level(logging.INFO)
    shared = Identity.generate()
    server = await make_node(server=True)
    assert server.url is not None
    for _ in range(2):
        peer = await make_node(client=True, identity=shared)
        assert peer.client is not None
        peer.client.connect(server.url)
        await wait_for(lambda: len(server.sockets) == 1)
        await peer.stop()
        await wait_for(lambda: not server.sockets)
    assert said(caplog, "another process", logging.INFO) == 0
    assert said(caplog, TOLD, logging.WARNING) == 0
    assert said(caplog, COPIED, logging.WARNING) == 0
