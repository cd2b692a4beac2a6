"""
Rate limits slow, they don't punish, over loopback: a client far over its request budget
against a server with the default options gets every answer; a peer that reconnects in
a storm is refused new connections for the cooldown, then let in again.

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from trustp2p import EventMap, Package, PackageType, Socket, Thread
from trustp2p.protocol.refusal_notices import NOTICE_BURST
from trustp2p.storage.peerstore import PeerSource

from .conftest import stays
from .nodes import MakeNode, node_factory, wait_for


@pytest.fixture
async def make_default() -> AsyncIterator[MakeNode]:
    """Nodes with the default options (on ephemeral ports), stopped after the test."""
    async for make in node_factory({}):
        yield make


class Work(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"work": self.work}}

    def work(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"n": package.body["n"]}


# About real time passing: the default request budget paces 1,000 requests over about
# 8 s. With the slow tests (`pytest -m slow`, which .ci/run and `make test` run too).
@pytest.mark.slow
async def test_1000_requests_outstanding_against_a_default_server_are_all_answered(
    make_default: MakeNode, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # About real time: 1,000 requests against the default budget (100/s, burst 200)
    # take 8 s; the server reads them as the budget refills.
    caplog.set_level(logging.DEBUG, logger="trustp2p.node")
    server = await make_default(server=True, threads=[Work])
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    answers = await asyncio.gather(
        *(client.client.request(socket, "work", {"n": n}) for n in range(1000))
    )
    assert answers == [{"n": n} for n in range(1000)]  # no error answer among them
    assert any("over the request budget: reading paused" in r.message for r in caplog.records)
    assert not socket.closed
    served = server.server.sockets[0]
    assert served.stats.invalid_in == 0
    assert server.store is not None and not server.store.is_blocked(peer_id=served.peer_id)
    assert client.peer_id is not None and not server.store.is_blocked(peer_id=client.peer_id)


DROPPED = (None, "dropped")


async def knock(url: str) -> tuple[int | None, str | None]:
    """Open a plain WebSocket connection and close it; how the server closed it, if
    it did before we closed it (``(None, None)``: it let us in; :data:`DROPPED`: it
    closed the connection before the upgrade, untold)."""
    try:
        ws = await connect(url, compression=None)
    except websockets.exceptions.InvalidMessage:
        return DROPPED
    async with ws:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed, TimeoutError):
            async with asyncio.timeout(0.05):  # a refusal comes right after the upgrade
                while True:
                    await ws.recv()
        if ws.close_code is not None:
            return ws.close_code, ws.close_reason
    return None, None


async def test_a_reconnect_storm_is_refused_then_let_in_after_the_cooldown(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Plain mode, loopback counted like any address (limit_loopback), the per-address
    # rate out of the way: the storm rule alone, with its default count and window and a
    # short cooldown.
    server = await make_node(
        server=True,
        secure=False,
        limit_loopback=True,
        ip_rate=1000.0,
        ip_burst=1000,
        max_per_ip=None,
        storm_cooldown=1.0,
    )
    assert server.url is not None
    start = asyncio.get_running_loop().time()
    outcomes = await asyncio.gather(*(knock(server.url) for _ in range(50)))
    # All within the storm window (10 s by default), or the rule has nothing to count.
    assert asyncio.get_running_loop().time() - start < 10.0
    refused = [o for o in outcomes if o != (None, None)]
    assert len(refused) == 50 - 19
    # The first refused are told why; the others, from the same address at once, are
    # dropped before their upgrade (RefusalNotices).
    told = [o for o in refused if o != DROPPED]
    assert len(told) == NOTICE_BURST
    assert {code for code, _ in told} == {1013}
    assert all(reason and reason.startswith("reconnecting too often") for _, reason in told)
    warnings = [r for r in caplog.records if "reconnecting too often" in r.message]
    assert len([r for r in warnings if r.levelno == logging.WARNING]) == 1  # one per storm
    # Within the cooldown a well-behaved client is refused too (untold: its address
    # was told a moment ago)...
    assert await knock(server.url) == DROPPED
    # ...and let in once it is over.
    await asyncio.sleep(1.0)  # about real time: the cooldown
    client = await make_node(client=True, secure=False, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    assert await stays(lambda: not socket.closed, 0.05)


async def test_a_peer_reconnecting_in_a_storm_is_refused_by_its_peer_id(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Secure mode on loopback (addresses exempt): the storm counts the peer id its
    handshake proved; other peers on the same address are not touched."""
    caplog.set_level(logging.INFO, logger="trustp2p.node")
    server = await make_node(server=True, storm_connections=3, storm_cooldown=1.0)
    other = await make_node(client=True, peers=[server.url])
    assert other.client is not None
    await other.client.wait_connected()
    kept = other.client.sockets[0]
    client = await make_node(client=True, peers=[server.url], reconnect_initial=0.01)
    role = client.client
    assert role is not None
    for _ in range(2):  # two connections closed at once; the third makes a storm
        await wait_for(lambda: bool(role.sockets) and not role.sockets[0].closed)
        await role.sockets[0].close()
    await wait_for(lambda: "closed (1013 reconnecting too often" in caplog.text)
    refused_at = asyncio.get_running_loop().time()
    # Refused until the cooldown is over; it redials when the refusal says to, once
    # (it redialled every 0.1 s at most, each a refused handshake on both sides).
    assert client.peer_id is not None
    peer_id = client.peer_id
    await wait_for(lambda: server.connections.by_peer_id(peer_id) is not None)
    assert asyncio.get_running_loop().time() - refused_at > 0.9
    assert not kept.closed
    redials = [
        r.getMessage() for r in caplog.records
        if r.name == "trustp2p.node.dialer" and "reconnecting too often" in r.getMessage()
    ]  # fmt: skip
    assert len(redials) == 1 and redials[0].endswith("try again in 1 s); redialling in 1.0 s")


async def test_a_server_that_refuses_us_is_not_redialled_at_once(
    make_default: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbound manager's dial of a plain server that is full: refused after the
    upgrade (the connection opens, then closes with 1013). It waits like a failed dial
    (1 s, then 2, 4, ...); before, it redialled at once, 450 times a second, and would
    have made a reconnect storm."""
    caplog.set_level(logging.INFO, logger="trustp2p.node")
    server = await make_default(server=True, secure=False, max_inbound=0)
    client = await make_default(client=True, secure=False)
    assert client.store is not None and client.client is not None and server.url
    await client.store.add_urls([server.url], PeerSource.EXCHANGE)
    client.client.wake()

    def refusals() -> int:
        return sum(r.getMessage().startswith("! refused") for r in caplog.records)

    await wait_for(lambda: refusals() >= 1)
    client.client.wake()  # another round at once: the URL waits its retry delay
    assert await stays(lambda: refusals() == 1, 0.5)


async def test_a_server_that_takes_no_peer_says_so_at_start(
    make_default: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a tester (tester37 F9): ``max_inbound = 0`` started a server that
    refused every peer without a word at start."""
    caplog.set_level(logging.WARNING, logger="trustp2p.node")
    await make_default(server=True, max_inbound=0)
    assert any("max_inbound is 0: this server refuses every peer" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    caplog.clear()
    await make_default(server=True)
    assert not any("max_inbound" in r.getMessage() for r in caplog.records)


async def test_a_client_refused_for_its_address_says_so_at_warning(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """tester38 F1: the ninth client behind one NAT (max_per_ip) was refused and
    redialled, said at INFO only: a library client showed nothing."""
    caplog.set_level(logging.INFO, logger="trustp2p.node.dialer")
    server = await make_node(server=True, max_per_ip=1, limit_loopback=True)
    first = await make_node(client=True, peers=[server.url])
    assert first.client is not None
    await first.client.wait_connected()
    await make_node(client=True, peers=[server.url])
    said = "(1013 too many connections from your address (limit 1)); redialling in"
    await wait_for(lambda: said in caplog.text)
    assert all(r.levelno == logging.WARNING for r in caplog.records if said in r.getMessage())
