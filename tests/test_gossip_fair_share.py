"""The node-wide budget of live gossip messages (``gossip_node_rate``), over memory
connections: peers that send more than their share wait, a peer within it never does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

import pytest

from trustp2p import Node
from trustp2p.drivers.memory import MemoryDriver, MemoryHub
from trustp2p.identity import Identity
from trustp2p.options import NodeOptions
from trustp2p.protocol.gossip import IHAVE, FairShare, GossipMessage, sign_message, stream_key
from trustp2p.protocol.hosts import share_group
from trustp2p.protocol.package import PackageType, build_package

from .conftest import wait_for
from .nodes import FAST
from .test_gossip_behaviour import memory_node, socket_to, subscribed


async def flood(node: Node, count: int) -> None:
    """``count`` messages on ``"chat"`` to the server, each from a new origin (free
    identities: an attacker's way past each peer's own budget)."""
    socket = socket_to(node, "server")
    for number in range(count):
        now = int(time.time() * 1000)
        message = sign_message(Identity.generate(), "chat", 1, now, {"n": number})
        await node.send(socket, build_package(PackageType.GOSSIP, "chat", message.to_body()))


def test_the_default_is_one_peers_gossip_rate() -> None:
    options = NodeOptions(client=True)
    assert options.gossip_node_rate == options.gossip_rate == 1000.0


async def test_flooders_wait_while_a_light_publisher_goes_on() -> None:
    # Found by an attacker: two throwaway identities, each within its own budget,
    # sent 2,000 messages a second of new origins; an honest origin's 5 a second
    # waited behind them for up to 8 s (and 3 s once its share was fair).
    hub = MemoryHub()
    async with (  # the server stops first: what the flooders sent is left unread
        memory_node(hub, "flood1") as flood1,
        memory_node(hub, "flood2") as flood2,
        memory_node(hub, "light") as light,
        memory_node(hub, "server", gossip_node_rate=50.0) as server,
    ):
        delivered: list[GossipMessage] = []
        server.subscribe("chat", delivered.append)
        for node in (flood1, flood2, light):
            node.subscribe("chat")
            assert node.client is not None and server.url is not None
            node.client.connect(server.url)
        await wait_for(lambda: subscribed(server, "chat", 3))
        floods = [asyncio.create_task(flood(node, 200)) for node in (flood1, flood2)]
        try:
            await wait_for(lambda: server.metrics.throttles >= 2)  # both wait
            await light.publish("chat", {"text": "hello"})
            await wait_for(lambda: any(m.origin == light.peer_id for m in delivered))
            # The flood waits its turn: its 400 messages take 8 s at 50 a second.
            assert len(delivered) < 400
        finally:
            for task in floods:
                task.cancel()


async def test_a_peer_that_answers_an_iwant_late_goes_on_being_read() -> None:
    """review90 F3: an answer to an ``iwant`` that came after the ask's 1 s timeout was
    charged as a push (unasked), and past the peer's share of them the node stopped
    reading it: the honest peer that answered late. A late answer is a pull now."""
    hub = MemoryHub()
    async with (
        memory_node(hub, "late") as late,
        memory_node(hub, "server", gossip_node_rate=1.0) as server,
    ):
        delivered: list[GossipMessage] = []
        server.subscribe("chat", delivered.append)
        late.subscribe("chat")
        assert late.client is not None and server.url is not None
        late.client.connect(server.url)
        await wait_for(lambda: subscribed(server, "chat", 1))
        identity, now = Identity.generate(), int(time.time() * 1000)
        messages = [sign_message(identity, "chat", n, now, {"n": n}) for n in (1, 2, 3)]
        router = server.gossip.router  # type: ignore[union-attr]
        # The peer announces them (it holds none: it serves nothing in time).
        ids = [message.id for message in messages]
        router.control(socket_to(server, "late").id, IHAVE, {"topic": "chat", "ids": ids})
        await wait_for(lambda: router.stats.iwant_unanswered == 3)  # timed out
        for message in messages:  # then they come, late
            body = message.to_body()
            await late.send(
                socket_to(late, "server"), build_package(PackageType.GOSSIP, "chat", body)
            )
        await wait_for(lambda: len(delivered) == 3)
        assert server.metrics.throttles == 0  # (before: 1, reading the peer paused)


def test_ipv6_peers_share_by_their_slash_48() -> None:
    """Found by an attacker: catch-up and live gossip were shared by IPv6 /64, so 90 /64s
    of one /48 (each a group of its own) starved an honest newcomer's catch-up."""
    assert share_group("2001:db8:0:1::1") == share_group("2001:db8:0:ffff::2") == "2001:db8::/48"
    assert share_group("2001:db8:1::1") == "2001:db8:1::/48"
    assert share_group("192.0.2.7") == "192.0.2.7"  # an IPv4 address: itself
    assert share_group("::ffff:192.0.2.7") == "192.0.2.7"


async def test_identities_of_one_address_share_one_share_of_the_node_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by an attacker: the node-wide budget was shared by identity, so 10 ids on
    2 addresses took 10 of 11 shares, and an honest publisher's messages waited 2-5 s.
    Peers of one address (here two nodes behind one memory host name) share one."""
    hub = MemoryHub()
    async with (
        memory_node(hub, "twin") as first,
        memory_node(hub, "server", gossip_node_rate=50.0) as server,
    ):
        second = Node(client=True, driver=MemoryDriver(hub=hub, name="twin"), **FAST)
        await second.start()
        try:
            groups: list[object] = []
            checks = server.gossip.checks.shares.pushed  # type: ignore[union-attr]
            spend = FairShare.spend

            def spy(
                fair: FairShare,
                peer: Hashable,
                now: float,
                amount: float = 1.0,
                group: object = None,
            ) -> float:
                if fair is checks:  # the server's live messages
                    groups.append(group)
                return spend(fair, peer, now, amount, group)  # type: ignore[arg-type]

            monkeypatch.setattr(FairShare, "spend", spy)
            server.subscribe("chat")
            for node in (first, second):
                node.subscribe("chat")
                assert node.client is not None and server.url is not None
                node.client.connect(server.url)
            await wait_for(lambda: subscribed(server, "chat", 2))
            await first.publish("chat", {"n": 1})
            await second.publish("chat", {"n": 2})
            await wait_for(lambda: len(groups) >= 2)
            assert groups[:2] == ["twin", "twin"]
        finally:
            await second.stop()


@pytest.mark.parametrize("relayed", [False, True])
async def test_a_hubs_log_keeps_an_origin_through_another_addresss_many_origins(
    relayed: bool,
) -> None:
    # Found by an attacker (attacker34 F1): 200 throwaway origins from one address left
    # an honest origin 50 messages of a hub's log, and new subscribers lost the rest.
    # The log shares a topic by the address that delivered the messages first: shared
    # by origin, the honest 20 here had 40 / 101 messages of room. Relayed (review44
    # F3): the flooder, also a peer of the honest publisher and a moment faster to the
    # server, delivered the honest messages first, and they counted for the flood's
    # address: the publisher's own copies, arriving after, claim them for its own.
    hub = MemoryHub()
    async with (
        memory_node(hub, "flood") as flooder,
        memory_node(hub, "light") as light,
        memory_node(hub, "server", log_max_messages=40) as server,
    ):
        delivered: list[GossipMessage] = []
        server.subscribe("chat", delivered.append)
        for node in (flooder, light):
            node.subscribe("chat")
            assert node.client is not None and server.url is not None
            node.client.connect(server.url)
        if relayed:
            assert light.client is not None and flooder.url is not None
            light.client.connect(flooder.url)
            hub.set_delay(0.2, "light", "server")
        await wait_for(lambda: subscribed(server, "chat", 2))
        await wait_for(lambda: not relayed or subscribed(flooder, "chat", 2))
        for number in range(20):
            await light.publish("chat", {"n": number})
        await wait_for(lambda: len(delivered) == 20)
        assert server.gossip is not None and server.gossip.message_log is not None
        if relayed:  # light's own copies came too
            await wait_for(lambda: server.gossip.router.stats.duplicates >= 20)
        await flood(flooder, 100)
        await wait_for(lambda: len(delivered) == 120)
        log, honest = server.gossip.message_log, stream_key("chat", light.peer_id)
        assert len(log) == 40
        assert (log.first_seq(honest), log.last_seq(honest)) == (1, 20)
