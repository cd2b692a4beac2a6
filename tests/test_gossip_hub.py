"""
tester30 F1: two clients of a hub whose threads handle no topic exchanged no gossip at
all, and nothing said so: a node relays only the topics it carries (GossipSub), so a
hub carries them with ``relay_topics``, and ``publish()`` says when nobody carries one.
Default options, over loopback WebSockets, as a new user runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import trustp2p
from trustp2p import GossipMessage, Node

from .conftest import MS, wait_for
from .storage.faults import FailingWrites

pytestmark = pytest.mark.asyncio

NOBODY = "no connected peer carries topic"


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Any]]:
    """``await nodes(create, **options)``: nodes with the default options, stopped
    after the test."""
    started: list[Node] = []

    async def make(create: Callable[..., Any], **options: Any) -> Node:
        node: Node = await create(**options)
        started.append(node)
        return node

    yield make
    for node in reversed(started):
        await node.stop()


def nobody_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    records = [r for r in caplog.records if NOBODY in r.getMessage()]
    assert all(r.levelno == logging.INFO for r in records)
    return [r.getMessage() for r in records]


async def test_a_hub_relays_the_topics_it_carries_between_its_clients(
    nodes: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trustp2p.node.gossip")
    hub = await nodes(trustp2p.create_server, port=0, relay_topics=("chat",))
    assert hub.gossip is not None and hub.gossip.topics == {"chat"}  # no thread handles it
    got: list[GossipMessage] = []
    sub = await nodes(trustp2p.create_client, peers=[hub.url])
    sub.subscribe("chat", got.append)
    pub = await nodes(trustp2p.create_client, peers=[hub.url])
    assert pub.gossip is not None
    async with asyncio.timeout(5000 * MS):
        await pub.gossip.wait_subscribers("chat")  # the hub
    ids = [await pub.publish("chat", {"text": f"hello {i}"}) for i in range(3)]
    await wait_for(lambda: len(got) == 3)  # none came, nothing said (tester30 F1)
    assert [m.id for m in got] == ids
    # Kept for catch-up (the hub's own delivery mark may come after its forwarding).
    await wait_for(lambda: [m.id for m in hub.gossip.history("chat")] == ids)
    assert nobody_lines(caplog) == []  # somebody carried it


async def test_publish_says_once_when_no_connected_peer_carries_the_topic(
    nodes: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trustp2p.node.gossip")
    hub = await nodes(trustp2p.create_server, port=0)  # its threads handle no topic
    pub = await nodes(trustp2p.create_client, peers=[hub.url])
    assert pub.client is not None
    await pub.client.wait_connected(timeout=5000 * MS)
    await wait_for(lambda: pub.gossip is not None and pub.gossip.router.peers)  # introduced
    for i in range(3):
        await pub.publish("chat", {"text": f"hello {i}"})
    [line] = nobody_lines(caplog)  # once per topic, not per message
    assert line == (
        "= no connected peer carries topic 'chat': what is published there is kept in the "
        "log, and reaches subscribers that connect and catch up (a hub relays only the "
        "topics it carries: give it relay_topics, --relay-topic chat)"
    )
    await pub.publish("other", {})
    assert len(nobody_lines(caplog)) == 2  # each topic once


async def test_publish_says_it_again_once_the_last_carrier_is_gone(
    nodes: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trustp2p.node.gossip")
    hub = await nodes(trustp2p.create_server, port=0)
    pub = await nodes(trustp2p.create_client, peers=[hub.url])
    assert pub.client is not None and pub.gossip is not None
    await pub.client.wait_connected(timeout=5000 * MS)
    await wait_for(lambda: pub.gossip is not None and pub.gossip.router.peers)  # introduced
    await pub.publish("chat", {"n": 1})
    assert len(nobody_lines(caplog)) == 1
    hub.subscribe("chat")
    async with asyncio.timeout(5000 * MS):
        await pub.gossip.wait_subscribers("chat")
    await pub.publish("chat", {"n": 2})  # carried: nothing said, and it may be said again
    hub.unsubscribe("chat")
    router = pub.gossip.router
    await wait_for(lambda: all("chat" not in router.peer_topics(s.id) for s in pub.sockets))
    await pub.publish("chat", {"n": 3})
    await pub.publish("chat", {"n": 4})
    assert len(nobody_lines(caplog)) == 2


async def test_publish_before_any_peer_is_introduced_says_nothing(
    nodes: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A thread publishing in its ``start()``, before the node listens or dials, knows
    no peer yet: the hub hint would be wrong (review31)."""
    caplog.set_level(logging.INFO, "trustp2p.node.gossip")
    alone = await nodes(trustp2p.create_server, port=0)
    await alone.publish("chat", {"n": 1})
    assert nobody_lines(caplog) == []


async def test_a_relay_topic_stays_carried_when_a_subscriber_of_it_leaves(
    nodes: Callable[..., Any],
) -> None:
    """A hub whose own code subscribed a monitor to a relayed topic, then unsubscribed
    it, stopped relaying the topic (review31): ``relay_topics`` stay carried, as the
    topics of the threads' event maps do."""
    hub = await nodes(trustp2p.create_server, port=0, relay_topics=("chat",))
    assert hub.gossip is not None
    hub.subscribe("chat", lambda message: None)
    hub.unsubscribe("chat")
    assert hub.gossip.topics == {"chat"}
    got: list[GossipMessage] = []
    sub = await nodes(trustp2p.create_client, peers=[hub.url])
    sub.subscribe("chat", got.append)
    pub = await nodes(trustp2p.create_client, peers=[hub.url])
    assert pub.gossip is not None
    async with asyncio.timeout(5000 * MS):
        await pub.gossip.wait_subscribers("chat")
    message_id = await pub.publish("chat", {"n": 1})
    await wait_for(lambda: [m.id for m in got] == [message_id])


async def test_what_a_hub_only_carries_is_counted_apart_and_waits_for_no_flush(
    nodes: Callable[..., Any],
) -> None:
    """review31 R31-5: the messages of a relay topic went to no handler, yet counted as
    delivered (``trustp2p_gossip_delivered_total``: "handed to handlers and
    subscribers"), and with ``durable_delivery`` (the default) each waited for a flush
    of the log before the next. They are ``carried`` now; their marks still move."""
    hub = await nodes(trustp2p.create_server, port=0, relay_topics=("chat",))
    assert hub.gossip is not None and hub.gossip.message_log is not None
    log = hub.gossip.message_log
    flushes: list[int] = []
    real_flush = log.flush

    async def counted_flush() -> None:
        flushes.append(1)
        await real_flush()

    log.flush = counted_flush  # type: ignore[method-assign]
    pub = await nodes(trustp2p.create_client, peers=[hub.url])
    assert pub.gossip is not None
    async with asyncio.timeout(5000 * MS):
        await pub.gossip.wait_subscribers("chat")
    ids = [await pub.publish("chat", {"n": i}) for i in range(3)]
    await wait_for(lambda: [m.id for m in hub.gossip.history("chat")] == ids)
    assert (hub.gossip.delivered, hub.gossip.carried) == (0, 3)
    assert hub.metrics.topic_delivered.get("chat", 0) == 0
    assert flushes == []
    got: list[GossipMessage] = []
    hub.subscribe("chat", got.append)  # now something handles it
    ids.append(await pub.publish("chat", {"n": 3}))
    await wait_for(lambda: [m.id for m in got] == ids[3:])
    await wait_for(lambda: len(flushes) == 1)
    assert (hub.gossip.delivered, hub.gossip.carried) == (1, 3)


async def test_a_client_that_rejects_what_others_publish_keeps_its_hub(
    nodes: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an attacker: a hub of ``relay_topics`` runs no validator, so it passes on
    whatever a client publishes; a client whose validator REJECTed those messages
    counted each against the hub, and after a few dozen (two on a quiet connection)
    every such client blocked the hub for an hour. A relayed message is held against
    its sender only when the sender is its origin; otherwise it is said (naming the
    origin), and the hub stays."""
    from trustp2p import Validation

    hub = await nodes(trustp2p.create_server, port=0, relay_topics=("chat",))
    victim = await nodes(trustp2p.create_client, peers=[hub.url])
    assert victim.gossip is not None and victim.client is not None
    victim.gossip.set_validator(
        "chat", lambda m: Validation.REJECT if "junk" in m.body else Validation.ACCEPT
    )
    got: list[GossipMessage] = []
    victim.subscribe("chat", got.append)
    mallory = await nodes(trustp2p.create_client, peers=[hub.url])
    assert mallory.gossip is not None
    async with asyncio.timeout(5000 * MS):
        await mallory.gossip.wait_subscribers("chat")
    caplog.set_level(logging.WARNING, "trustp2p")
    for i in range(40):
        await mallory.publish("chat", {"junk": i})
    honest = await mallory.publish("chat", {"text": "still here"})
    await wait_for(lambda: [m.id for m in got] == [honest])
    assert victim.gossip.router.stats.invalid == 40
    assert victim.client.sockets and victim.client.sockets[0].stats.invalid_in == 0
    assert victim.store is not None and victim.store.blocked_for(peer_id=hub.peer_id) is None
    said = [r.getMessage() for r in caplog.records if "rejected by its validator" in r.getMessage()]
    assert said and f"of {mallory.peer_id} on 'chat'" in said[0]
    assert "relayed by this peer, which we dialled: not held against it" in said[0]


@pytest.mark.parametrize("secure", [True, False])
async def test_a_peer_that_dialled_us_answers_for_what_it_relays(
    nodes: Callable[..., Any], secure: bool
) -> None:
    """review33: with only the origin blamed, a peer that dialled a node sent it junk
    signed by a fresh key each time (or, on a plain connection, marked as relayed)
    and was never blamed (200 rejected, no penalty). A peer that dialled us answers
    for what it sends; one we dialled (a hub) doesn't, for others' messages."""
    import time

    from trustp2p import Validation
    from trustp2p.identity import Identity
    from trustp2p.protocol.gossip import sign_message
    from trustp2p.protocol.package import PackageType, build_package

    victim = await nodes(trustp2p.create_server, port=0, secure=secure)
    assert victim.gossip is not None and victim.server is not None
    victim.gossip.set_validator(
        "chat", lambda m: Validation.REJECT if "junk" in m.body else Validation.ACCEPT
    )
    victim.subscribe("chat", lambda message: None)
    mallory = await nodes(trustp2p.create_client, peers=[victim.url], secure=secure)
    assert mallory.client is not None
    socket = await mallory.client.connection_to(victim.url, timeout=5000 * MS)
    await wait_for(lambda: victim.server.sockets)
    for i in range(5):
        junk = sign_message(Identity.generate(), "chat", 1, int(time.time() * 1000), {"junk": i})
        package = build_package(PackageType.GOSSIP, "chat", junk.to_body(hops=1))
        mallory.send_package(socket, package)
    await wait_for(lambda: victim.gossip.router.stats.invalid == 5)
    assert [s.stats.invalid_in for s in victim.server.sockets] == [5]


async def test_while_writes_fail_a_delivery_tries_no_write_of_its_own(
    nodes: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """tester41 F1: with ``durable_delivery`` (the default) each message delivered
    flushed the log; on a full disk each flush wrote the whole backlog again until the
    error (5,000 unsaved messages kept an idle node's core 90-99 % busy: 0.5 % now).
    While writes fail, the flush task's retries alone try."""
    node = await nodes(trustp2p.create_server, port=0, cwd=tmp_path)
    assert node.gossip is not None and node.gossip.message_log is not None
    got: list[GossipMessage] = []
    node.subscribe("chat", got.append)
    disk = FailingWrites(monkeypatch, node.gossip.message_log, OSError(28, "No space"))
    await node.publish("chat", {"n": 0})
    await wait_for(lambda: len(got) == 1 and disk.tries >= 1)
    tries = disk.tries
    for n in range(1, 51):
        await node.publish("chat", {"n": n})
    await wait_for(lambda: len(got) == 51)
    assert disk.tries <= tries + 2  # (the flush task's retries: 1 s, then 2 s, ...)
