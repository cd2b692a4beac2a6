"""A flood of gossip faster than the handlers take it waits in the sender's buffers,
not in the node's memory (the delivery backlog's bound), over real loopback sockets."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from trustp2p.admin.collector import node_registry
from trustp2p.admin.status import TopicRates, node_status
from trustp2p.node.gossip_delivery import MAX_WAITING_BYTES
from trustp2p.node.gossip_validate import Validation
from trustp2p.protocol.gossip import GossipMessage

from .conftest import stays
from .nodes import MakeNode, wait_for
from .test_concurrency import HEARTBEAT


async def test_a_flood_faster_than_the_handlers_pauses_its_sender(make_node: MakeNode) -> None:
    gate = asyncio.Event()
    got: list[int] = []

    async def slow(message: GossipMessage) -> None:
        await gate.wait()
        got.append(message.seq)

    # A short heartbeat (a ping every 0.3 s): held longer than that, the client is
    # still not taken for gone (its pongs wait unread, as a paused inbox's do). A second
    # to take our bytes, not 0.2 s: the client, busy publishing 20 MB on a loaded CI
    # machine, once read nothing for 0.2 s and was dropped as lost (CI115, CI126).
    server = await make_node(server=True, **{**HEARTBEAT, "heartbeat_response_timeout": 1.0})
    server.subscribe("chat", slow)
    client = await make_node(client=True, peers=[server.url])
    await client.client.wait_connected()  # type: ignore[union-attr]
    client.subscribe("chat")
    count, size = 200, 100_000  # 20 MB, over the bound of 16 MiB
    assert count * size > MAX_WAITING_BYTES
    publishing = asyncio.gather(*(client.publish("chat", {"x": "a" * size}) for _ in range(count)))
    await wait_for(lambda: len(server.sockets) == 1)
    conn = server.connection(server.sockets[0])
    assert conn is not None
    await wait_for(lambda: conn.held, timeout=10)
    assert await stays(lambda: conn.held and not conn.socket.closed, 1.0)
    assert server.metrics.lost_peers == 0
    # What an operator sees: /metrics and /status.json.
    assert "trustp2p_held_peers 1.0" in generate_latest(node_registry(server)).decode()
    (peer,) = node_status(server, TopicRates(server.metrics.started))["peers"]
    assert peer["held"] is True
    gate.set()
    await wait_for(lambda: len(got) == count, timeout=20)
    await publishing
    assert got == list(range(1, count + 1)) and not conn.held and conn.can_read()


async def test_a_slow_subscriber_behind_a_relay_gets_everything_and_keeps_its_link(
    make_node: MakeNode,
) -> None:
    """The subscriber (its handlers slow) sheds the messages of the one origin past its
    backlog's bound rather than stop reading the relay (attacker43 F2: a relay held
    sends nothing else), and catches up with the relay once its handlers go on. (A
    smaller send queue on the relay than its default 16 MiB, as when the relay dropped
    its pushes to the subscriber that stopped reading.)"""
    got: list[int] = []
    gate = asyncio.Event()

    async def slow(message: GossipMessage) -> None:
        await gate.wait()  # all of it published first: the subscriber stops reading
        got.append(message.seq)

    relay = await make_node(server=True, max_send_bytes=2**21)
    relay.subscribe("chat")
    subscriber = await make_node(client=True, peers=[relay.url])
    subscriber.subscribe("chat", slow)
    publisher = await make_node(client=True, peers=[relay.url])
    publisher.subscribe("chat")
    for node in (subscriber, publisher):
        await node.client.wait_connected()  # type: ignore[union-attr]
    await wait_for(lambda: len(relay.sockets) == 2)
    link = subscriber.sockets[0]
    count = 320  # 32 MB: more than the subscriber's backlog (16 MiB), the relay's queue
    for _ in range(count):  # (2 MiB) and the kernel's buffers between them
        await publisher.publish("chat", {"x": "a" * 100_000})
    # (Long waits: a loaded machine moves the 32 MB slowly; found flaky at 5 s.)
    await wait_for(lambda: subscriber.metrics.gossip_shed > 0, timeout=20)
    gate.set()
    await wait_for(lambda: len(got) == count, timeout=60)
    assert got == list(range(1, count + 1))
    assert relay.metrics.stall_disconnects == 0
    assert subscriber.sockets == [link] and not link.closed


async def test_a_stuck_topic_holds_no_honest_peer_of_another_topic(make_node: MakeNode) -> None:
    # Found in review and by a tester: with one bound for all topics, a topic whose
    # handler waits held every peer that sent gossip of any topic, until it drained.
    gate = asyncio.Event()
    fast: list[int] = []

    async def stuck(message: GossipMessage) -> None:
        await gate.wait()

    server = await make_node(server=True)
    server.subscribe("slow", stuck)
    server.subscribe("fast", lambda message: fast.append(message.seq))
    flooder = await make_node(client=True, peers=[server.url])
    honest = await make_node(client=True, peers=[server.url])
    for node in (flooder, honest):
        await node.client.wait_connected()  # type: ignore[union-attr]
    flooder.subscribe("slow")
    honest.subscribe("fast")
    await wait_for(lambda: len(server.sockets) == 2)
    count, size = 200, 100_000
    publishing = asyncio.gather(*(flooder.publish("slow", {"x": "a" * size}) for _ in range(count)))

    def held() -> int:
        return sum(1 for s in server.sockets if (c := server.connection(s)) and c.held)

    await wait_for(lambda: held() == 1, timeout=20)  # the flooder
    for n in range(5):
        await honest.publish("fast", {"n": n})
    await wait_for(lambda: fast == [1, 2, 3, 4, 5], timeout=10)
    assert held() == 1
    gate.set()
    await publishing


async def test_a_relayed_flood_of_a_slow_topic_holds_not_the_relay(make_node: MakeNode) -> None:
    """Found by an attacker (attacker43 F2): one origin's flood of a topic whose
    validator is slow, relayed by an honest hub, held the hub, and with it every other
    topic (15-20 s late), request and ping it carried. Its messages over the origin's
    share are shed, and fetched by catch-up once the topic drains: all delivered, in
    order."""
    gate = asyncio.Event()
    slow: list[int] = []
    chat: list[int] = []

    async def validator(message: GossipMessage) -> Validation:
        await gate.wait()
        return Validation.ACCEPT

    hub = await make_node(server=True)
    hub.subscribe("slow")
    hub.subscribe("chat")
    node = await make_node(client=True, peers=[hub.url])
    node.subscribe("slow", lambda message: slow.append(message.seq))
    node.subscribe("chat", lambda message: chat.append(message.seq))
    node.gossip.set_validator("slow", validator)
    flooder = await make_node(client=True, peers=[hub.url])
    honest = await make_node(client=True, peers=[hub.url])
    for peer in (node, flooder, honest):
        await peer.client.wait_connected()  # type: ignore[union-attr]
    flooder.subscribe("slow")
    honest.subscribe("chat")
    await wait_for(lambda: len(hub.sockets) == 3)
    await hub.gossip.wait_subscribers("slow", 2)
    count, size = 200, 100_000  # 20 MB, over the bound of 16 MiB
    for _ in range(count):
        await flooder.publish("slow", {"x": "a" * size})
    full = MAX_WAITING_BYTES - 2 * size
    await wait_for(lambda: node.gossip.waiting_bytes > full, timeout=20)
    for n in range(5):  # another topic through the same hub goes on
        await honest.publish("chat", {"n": n})
    await wait_for(lambda: chat == [1, 2, 3, 4, 5], timeout=10)
    (link,) = node.sockets
    conn = node.connection(link)
    assert conn is not None and not conn.held and node.metrics.gossip_shed > 0
    assert "trustp2p_gossip_shed_total" in generate_latest(node_registry(node)).decode()
    gate.set()
    await wait_for(lambda: len(slow) == count, timeout=60)
    assert slow == list(range(1, count + 1)) and node.sockets == [link]
