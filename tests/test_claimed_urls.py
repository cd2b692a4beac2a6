"""Over loopback, with the default options: a peer that announces another server's URL
as its own (its host's other port) can't hide that server from a client that hears of
it from an honest peer (attacker36 F3, the second form, at small scale)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from trustp2p import Node

from .nodes import MakeNode, node_factory, wait_for
from .processes import free_port


@pytest.fixture
async def make_default() -> AsyncIterator[MakeNode]:
    """Nodes with the default options (on ephemeral ports), stopped after the test."""
    async for make in node_factory({}):
        yield make


async def owner_of(node: Node, url: str) -> str | None:
    """The peer id of the store record holding ``url`` (None: unknown, or no record)."""
    assert node.store is not None
    return next((r.peer_id for r in await node.store.peers() if url in r.urls), None)


async def test_a_url_another_peer_claimed_is_dialled_when_an_honest_peer_names_it(
    make_default: MakeNode,
) -> None:
    # G: an honest server; H: an honest node that dials G and announces its URL there.
    good = await make_default(server=True)
    assert good.url is not None
    honest = await make_default(server=True, client=True, peers=[good.url])
    assert honest.url is not None and honest.peer_id is not None and honest.client is not None
    await honest.client.wait_connected()
    await wait_for(lambda: any(c.listen_urls for c in good.connections), timeout=10)
    # A: a server announcing H's URL (on its own host) as its own.
    attacker = await make_default(server=True, listen_urls=[honest.url])
    assert attacker.url is not None and attacker.peer_id is not None
    client = await make_default(client=True, peers=[attacker.url])
    assert client.client is not None and client.store is not None
    await client.client.wait_connected()
    await wait_for(lambda: client.store is not None and client.store.knows_url(honest.url or ""))
    assert await owner_of(client, honest.url) == attacker.peer_id  # A's claim, first
    # The client meets G, which passes H's URL on (get_peers, asked at once).
    client.client.connect(good.url)
    # Before the fix, the URL stayed A's, a peer connected: never dialled.
    await wait_for(lambda: client.socket_for_peer(honest.peer_id or "") is not None, timeout=15)
    await wait_for(lambda: client.store is not None and client.store.peer_id_of(honest.url or ""))
    assert client.store.peer_id_of(honest.url) == honest.peer_id


async def test_an_honest_servers_other_url_costs_one_dial_and_is_proven(
    make_default: MakeNode,
) -> None:
    # The price of the rule: a server announcing two URLs, the one not dialled passed
    # on by another peer, is dialled there once; the client's dial, a duplicate, is
    # refused, and its store now knows who answers there (not dialled again).
    good = await make_default(server=True)
    assert good.url is not None
    port = free_port()
    other, dialled = f"ws://localhost:{port}", f"ws://127.0.0.1:{port}"
    # (localhost first: a peer passes on one URL per scheme of each peer it knows.)
    server = await make_default(
        server=True, client=True, port=port, peers=[good.url], listen_urls=[other, dialled]
    )
    assert server.client is not None and server.peer_id is not None
    await server.client.wait_connected()
    await wait_for(lambda: any(c.listen_urls for c in good.connections), timeout=10)
    client = await make_default(client=True, peers=[dialled])
    assert client.client is not None and client.store is not None
    await client.client.wait_connected()
    await wait_for(lambda: client.store is not None and client.store.knows_url(other))
    assert await owner_of(client, other) == server.peer_id  # claimed
    client.client.connect(good.url)
    await wait_for(
        lambda: client.store is not None and client.store.verified_peer_id(other), timeout=15
    )
    assert client.store.verified_peer_id(other) == server.peer_id  # proven by the dial
    assert await owner_of(client, other) == server.peer_id
    assert client.socket_for_peer(server.peer_id) is not None
    assert client.client.dialer.policy.known_peer(other, client.store) == server.peer_id
