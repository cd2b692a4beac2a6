"""
attacker36 F2 over loopback sockets: behind a hub, every message comes from the hub's
address, and an attacker's throwaway origins injected at the hub divided the topic with
an honest origin at the next node by their number (49 of 450 kept). The hub's own
attribution (``via``) now carries on: at the next node the honest origin shares the
hub's share with the attacker's source, not with each of its origins.
"""

from __future__ import annotations

import time

import pytest

from trustp2p import Node
from trustp2p.identity import Identity
from trustp2p.protocol.gossip import GossipMessage, sign_message, stream_key
from trustp2p.protocol.package import PackageType, build_package

from .nodes import MakeNode, wait_for
from .test_gossip_behaviour import subscribed

HONEST, ORIGINS, PER_ORIGIN, LIMIT = 15, 30, 3, 40


def kept(node: Node, origin: str) -> list[int]:
    assert node.gossip is not None and node.gossip.message_log is not None
    log = node.gossip.message_log
    return [m.seq for m in log.range(stream_key("chat", origin), 1, 1000, limit=1000)]


@pytest.mark.parametrize("made_up", [False, True])
async def test_an_attackers_origins_through_a_hub_leave_an_honest_origin_its_history_downstream(
    make_node: MakeNode, made_up: bool
) -> None:
    """``made_up``: the attacker names a sub-source of its own for each origin (a
    ``via`` per origin): at the hub, and behind it, they divide its share alone."""
    hub = await make_node(server=True)
    hub.subscribe("chat")
    got: list[GossipMessage] = []
    downstream = await make_node(client=True, peers=[hub.url], log_max_messages=LIMIT)
    downstream.subscribe("chat", got.append)
    publisher = await make_node(client=True, peers=[hub.url])
    attacker = await make_node(client=True, peers=[hub.url])
    for node in (downstream, publisher, attacker):
        await node.client.wait_connected()  # type: ignore[union-attr]
    await wait_for(lambda: subscribed(hub, "chat", 1))
    for number in range(HONEST):
        await publisher.publish("chat", {"n": number})
    await wait_for(lambda: len(got) == HONEST)
    # The attacker's throwaway origins, on its one connection to the hub.
    socket = attacker.sockets[0]
    now = int(time.time() * 1000)
    identities = [Identity.generate() for _ in range(ORIGINS)]
    for seq in range(1, PER_ORIGIN + 1):
        for number, identity in enumerate(identities):
            message = sign_message(identity, "chat", seq, now, {"junk": seq})
            body = message.to_body()
            if made_up:
                body["via"] = f"t{number}.u{number}"
            await attacker.send(socket, build_package(PackageType.GOSSIP, "chat", body))
    await wait_for(lambda: len(got) == HONEST + ORIGINS * PER_ORIGIN, timeout=20)
    assert kept(hub, publisher.peer_id) == list(range(1, HONEST + 1))  # (as before)
    # One source at the downstream node (the hub), two sub-sources under it.
    assert kept(downstream, publisher.peer_id) == list(range(1, HONEST + 1))  # was 1 or 2
    flood = sum(len(kept(downstream, identity.peer_id)) for identity in identities)
    assert flood == LIMIT - HONEST
