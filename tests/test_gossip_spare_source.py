"""
attacker38 A1 over memory connections: a peer of an honest publisher and of a node
relays the publisher's messages to the node first, without a ``via``, so that they
count for its own share there, then floods that share with throwaway origins (49 of
450 kept at the node). The honest relay's copies, arriving second, give the origin a
spare source in the node's log, and the full topic counts it there before it would
drop one of its messages.
"""

from __future__ import annotations

import pytest

from trustp2p import Node
from trustp2p.drivers.memory import MemoryHub
from trustp2p.protocol.gossip import GossipMessage, stream_key

from .conftest import wait_for
from .test_gossip_behaviour import gossip, memory_node, subscribed
from .test_gossip_fair_share import flood

HONEST, FLOOD, LIMIT = 20, 100, 40


class NoVia:
    """The attacker's relaying: as its node's, but without a ``via``."""

    def __init__(self, node: Node) -> None:
        self._attribution = gossip(node)._attribution

    def __getattr__(self, name: str) -> object:
        return getattr(self._attribution, name)

    def passed_on(self, socket: object, message: GossipMessage, *, live: bool) -> GossipMessage:
        return message.with_via("")


def connect(node: Node, to: Node) -> None:
    assert node.client is not None and to.url is not None
    node.client.connect(to.url)


@pytest.mark.parametrize("slow", ["relay", "flood"])
async def test_a_first_relay_without_via_cant_flood_an_honest_origin_out(slow: str) -> None:
    """``slow``: whose copies come second, the honest relay's (the attack: before, none
    of the honest origin's 20 was kept) or the attacker's (the origin counts for the
    relay: the attacker's copies make its path the spare, and take nothing)."""
    hub = MemoryHub()
    async with (  # the victim stops first: what the flooder sent is left unread
        memory_node(hub, "relay") as relay,
        memory_node(hub, "flood") as flooder,
        memory_node(hub, "light") as light,
        memory_node(hub, "victim", log_max_messages=LIMIT) as victim,
    ):
        delivered: list[GossipMessage] = []
        victim.subscribe("chat", delivered.append)
        for node in (relay, flooder, light):
            node.subscribe("chat")
        gossip(flooder)._attribution = NoVia(flooder)  # type: ignore[assignment]
        for node, to in ((victim, relay), (light, relay), (light, flooder), (flooder, victim)):
            connect(node, to)
        hub.set_delay(0.2, slow, "victim")
        await wait_for(lambda: subscribed(victim, "chat", 2) and subscribed(flooder, "chat", 2))
        await wait_for(lambda: subscribed(relay, "chat", 2))
        for number in range(HONEST):
            await light.publish("chat", {"n": number})
        await wait_for(lambda: len(delivered) == HONEST)
        copies = gossip(victim).router.stats
        await wait_for(lambda: copies.duplicates >= HONEST)  # the slow one's
        await flood(flooder, FLOOD, to="victim")
        await wait_for(lambda: len(delivered) == HONEST + FLOOD)
        log = gossip(victim).message_log
        assert log is not None and len(log) == LIMIT
        honest = stream_key("chat", light.peer_id)
        # The honest origin counts for the relay's address (one of two), not as one of
        # the flooder's 101 origins.
        assert (log.first_seq(honest), log.last_seq(honest)) == (1, HONEST)
