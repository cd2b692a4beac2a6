"""A forged answer to an ``iwant`` uses the ask up (review91 F1): a copy with the asked
id and a signature that doesn't check out was taken as asked, so its check spent none of
the peer's pushed share, and so was every copy after it, for as long as the id was asked
or late (``lazy.LATE_FOR``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from trustp2p.drivers.memory import MemoryHub
from trustp2p.identity import Identity
from trustp2p.protocol.gossip import IHAVE, sign_message
from trustp2p.protocol.package import PackageType, build_package

from .conftest import wait_for
from .test_gossip_behaviour import memory_node, socket_to, subscribed


def _forged(body: dict[str, Any], n: int) -> dict[str, Any]:
    """The same origin, seq, topic and data (the same id), another timestamp: its
    signature doesn't check out."""
    return {**body, "ts": body["ts"] + n}


@pytest.mark.parametrize("late", [False, True], ids=["asked", "late"])
async def test_forged_copies_of_an_asked_id_spend_the_pushed_share(late: bool) -> None:
    hub = MemoryHub()
    async with (
        memory_node(hub, "attacker") as attacker,
        memory_node(hub, "server", gossip_node_rate=1.0) as server,
    ):
        server.subscribe("chat")
        attacker.subscribe("chat")
        assert attacker.client is not None and server.url is not None
        attacker.client.connect(server.url)
        await wait_for(lambda: subscribed(server, "chat", 1))
        router = server.gossip.router  # type: ignore[union-attr]
        now = int(time.time() * 1000)
        identity = Identity.generate()
        message = sign_message(identity, "chat", 1, now, {"n": 1})
        seen = sign_message(identity, "chat", 2, now, {"n": 2})  # its copies: duplicates
        to_server = socket_to(attacker, "server")
        copy = build_package(PackageType.GOSSIP, "chat", seen.to_body())
        await attacker.send(to_server, copy)
        await wait_for(lambda: router.seen(seen.id))
        peer = socket_to(server, "attacker").id
        router.control(peer, IHAVE, {"topic": "chat", "ids": [message.id]})
        if late:
            await wait_for(lambda: router.stats.iwant_unanswered == 1)  # given up: late
        body = message.to_body()
        for n in range(1, 6):
            forged = build_package(PackageType.GOSSIP, "chat", _forged(body, n))
            await attacker.send(to_server, forged)
            for _ in range(11):  # (the invalid ratio stays under the block policy's)
                await attacker.send(
                    to_server, build_package(PackageType.GOSSIP, "chat", seen.to_body())
                )
        await wait_for(
            lambda: router.stats.invalid >= 2 or server.metrics.throttles > 0, timeout=10
        )
        # The first forged copy is checked as asked; the next is a push, over a share of 1
        # a second: reading from the attacker pauses (before: none of the five did).
        await wait_for(lambda: server.metrics.throttles > 0, timeout=10)
        assert not router.asked(peer, message.id)
