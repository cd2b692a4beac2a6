"""r29 (low): a peer introduced within a gathering is recorded with ``_late =
len(_added)`` at its introduction, but its introduction round reads ``router.topics``
only when its task first runs (the next loop iteration). A topic subscribed in between
(by a task that ran in the same iteration as the introduction; simulated here by
subscribing right after ``peer_introduced``) is in that round AND asked again by
``_ask_added`` (index >= _late): the peer is asked it twice in one gathering."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_gossip_behaviour import gossip, memory_node, wait_for
from trustp2p.drivers.memory import MemoryHub
from trustp2p.node import gossip as gossip_module
from trustp2p.node.gossip_catchup import TOPIC_GATHER, Fetcher

pytestmark = pytest.mark.asyncio


async def test_topic_subscribed_in_the_introduction_iteration_is_asked_once(monkeypatch) -> None:
    asked: list[set[str]] = []
    original_round = Fetcher.round

    async def round(self, socket, topics=None):  # type: ignore[no-untyped-def]
        if self._gossip.node.options.host == "reader":  # the reader's rounds (of the feed)
            asked.append(set(self._gossip.router.topics if topics is None else topics))
        await original_round(self, socket, topics)

    monkeypatch.setattr(Fetcher, "round", round)
    original_introduced = gossip_module.Gossip.peer_introduced

    def peer_introduced(self, socket, max_size):  # type: ignore[no-untyped-def]
        original_introduced(self, socket, max_size)
        if self.node.options.host == "reader":
            self.subscribe("b")  # (an app task run in the same loop iteration)

    monkeypatch.setattr(gossip_module.Gossip, "peer_introduced", peer_introduced)
    hub = MemoryHub()
    default = {"catchup_interval": 30.0, "gossip_interval": 1.0}
    async with (
        memory_node(hub, "feed", **default) as feed,
        memory_node(hub, "reader", **default) as reader,
    ):
        feed.subscribe("b", lambda m: None)
        assert reader.client is not None and feed.url is not None
        reader.subscribe("a")  # a gathering begins
        asked.clear()
        reader.client.connect(feed.url)
        await wait_for(lambda: bool(gossip(reader).router.peers))
        await asyncio.sleep(TOPIC_GATHER + 0.3)
        rounds_with_b = [t for t in asked if "b" in t]
        assert len(rounds_with_b) == 1, f"rounds asking 'b' of the feed: {asked}"
