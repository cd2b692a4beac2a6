"""A node that joins late catches up from its peers and sends them nothing back of what
it caught up: no ``ihave`` of it, no ``iwant`` answered with it (found by a new user: a
node joining a 7-node network pushed 45 MB of messages its peers' logs held back to
them within 25 s, once their seen-caches had forgotten the ids)."""

from __future__ import annotations

import asyncio

from trustp2p.drivers.memory import MemoryHub
from trustp2p.protocol.gossip import GossipMessage

from .conftest import stays, wait_for
from .test_gossip_behaviour import gossip, memory_node, subscribed

QUICK = {"gossip_interval": 0.02, "seen_ttl": 0.1}  # ids forgotten within a few beats


async def test_a_late_joiner_sends_back_nothing_it_caught_up() -> None:
    hub = MemoryHub()
    got: dict[str, list[GossipMessage]] = {"a": [], "b": [], "c": []}
    a = memory_node(hub, "a", **QUICK)
    b = memory_node(hub, "b", peers=["memory://a:1"], **QUICK)
    c = memory_node(hub, "c", peers=["memory://a:1", "memory://b:1"], **QUICK)
    try:
        for node, name in ((a, "a"), (b, "b")):
            node.subscribe("t", got[name].append)
            await node.start()
        await wait_for(lambda: subscribed(a, "t", 1) and subscribed(b, "t", 1))
        ids = [await a.publish("t", {"n": n}) for n in range(20)]
        await wait_for(lambda: len(got["b"]) == 20)
        # Both forget the ids (seen_ttl): only their logs hold the messages now.
        await wait_for(lambda: not any(gossip(x).router.seen(i) for x in (a, b) for i in ids))
        received = [gossip(x).router.stats.received for x in (a, b)]
        c.subscribe("t", got["c"].append)
        await c.start()
        await wait_for(lambda: len(got["c"]) == 20)
        assert sorted(m.id for m in got["c"]) == sorted(ids)
        # Many gossip heartbeats: nothing of it comes back to a or b.
        assert await stays(
            lambda: [gossip(x).router.stats.received for x in (a, b)] == received, 0.3
        )
        assert gossip(c).router.stats.ihave_sent == 0
        assert gossip(c).router.stats.served == 0
    finally:
        for node in (c, b, a):
            await node.stop()


async def test_delivered_counts_what_the_handlers_ran_for_not_what_was_queued() -> None:
    """Found by a new user: ``delivered`` (the metric and the status page) said 1,000
    while a slow handler had run for 43: an operator saw "all delivered" while the
    handler was minutes behind."""
    hub = MemoryHub()
    a = memory_node(hub, "a")
    b = memory_node(hub, "b", peers=["memory://a:1"])
    gate = asyncio.Event()
    ran: list[GossipMessage] = []

    async def slow(message: GossipMessage) -> None:
        await gate.wait()
        ran.append(message)

    try:
        await a.start()
        b.subscribe("t", slow)
        await b.start()
        await wait_for(lambda: subscribed(a, "t", 1))
        for n in range(3):
            await a.publish("t", {"n": n})
        await wait_for(lambda: gossip(b).router.stats.received >= 3)
        metric = b.metrics.topic_delivered
        assert await stays(lambda: gossip(b).delivered == 0 and not metric.get("t"), 0.1)
        gate.set()
        await wait_for(lambda: len(ran) == 3)
        await wait_for(lambda: gossip(b).delivered == 3 and metric.get("t") == 3)
    finally:
        for node in (b, a):
            await node.stop()


async def test_recent_messages_caught_up_over_a_bridge_reach_the_rest_of_the_mesh() -> None:
    """review36: messages a node got by catch-up over a new link (a partition healed)
    reached its other peers only at their next catch-up round (30 s by default): what
    is younger than ``seen_ttl`` is announced (peers that had it remember it)."""
    hub = MemoryHub()
    defaults = {"gossip_interval": 1.0, "catchup_interval": 30.0}  # the shipped ones
    got: dict[str, list[GossipMessage]] = {"a": [], "b": [], "x": []}
    a = memory_node(hub, "a", **defaults)
    b = memory_node(hub, "b", peers=["memory://a:1"], **defaults)
    x = memory_node(hub, "x", **defaults)  # the other side of a partition
    try:
        for node, name in ((a, "a"), (b, "b"), (x, "x")):
            node.subscribe("t", got[name].append)
            await node.start()
        await wait_for(lambda: subscribed(a, "t", 1) and subscribed(b, "t", 1))
        ids = [await x.publish("t", {"n": n}) for n in range(5)]
        assert x.client is not None
        x.client.connect("memory://a:1")  # the partition heals: one link
        await wait_for(lambda: len(got["a"]) == 5)  # a caught up
        await wait_for(lambda: len(got["b"]) == 5, timeout=6.0)  # within a few beats
        assert sorted(m.id for m in got["b"]) == sorted(ids)
    finally:
        for node in (x, b, a):
            await node.stop()
