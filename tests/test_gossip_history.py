"""``gossip.history()`` and ``gossip.delivered_seq()``: what a node delivered, in the order
it delivered it (tester30 F2), and up to where its handlers ran (tester30 F4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from trustp2p import EventMap, Node, PackageType, Socket, Thread
from trustp2p.drivers.memory import MemoryHub
from trustp2p.identity import Identity
from trustp2p.node.gossip_log import delivered, to_logged, undelivered
from trustp2p.protocol.gossip import GossipMessage, sign_message, stream_key
from trustp2p.storage.memory import MemoryShelf
from trustp2p.storage.msglog import MessageLog

from .conftest import wait_for
from .test_gossip_behaviour import gossip, memory_node, subscribed


class KeyValue(Thread):
    """The README's pattern: a store rebuilt from ``history()`` in ``start()``, then
    kept up by the handler; ``applied`` is what it applied, in turn."""

    store: dict[str, Any]
    applied: list[tuple[str, int]]

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"kv": self.on_kv}}

    async def start(self) -> None:
        self.store, self.applied = {}, []
        for message in gossip(self.node).history("kv"):
            self.store[message.body["k"]] = message.body["v"]

    def on_kv(self, socket: Socket | None, message: GossipMessage) -> None:
        self.store[message.body["k"]] = message.body["v"]
        self.applied.append((message.origin, message.seq))


def key_value(node: Node) -> KeyValue:
    return next(t for t in node.threads if isinstance(t, KeyValue))


async def test_history_is_in_delivery_order_and_a_restart_rebuilds_the_last_value() -> None:
    """tester30 F2: ``x`` set through a, then b, then a; after b restarted, the store it
    rebuilt from ``history()`` had b's value (listed origin by origin), not a's last."""
    hub, shelf = MemoryHub(), MemoryShelf()
    a = memory_node(hub, "a", threads=[KeyValue])
    await a.start()
    b = memory_node(hub, "b", peers=["memory://a:1"], threads=[KeyValue], store_shelf=shelf)
    try:
        await b.start()
        await wait_for(lambda: subscribed(a, "kv", 1) and subscribed(b, "kv", 1))
        for n, node in enumerate([a, b, a], 1):
            await node.publish("kv", {"k": "x", "v": n})
            await wait_for(lambda n=n: all(len(key_value(x).applied) == n for x in (a, b)))
        for node in (a, b):
            assert key_value(node).store == {"x": 3}
            order = [(m.origin, m.seq) for m in gossip(node).history("kv")]
            assert order == key_value(node).applied
        await b.stop()
        b = memory_node(hub, "b", peers=["memory://a:1"], threads=[KeyValue], store_shelf=shelf)
        await b.start()
        assert key_value(b).store == {"x": 3}
        assert key_value(b).applied == []
    finally:
        await b.stop()
        await a.stop()


async def test_a_gap_filled_late_puts_its_stream_where_it_could_be_delivered() -> None:
    """Logged a2, b1, a1 (a1 fetched to fill a gap): delivered b1, then a1 and a2. Each
    origin's messages stay in seq order, in history() and in a replay after a crash."""
    a, b = Identity.generate(), Identity.generate()
    log = await MessageLog.open(None, clock=time.time)
    try:
        for origin, seq in [(a, 2), (b, 1), (a, 1), (b, 2)]:
            log.add(to_logged(sign_message(origin, "kv", seq, 1_700_000_000_000, {})))
        order = [(m.origin, m.seq) for m in undelivered(log, "kv", log)]
        assert order == [(b.peer_id, 1), (a.peer_id, 1), (a.peer_id, 2), (b.peer_id, 2)]
        assert delivered(log, "kv", log) == []
        for origin in (a, b):
            log.mark_delivered(stream_key("kv", origin.peer_id), 2)
        assert [(m.origin, m.seq) for m in delivered(log, "kv", log)] == order
        assert undelivered(log, "kv", log) == []
    finally:
        await log.close()


async def test_replay_reads_no_message_when_every_stream_is_delivered() -> None:
    """review31 R31-4: each ``subscribe()`` on a running node replays the topic, and the
    replay walked the topic's whole log (1.3 ms on 10,000 messages) even with nothing
    past the marks; now it only compares each stream's last number with its mark. A
    message held past a gap (above the contiguous high-water mark) still counts."""
    a = Identity.generate()
    stream = stream_key("kv", a.peer_id)
    log = await MessageLog.open(None, clock=time.time)
    try:
        for seq in (1, 2, 3, 5):
            log.add(to_logged(sign_message(a, "kv", seq, 1_700_000_000_000, {})))
        log.mark_delivered(stream, 3)
        assert [m.seq for m in undelivered(log, "kv", log)] == [5]
        log.mark_delivered(stream, 5)

        def no_scan(topic: str) -> Any:
            raise AssertionError(f"{topic}'s log was scanned")

        log.logged_order = no_scan  # type: ignore[method-assign]
        assert undelivered(log, "kv", log) == []
        assert undelivered(log, "other", log) == []
    finally:
        await log.close()


class Slow(Thread):
    """A GOSSIP handler that waits for ``gate`` at its second message."""

    gate: asyncio.Event
    handled: int

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"kv": self.on_kv}}

    async def start(self) -> None:
        self.gate, self.handled = asyncio.Event(), 0

    async def on_kv(self, socket: Socket | None, message: GossipMessage) -> None:
        if message.seq == 2:
            await self.gate.wait()
        self.handled += 1


async def test_delivered_seq_is_what_the_handlers_handled() -> None:
    """tester30 F4: ``delivered_seq()`` said 300 while a slow handler had handled 50
    (and ``history()`` listed 50): it counted the messages queued for the handlers."""
    node = memory_node(MemoryHub(), "a", threads=[Slow])
    await node.start()
    try:
        thread = next(t for t in node.threads if isinstance(t, Slow))
        assert node.peer_id is not None
        for n in range(5):
            await node.publish("kv", {"n": n})
        await wait_for(lambda: thread.handled == 1)  # and the second waits for the gate
        assert gossip(node).delivered_seq("kv", node.peer_id) == 1
        assert len(gossip(node).history("kv")) == 1
        thread.gate.set()
        await wait_for(lambda: gossip(node).delivered_seq("kv", node.peer_id) == 5)
        assert thread.handled == 5
        assert len(gossip(node).history("kv")) == 5
    finally:
        await node.stop()
