"""A node's wall clock against its peers' (``trustp2p.node.clock_watch``), over real
loopback connections with default options: found by a tester, a node two days off
dropped gossip (its peers', or they its own) and never said its clock was the cause."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trustp2p import Node
from trustp2p.admin.collector import node_registry
from trustp2p.admin.status import TopicRates, node_status
from trustp2p.node.clock_watch import ClockWatch
from trustp2p.protocol.clocks import LEAST_CLOCKS, TIME_KEY

from .nodes import MakeNode, wait_for

DAY = 86_400.0
SAID = "wall clock is"

MakeClients = Callable[[str | None, float, int], Awaitable[list[Node]]]
"""``clients(url, seconds, count)``: the ``clients`` fixture."""


def off_by(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture
async def clients() -> AsyncIterator[MakeClients]:
    """Start clients of a URL (default options), their wall clocks off by some seconds."""
    made: list[Node] = []

    async def make(url: str | None, seconds: float, count: int) -> list[Node]:
        assert url is not None  # (a server's, once started)
        for _ in range(count):
            client = Node(client=True, peers=[url])
            client.clock_watch.wall_clock = off_by(seconds)
            made.append(client)
            await client.start()
        return made[-count:]

    yield make
    for client in made:
        await client.stop()


async def test_a_node_behind_its_peers_says_they_drop_what_it_publishes(
    make_node: MakeNode, clients: MakeClients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    ahead = await clients(server.url, 2 * DAY, LEAST_CLOCKS)
    await wait_for(lambda: len(said(caplog, "behind its peers'")) == 1)
    (line,) = said(caplog, "behind its peers'")
    # One network was enough: two days, more than log_max_age (review64 R2).
    assert seconds_off(line, "behind") == pytest.approx(2 * DAY, abs=2)
    assert "(the median of the version talks of 1 connected network(s); so few" in line
    assert "its peers drop the gossip it publishes as older than log_max_age" in line
    assert "as from the future" not in line  # (its peers' clocks say it lags: see stale())
    offset = server.clock_watch.offset
    assert offset is not None and abs(offset - 2 * DAY) < 60
    status = node_status(server, TopicRates(time.time()))["node"]
    assert status["clock_offset_s"] == pytest.approx(offset, abs=1)
    assert status["clock_networks"] == LEAST_CLOCKS
    assert _metric(server, "trustp2p_clock_offset_seconds") == pytest.approx(offset, abs=1)
    # Each client has one peer, two days behind it: it says so too.
    await wait_for(lambda: len(said(caplog, "ahead of its peers'")) == len(ahead))
    assert all("it drops its peers' gossip" in line for line in said(caplog, "ahead of"))
    future = "its peers drop the gossip it publishes as from the future"
    assert all(future in line for line in said(caplog, "ahead of"))
    # Its peers gone, their offsets go (review64 R1: kept for ever).
    for client in ahead:
        await client.stop()
    await wait_for(lambda: server.clock_watch.offset is None)
    assert node_status(server, TopicRates(time.time()))["node"]["clock_offset_s"] is None


async def test_a_client_of_one_server_ten_minutes_ahead_says_its_gossip_is_dropped(
    make_node: MakeNode, clients: MakeClients, caplog: pytest.LogCaptureFixture
) -> None:
    """tester49 F1: fewer than LEAST_CLOCKS networks decided only past log_max_age (a
    day), so a client ten minutes ahead of its servers had every message it published
    dropped by them as from the future and said nothing. Default options."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    (ahead,) = await clients(server.url, 600.0, 1)
    await wait_for(lambda: said(caplog, "ahead of its peers'"))
    (line,) = said(caplog, SAID)
    assert seconds_off(line, "ahead of") == pytest.approx(600, abs=2)
    few = "1 connected network(s); so few that theirs may be the clocks off)"
    assert few in line
    assert "its peers drop the gossip it publishes as from the future" in line
    # The server, ten minutes behind its one client, takes what it publishes: not said.
    assert server.clock_watch.offset == pytest.approx(600, abs=2)
    await ahead.stop()
    # A client ten minutes behind says nothing: the server takes what it publishes.
    # The server, its one peer ten minutes behind it, can't tell whose clock is off.
    (behind,) = await clients(server.url, -600.0, 1)
    await wait_for(lambda: len(said(caplog, SAID)) == 2)
    behind.clock_watch.check()
    line = said(caplog, SAID)[1]
    assert seconds_off(line, "ahead of") == pytest.approx(600, abs=2) and few in line
    assert server.clock_watch.offset == pytest.approx(-600, abs=2)
    assert len(said(caplog, SAID)) == 2


async def test_a_step_of_the_nodes_clock_is_said_at_the_next_heartbeat_round(
    make_node: MakeNode, clients: MakeClients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    await clients(server.url, 0.0, LEAST_CLOCKS)
    await wait_for(lambda: server.clock_watch.clocks.peers == LEAST_CLOCKS)
    server.heartbeat.check()
    assert not said(caplog, SAID)
    server.clock_watch.wall_clock = off_by(2 * DAY)  # NTP, a restored snapshot
    server.heartbeat.check()
    (line,) = said(caplog, SAID)
    assert seconds_off(line, "ahead of") == pytest.approx(2 * DAY, abs=2)
    assert "of 5 connected network(s)" in line and "relays none of it" in line
    server.clock_watch.wall_clock = time.time  # put right
    server.heartbeat.check()
    (back,) = said(caplog, "agrees with its peers' again")
    assert re.search(r"offset [+-][01] s, 5\)", back), back


async def test_an_offset_within_log_max_age_says_what_it_may_drop(
    make_node: MakeNode, clients: MakeClients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    await clients(server.url, 3600.0, LEAST_CLOCKS)
    await wait_for(lambda: said(caplog, SAID))
    (line,) = said(caplog, SAID)
    assert seconds_off(line, "behind") == pytest.approx(3600, abs=2)
    # An hour behind: its peers' messages come stamped an hour ahead, taken all the same
    # (its peers' clocks say it lags: ClockWatch.stale()).
    assert line.endswith(
        "no message is dropped for it until log_max_age, but the rules that allow"
        " CLOCK_SKEW for clocks (forgotten delivery marks, an origin numbering again) may"
        " drop some; check its time (NTP)"
    )


async def test_peers_in_time_or_without_a_time_say_nothing(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    bodies: list[dict[str, object]] = []
    original = ClockWatch.version_body

    def spy(self: ClockWatch) -> dict[str, object]:
        bodies.append(body := original(self))
        return body

    monkeypatch.setattr(ClockWatch, "version_body", spy)
    server = await make_node(server=True)
    url = server.url
    clients = [await make_node(client=True, peers=[url]) for _ in range(LEAST_CLOCKS + 1)]
    await wait_for(lambda: server.clock_watch.clocks.peers == len(clients))
    offset = server.clock_watch.offset
    assert offset is not None and abs(offset) < 60
    assert not said(caplog, "wall clock")
    # Every version talk carried our clock, in seconds, send_version()'s too.
    socket = next(iter(clients[0].connections)).socket
    sent = len(bodies)
    assert clients[0].client is not None
    await clients[0].client.send_version(socket)
    assert len(bodies) == sent + 1
    assert all(abs(float(b[TIME_KEY]) - time.time()) < 60 for b in bodies)  # type: ignore[arg-type]
    # One without a time (the original's) counts for nothing.
    server.clock_watch.introduced(socket, {"alt": "1"})
    assert server.clock_watch.clocks.peers == len(clients)


def seconds_off(line: str, side: str) -> float:
    """The seconds a WARNING says this node's clock is ``side`` its peers'."""
    found = re.search(rf"wall clock is (\d+) s {side} its peers'", line)
    assert found is not None, line
    return float(found.group(1))


def _metric(node: Node, name: str) -> float:
    text = generate_latest(node_registry(node)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")
