"""Gossip messages stamped far in the future (tester48 F1): a node whose clock ran a
year ahead had every message delivered everywhere without a word, and, as the README
advises ordering writes by ``message.timestamp``, won every last-write-wins. Past
``CLOCK_SKEW`` ahead of the receiver's clock, a message is dropped unseen, counted and
said, and its number passed over: later messages don't wait for it."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from trustp2p import Node
from trustp2p.drivers.memory import MemoryDriver, MemoryHub
from trustp2p.node.clock_watch import ClockWatch
from trustp2p.node.gossip import Gossip
from trustp2p.protocol.gossip import CLOCK_SKEW, GossipMessage

from .conftest import wait_for

YEAR = 365 * 86_400.0
OPTIONS: dict[str, Any] = {
    "peer_exchange": False,
    "target_outbound": 0,
    "gossip_interval": 0.05,
    "gap_timeout": 30.0,  # (longer than the test waits: a later message isn't held)
}


def _future(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "in the future" in r.getMessage()]


async def test_a_message_from_the_future_is_dropped_said_and_passed_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    hub = MemoryHub()
    ahead = [YEAR]  # the publisher's wall clock, a year ahead; put right later
    publisher = Node(server=True, port=1, host="a", driver=MemoryDriver(hub=hub, name="a"),
                     **OPTIONS)  # fmt: skip
    publisher.gossip = Gossip(publisher, wall_clock=lambda: time.time() + ahead[0])
    reader = Node(client=True, peers=["memory://a:1"], driver=MemoryDriver(hub=hub), **OPTIONS)
    got: list[GossipMessage] = []
    async with publisher, reader:
        assert publisher.gossip is not None and reader.gossip is not None
        reader.gossip.subscribe("chat", got.append)
        await publisher.gossip.wait_subscribers("chat")
        await publisher.publish("chat", {"n": 1})
        await wait_for(lambda: reader.gossip is not None and reader.gossip.too_old == 1)
        (line,) = _future(caplog)
        assert line.levelno == logging.WARNING
        said = line.getMessage()
        assert said.startswith(f"! message 1 of {publisher.peer_id} on 'chat' dropped:")
        assert f"past the {CLOCK_SKEW:.0f} s of clock skew allowed" in said
        seconds = float(said.split("timestamped ")[1].split(" s in the future")[0])
        assert seconds == pytest.approx(YEAR, abs=5)
        assert reader.metrics.topic_too_old == {"chat": 1}
        assert got == []
        # Its clock put right: the next message is delivered at once, not held for
        # gap_timeout behind the one dropped (its number was passed over).
        ahead[0] = 0.0
        await publisher.publish("chat", {"n": 2})
        await wait_for(lambda: len(got) == 1)
        assert got[0].seq == 2 and reader.gossip.delivered_seq("chat", publisher.peer_id) == 2
        # A late subscriber catching up from the publisher's log: the same rule.
        late = Node(client=True, peers=["memory://a:1"], driver=MemoryDriver(hub=hub), **OPTIONS)
        caught: list[GossipMessage] = []
        async with late:
            assert late.gossip is not None
            late.gossip.subscribe("chat", caught.append)
            await wait_for(lambda: len(caught) == 1)
            assert caught[0].seq == 2 and late.gossip.too_old == 1
            assert late.metrics.topic_too_old == {"chat": 1}


async def test_a_node_whose_clock_lags_its_peers_takes_their_messages() -> None:
    """Found in review: the rule judged by the receiver's clock alone, so a relay whose
    clock lagged more than CLOCK_SKEW dropped every peer's message as from the future,
    and relayed none. Its peers' clocks (their version talks) say it lags: it takes
    them then."""
    hub = MemoryHub()
    lag = 2 * CLOCK_SKEW
    publisher = Node(server=True, port=1, host="a", driver=MemoryDriver(hub=hub, name="a"),
                     **OPTIONS)  # fmt: skip
    reader = Node(client=True, peers=["memory://a:1"], driver=MemoryDriver(hub=hub), **OPTIONS)
    reader.gossip = Gossip(reader, wall_clock=lambda: time.time() - lag)
    reader.clock_watch = ClockWatch(reader, wall_clock=lambda: time.time() - lag)
    got: list[GossipMessage] = []
    async with publisher, reader:
        assert publisher.gossip is not None and reader.gossip is not None
        reader.gossip.subscribe("chat", got.append)
        await publisher.gossip.wait_subscribers("chat")
        await wait_for(lambda: reader.clock_watch.offset is not None)
        await publisher.publish("chat", {"n": 1})
        await wait_for(lambda: len(got) == 1)
        assert reader.gossip.too_old == 0
