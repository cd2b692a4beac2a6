"""A node's wall clock against its peers' (``trustp2p.node.clock_watch``), over real
loopback connections with default options: found by a tester, a node two days off
dropped gossip (its peers', or they its own) and never said its clock was the cause."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trustp2p import Node
from trustp2p.admin.collector import node_registry
from trustp2p.admin.status import TopicRates, node_status
from trustp2p.protocol.clocks import LEAST_CLOCKS, TIME_KEY

from .nodes import FAST, MakeNode, wait_for

DAY = 86_400.0


def ahead(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def clients_off_by(url: str, seconds: float, count: int) -> list[Node]:
    """``count`` clients of ``url`` (default options), their wall clocks ``seconds`` off."""
    clients = []
    for _ in range(count):
        client = Node(client=True, peers=[url])
        client.clock_watch.wall_clock = ahead(seconds)
        clients.append(client)
        await client.start()
    return clients


async def test_a_node_behind_its_peers_says_they_drop_what_it_publishes(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    clients = await clients_off_by(server.url, 2 * DAY, LEAST_CLOCKS)
    try:
        await wait_for(lambda: said(caplog, "wall clock is"))
        (line,) = said(caplog, "wall clock is")
        assert "172800 s behind its peers'" in line
        assert f"the median of {LEAST_CLOCKS} peers'" in line
        assert "its peers drop the gossip it publishes as older than log_max_age" in line
        offset = server.clock_watch.offset
        assert offset is not None and abs(offset - 2 * DAY) < 60
        assert node_status(server, _no_rates())["node"]["clock_offset_s"] == round(offset, 3)
        exported = _metric(server, "trustp2p_clock_offset_seconds")
        assert exported == pytest.approx(offset, abs=1)
        # Each client saw one peer only: too few to judge, nothing said.
        assert all(c.clock_watch.offset is None for c in clients)
    finally:
        for client in clients:
            await client.stop()


async def test_a_node_ahead_of_its_peers_says_it_drops_their_gossip(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = Node(**FAST, server=True, port=0)
    server.clock_watch.wall_clock = ahead(2 * DAY)
    await server.start()
    try:
        url = server.url
        for _ in range(LEAST_CLOCKS):
            await make_node(client=True, peers=[url])
        await wait_for(lambda: said(caplog, "wall clock is"))
        (line,) = said(caplog, "wall clock is")
        assert "ahead of its peers'" in line
        assert "it drops its peers' gossip as older than log_max_age" in line
    finally:
        await server.stop()


async def test_peers_in_time_or_without_a_time_say_nothing(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    url = server.url
    clients = [await make_node(client=True, peers=[url]) for _ in range(LEAST_CLOCKS + 1)]
    await wait_for(lambda: server.clock_watch.clocks.peers == len(clients))
    offset = server.clock_watch.offset
    assert offset is not None and abs(offset) < 60
    assert not said(caplog, "wall clock")
    # Our version talk carries our clock; one without (the original's) counts for nothing.
    assert abs(clients[0].clock_watch.version_body()[TIME_KEY] / 1000 - time.time()) < 60
    socket = next(iter(clients[0].connections)).socket
    server.clock_watch.introduced(socket, {"alt": "1"})
    assert server.clock_watch.clocks.peers == len(clients)


def _no_rates() -> TopicRates:
    return TopicRates(time.time())


def _metric(node: Node, name: str) -> float:
    text = generate_latest(node_registry(node)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")
