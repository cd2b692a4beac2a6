"""r29: a topic subscribed, unsubscribed and subscribed again within one TOPIC_GATHER keeps
the index of its first subscribe in ``Fetcher._added`` (a dict: the second topic_added()
doesn't move it). A peer introduced between the unsubscribe and the second subscribe got
``_late = len(_added)`` > that index, and its introduction round ran without the topic
(unsubscribed then): the topic is asked of nobody (commit 5685002, gossip_catchup.py
introduced()/_ask_added())."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_gossip_behaviour import gossip, memory_node, wait_for
from trustp2p.drivers.memory import MemoryHub
from trustp2p.node.gossip_catchup import TOPIC_GATHER

pytestmark = pytest.mark.asyncio


async def test_topic_resubscribed_within_the_gather_after_an_introduction_is_caught_up() -> None:
    hub = MemoryHub()
    default = {"catchup_interval": 30.0, "gossip_interval": 1.0}
    async with (
        memory_node(hub, "feed", **default) as feed,
        memory_node(hub, "reader", **default) as reader,
    ):
        feed.subscribe("news", lambda m: None)
        await feed.publish("news", {"n": 1})
        await asyncio.sleep(3.5)  # past gossip_history: only catch-up has it
        assert reader.client is not None and feed.url is not None
        reader.subscribe("news")  # a gathering begins (no peers yet): "news" at index 0
        reader.unsubscribe("news")  # (the app changes its mind)
        reader.client.connect(feed.url)
        await wait_for(lambda: bool(gossip(reader).router.peers))  # feed introduced: _late 1
        await asyncio.sleep(0.05)  # its introduction round ran, without "news"
        got: list[object] = []
        reader.subscribe("news", got.append)  # new again, still within TOPIC_GATHER
        await wait_for(lambda: bool(got), timeout=TOPIC_GATHER + 3)  # TimeoutError
