"""r28: _fanout returns fewer than ``fanout`` peers although more subscribers are available:
with a small mesh, only ONE outside asker is taken even when the rest of the mesh can't
fill the remaining places (default fanout 3)."""

from __future__ import annotations

from tests.protocol.test_gossip_router import (
    IWANT,
    SUBSCRIPTIONS,
    TOPIC,
    _message,
    _messages,
    _router,
)
from trustp2p.protocol.gossip.batch import PRUNE

SENDER, MESH_PEER = 100, 0
ASKERS = (200, 201, 202)  # subscribed, pruned us (out of the mesh, in backoff), ask us


def test_small_mesh_with_outside_askers_gets_fewer_than_fanout_pushes() -> None:
    router, sent, _ = _router()  # defaults: degree 6, fanout 3
    router.subscribe(TOPIC)
    for peer in [MESH_PEER, SENDER, *ASKERS]:
        router.add_peer(peer)
        router.control(peer, SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": []})
    for peer in ASKERS:
        router.control(peer, PRUNE, {"topics": [TOPIC]})
    assert router.mesh[TOPIC] == {MESH_PEER, SENDER}
    first = _message(1)
    assert router.receive(SENDER, first)
    router.forward(SENDER, first)
    for peer in ASKERS:
        router.control(peer, IWANT, {"ids": [first.id]})
    message = _message(2)
    sent.clear()
    assert router.receive(SENDER, message)
    router.forward(SENDER, message)
    pushed = [peer for peer, _ in _messages(sent)]
    available = {MESH_PEER, *ASKERS}  # 4 subscribers but the sender, all of them asked or mesh
    assert len(pushed) == min(router.fanout, len(available)), (
        f"pushed to {pushed}: {len(pushed)} of {router.fanout}, {len(available)} available"
    )
