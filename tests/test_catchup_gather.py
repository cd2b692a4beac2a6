"""r28: a topic subscribed within TOPIC_GATHER after a peer was introduced is never asked
of that peer: the gathering began (with another topic) before the introduction, so the
peer is not in ``_asked_of``, and its introduction round ran before the topic existed.
Before 86bbb2e (call_soon) the topic was asked of it at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_gossip_behaviour import gossip, memory_node, wait_for
from trustp2p.drivers.memory import MemoryHub

pytestmark = pytest.mark.asyncio

TOPIC_GATHER = 0.5  # (trustp2p.node.gossip_catchup.TOPIC_GATHER; absent before 86bbb2e)


async def test_topic_subscribed_after_an_introduction_within_the_gather_is_caught_up() -> None:
    hub = MemoryHub()
    default = {"catchup_interval": 30.0, "gossip_interval": 1.0}  # the defaults (not FAST's)
    async with (
        memory_node(hub, "feed", **default) as feed,
        memory_node(hub, "reader", **default) as reader,
    ):
        feed.subscribe("news", lambda m: None)
        await feed.publish("news", {"n": 1})  # history the reader should catch up
        await asyncio.sleep(3.5)  # older than gossip_history heartbeats: only catch-up has it
        assert reader.client is not None and feed.url is not None
        reader.subscribe("other")  # (an app subscribing as it runs: a gather begins, no peers)
        reader.client.connect(feed.url)
        await wait_for(lambda: bool(gossip(reader).router.peers))  # feed introduced
        await asyncio.sleep(0.05)  # its introduction round ran, for the topics then
        got: list[object] = []
        reader.subscribe("news", got.append)  # still within TOPIC_GATHER
        await wait_for(lambda: bool(got), timeout=TOPIC_GATHER + 3)  # TimeoutError: never asked
