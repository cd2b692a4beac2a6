"""A node with no topics asks an introduced peer nothing, and spawns no catch-up task for
it: such a round returned at once, but cost a task per connection (issue 11 goal 4, a
secure server's set-up path)."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_gossip_behaviour import gossip, memory_node, wait_for
from trustp2p.drivers.memory import MemoryHub
from trustp2p.node.gossip_catchup import Fetcher

pytestmark = pytest.mark.asyncio


async def test_no_round_without_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[tuple[str, set[str] | None]] = []
    original_round = Fetcher.round

    async def round(self, socket, topics=None):  # type: ignore[no-untyped-def]
        rounds.append((self._gossip.node.options.host, topics))
        await original_round(self, socket, topics)

    monkeypatch.setattr(Fetcher, "round", round)
    hub = MemoryHub()
    options = {"catchup_interval": 30.0}
    async with (
        memory_node(hub, "feed", **options) as feed,
        memory_node(hub, "reader", **options) as reader,
    ):
        assert reader.client is not None and feed.url is not None
        reader.client.connect(feed.url)
        await wait_for(lambda: bool(gossip(reader).router.peers and gossip(feed).router.peers))
        for _ in range(3):  # a task spawned at the introduction would have run by now
            await asyncio.sleep(0)
        assert rounds == []
        reader.subscribe("a")  # a topic now: a round with the feed (its gathering)
        await wait_for(lambda: ("reader", {"a"}) in rounds)
