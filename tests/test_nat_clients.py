"""
Many clients behind one address, over loopback with default options but ``max_per_ip``
raised (as docs/deploy.md advises for a NAT) and ``limit_loopback`` (so that loopback
counts as one address): after a server restart they all come back at once (tester39 F1:
``ip_burst`` 16 and an address's ``storm_connections`` 20 kept 14 of 30 out 60-110 s).

"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trustp2p import Node

from .conftest import MS
from .nodes import MakeNode, node_factory, wait_for

CLIENTS = 20  # more than ip_burst (16) and storm_connections (20) let in at once


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """Nodes with the default options (on ephemeral ports), stopped after the test."""
    async for make in node_factory({}):
        yield make


def connected(clients: list[Node]) -> int:
    return sum(1 for c in clients if c.client is not None and len(c.client.sockets) == 1)


async def test_clients_behind_one_address_all_come_back_after_a_server_restart(
    make_node: MakeNode, tmp_path: Path
) -> None:
    # The same identity after the restart (its cwd); loopback counts as one address.
    limits = {"cwd": tmp_path, "name": "hub", "limit_loopback": True, "max_per_ip": 32}
    # Filled with relaxed limits, so that the restart is the event measured (a cold start
    # is the same to the server: tests/protocol/test_shared_address.py).
    server = await make_node(server=True, ip_burst=1000, storm_connections=None, **limits)
    assert server.url is not None
    port = int(server.url.rsplit(":", 1)[1])
    clients = [await make_node(client=True, peers=[server.url]) for _ in range(CLIENTS)]
    await wait_for(lambda: connected(clients) == CLIENTS, 20_000 * MS)
    await server.stop()
    await wait_for(lambda: connected(clients) == 0)
    again = await make_node(server=True, port=port, **limits)
    # The default back-off redials within a few seconds; before, the 17th and later
    # were refused, and the 20th dial put the address in a 60 s cooldown.
    assert again.server is not None
    server_side = again.server
    await wait_for(lambda: connected(clients) == len(server_side.sockets) == CLIENTS, 20_000 * MS)
    assert again.metrics.inbound_refused == {}
