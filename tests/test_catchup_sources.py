"""Which peers are the catch-up rounds' preferred sources (review71 F3): a peer earns
credit only for a message of another origin that it was the first to bring, live and
accepted; its own messages earn it nothing (an identity that published one a minute and
served nothing took the honest relay's share of the rounds)."""

from __future__ import annotations

from typing import Any

import pytest

from trustp2p.node.gossip import Validation
from trustp2p.protocol.gossip import GossipMessage, PeerKey, RelaySources
from trustp2p.testing import Network

from .test_gossip_behaviour import chain, gossip, socket_to, wait_for

pytestmark = pytest.mark.asyncio


async def test_only_a_relay_of_anothers_accepted_message_earns_credit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credited: list[PeerKey] = []
    original = RelaySources.relayed

    def relayed(self: RelaySources[Any], peer: PeerKey, now: float) -> None:
        credited.append(peer)
        original(self, peer, now)

    monkeypatch.setattr(RelaySources, "relayed", relayed)
    async with Network(3, degree=0, secure=True) as network:
        a, b, c = await chain(network)
        a_at_b, b_at_c = socket_to(b, "n0").id, socket_to(c, "n1").id

        def judge(message: GossipMessage) -> Validation:
            return Validation.IGNORE if message.body["kind"] == "ignore" else Validation.ACCEPT

        gossip(c).set_validator("chat", judge)
        await a.publish("chat", {"kind": "ignore"})  # C's validator drops it
        await a.publish("chat", {"kind": "ok"})
        await wait_for(lambda: len(network.received[1]) == 2 and len(network.received[2]) == 1)
        # B got A's own messages (no credit to A); C got them relayed by B: B earned
        # credit for the one C's validator accepted, not for the one it ignored.
        assert credited == [b_at_c]
        assert a_at_b not in credited
