"""
Prune backoffs between real nodes over loopback, with the default options: honest nodes
that part on a topic don't graft each other early (so nobody is penalised), and a peer
that grafts again and again within its backoff gets no answer and is penalised, mildly
(attacker27 F8).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from trustp2p import Node, Package, PackageType, Socket
from trustp2p.node.gossip import Gossip
from trustp2p.protocol.gossip import GRAFT, PRUNE
from trustp2p.protocol.package import build_package

from .nodes import MakeNode, node_factory, wait_for

TOPIC = "news"


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """Nodes with the default options (on ephemeral ports), stopped after the test."""
    async for make in node_factory({}):
        yield make


def _gossip(node: Node) -> Gossip:
    assert node.gossip is not None
    return node.gossip


def _only_socket(node: Node) -> Socket:
    [socket] = node.sockets
    return socket


async def _pair(make_node: MakeNode) -> tuple[Node, Node, Socket, Socket]:
    """A server and a client, both in each other's mesh of TOPIC; and their sockets,
    the server's to the client and the client's to the server."""
    server = await make_node(server=True)
    assert server.url is not None
    client = await make_node(client=True, peers=[server.url])
    await wait_for(lambda: len(server.sockets) == 1 and len(client.sockets) == 1)
    to_client, to_server = _only_socket(server), _only_socket(client)
    server.subscribe(TOPIC)
    client.subscribe(TOPIC)
    await wait_for(lambda: to_client.id in _gossip(server).router.mesh[TOPIC])
    await wait_for(lambda: to_server.id in _gossip(client).router.mesh[TOPIC])
    # Each may have grafted the other too (both saw a subscription): a message each way
    # makes sure those grafts arrived, before a test prunes (a graft that crosses a
    # prune arrives early; that's allowed once, but would muddle the counts here).
    await _flush(server, client)
    await _flush(client, server)
    return server, client, to_client, to_server


async def _flush(sender: Node, receiver: Node) -> None:
    """Wait until ``receiver`` has read what ``sender`` sent it so far."""
    got: list[str] = []
    receiver.subscribe(TOPIC, lambda message: got.append(message.id))
    sent = await sender.publish(TOPIC, {"flush": True})
    await wait_for(lambda: sent in got)


async def test_honest_nodes_that_part_on_a_topic_dont_graft_early(make_node: MakeNode) -> None:
    server, client, to_client, to_server = await _pair(make_node)
    got: list[str] = []
    delivered: list[str] = []
    server.subscribe(TOPIC, lambda message: got.append(message.id))
    client.unsubscribe(TOPIC)  # prunes the server...
    client.subscribe(TOPIC, lambda message: delivered.append(message.id))  # ...back at once
    first = await client.publish(TOPIC, {"n": 1})  # sent after the subscription talks
    await wait_for(lambda: first in got)  # so the server has read them all
    # Neither grafts the other within the backoff (before, the server grafted the client
    # at once, on its subscription), yet messages flow: an empty mesh falls back to
    # every subscribed peer.
    assert to_client.id not in _gossip(server).router.mesh[TOPIC]
    assert to_server.id not in _gossip(client).router.mesh[TOPIC]
    second = await server.publish(TOPIC, {"n": 2})
    await wait_for(lambda: second in delivered)
    for node, socket in ((server, to_client), (client, to_server)):
        assert _gossip(node).router.stats.early_grafts == 0
        assert socket.stats.invalid_in == 0


def _talk(event: str) -> Package:
    return build_package(PackageType.TALK, event, {"topics": [TOPIC]})


async def test_grafts_within_the_backoff_go_unanswered_and_the_second_is_penalised(
    make_node: MakeNode,
) -> None:
    server, client, to_client, to_server = await _pair(make_node)
    router = _gossip(server).router
    for _ in range(10):  # good packages, which one invalid one among doesn't outweigh
        await _flush(client, server)
    client.send_package(to_server, _talk(PRUNE))  # it leaves the server's mesh...
    await wait_for(lambda: to_client.id not in router.mesh[TOPIC])
    client.send_package(to_server, _talk(GRAFT))  # ...and grafts again at once: early
    await wait_for(lambda: router.stats.early_grafts == 1)
    assert to_client.stats.invalid_in == 0  # an older node may do this once: not held
    client.send_package(to_server, _talk(GRAFT))  # twice: penalised, as invalid input
    await wait_for(lambda: to_client.stats.invalid_in == 1)
    assert router.stats.early_grafts == 2
    assert to_client.id not in router.mesh[TOPIC]
    # No PRUNE answered either: the client's router would have let the server go.
    delivered: list[str] = []
    client.subscribe(TOPIC, lambda message: delivered.append(message.id))
    sent = await server.publish(TOPIC, {"n": 1})  # after any answer, on that connection
    await wait_for(lambda: sent in delivered)
    assert to_server.id in _gossip(client).router.mesh[TOPIC]
    assert not to_client.closed  # one invalid package among many good ones: no block
    assert to_server.stats.invalid_in == 0
