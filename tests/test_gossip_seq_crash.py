"""
A publisher's sequence numbers across a crash (tester31 F1): what ``publish()`` sent is
numbered on disk first, so a publisher killed with ``kill -9`` and restarted numbers its
next messages past it; and a receiver that gets a second, different message for an
``(origin, seq)`` it holds says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import trustp2p
from trustp2p import Node, PackageType
from trustp2p.drivers.memory import MemoryDriver, MemoryHub
from trustp2p.identity import Identity
from trustp2p.node.gossip_catchup import Fetcher
from trustp2p.protocol.gossip import FETCH, MAX_SEQ, GossipMessage, sign_message, stream_key
from trustp2p.protocol.package import build_package
from trustp2p.storage.msglog import LOG_FILE, MessageLog

from .conftest import MS, stays, wait_for


def _killed_copy(cwd: Path, name: str, into: Path) -> None:
    """What a ``kill -9`` of the node running in ``cwd`` would leave now, in ``into``:
    its identity, and its message log as committed (SQLite's backup reads just that)."""
    shutil.copytree(cwd / "identity", into / "identity", ignore=shutil.ignore_patterns("*.lock"))
    (into / "threads-enabled").mkdir()
    (into / "data" / name).mkdir(parents=True)
    source = sqlite3.connect(cwd / "data" / name / LOG_FILE)
    target = sqlite3.connect(into / "data" / name / LOG_FILE)
    with contextlib.closing(source), contextlib.closing(target):
        source.backup(target)


async def test_a_publisher_killed_after_publishing_numbers_its_next_messages_past_them(
    tmp_path: Path,
) -> None:
    """Found by a tester: the counter was written behind (every second), so a publisher
    killed just after publishing numbered its next messages as its last ones after the
    restart, and its peers dropped them as already held."""
    first, again = tmp_path / "first", tmp_path / "again"
    (first / "threads-enabled").mkdir(parents=True)
    node = await trustp2p.create_node(cwd=first, port=0, name="pub")
    try:
        for n in range(3):
            await node.publish("chat", {"n": n})
        _killed_copy(first, "pub", again)  # killed as soon as the last publish() returned
    finally:
        await node.stop()
    node = await trustp2p.create_node(cwd=again, port=0, name="pub")
    try:
        assert node.gossip is not None and node.gossip.message_log is not None
        stream = stream_key("chat", node.peer_id)
        assert node.gossip.message_log.last_seq(stream) == 3  # the messages too
        await node.publish("chat", {"n": 3})
        assert node.gossip.message_log.last_seq(stream) == 4
    finally:
        await node.stop()


@pytest.mark.parametrize("lost", ["deleted", "corrupt"])
async def test_a_publisher_that_lost_its_log_numbers_past_what_its_peers_keep(
    tmp_path: Path, lost: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a tester: a publisher whose message log was deleted, or corrupt and
    moved aside, numbered its messages from 1 again; every peer dropped them."""
    hub_dir, pub_dir = tmp_path / "hub", tmp_path / "pub"
    for path in (hub_dir, pub_dir):
        (path / "threads-enabled").mkdir(parents=True)
    hub = await trustp2p.create_server(cwd=hub_dir, port=0, relay_topics=["chat"])
    try:
        assert hub.url is not None and hub.gossip is not None
        for run in range(2):
            if run:  # the log lost, the identity kept
                log_file = pub_dir / "data" / LOG_FILE
                for extra in pub_dir.glob(f"data/{LOG_FILE}-*"):
                    extra.unlink()
                if lost == "deleted":
                    log_file.unlink()
                else:
                    log_file.write_bytes(b"not a database" * 100)
            pub = await trustp2p.create_client(cwd=pub_dir, peers=[hub.url])
            try:
                assert pub.client is not None
                await pub.client.wait_connected()
                for n in range(3):
                    await pub.publish("chat", {"run": run, "n": n})
                await wait_for(lambda want=3 * (run + 1): len(hub.gossip.history("chat")) == want)
            finally:
                await pub.stop()
        kept = [(m.seq, json.loads(m.data)["run"]) for m in hub.gossip.history("chat")]
        assert kept == [(s + 1, s // 3) for s in range(6)]  # none dropped as seen
        said = [r for r in caplog.records if "numbers on from there" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.WARNING]
        assert "up to seq 3" in said[0].getMessage()
    finally:
        await hub.stop()


async def test_a_peer_that_claims_our_numbers_without_our_message_moves_nothing() -> None:
    """Only a message of ours, signed, proves a number used: a peer claiming the last
    number there is would have ended our publishing (MAX_SEQ)."""
    hub = await trustp2p.create_server(port=0, relay_topics=["chat"])
    try:
        entries = hub.handlers.get(PackageType.REQUEST, FETCH)
        thread, _ = entries[0]
        entries[0] = (thread, lambda socket, package: {"messages": [], "last": MAX_SEQ})
        assert hub.url is not None
        pub = await trustp2p.create_client(peers=[hub.url])
        try:
            assert pub.client is not None and pub.gossip is not None
            await pub.client.wait_connected()
            await pub.publish("chat", {"n": 1})
            log = pub.gossip.message_log
            assert log is not None and log.last_seq(stream_key("chat", pub.peer_id or "")) == 1
        finally:
            await pub.stop()
    finally:
        await hub.stop()


async def test_a_publish_on_a_known_topic_waits_for_no_look_at_another() -> None:
    """Found in review: the look ran under the lock every publish takes; one peer that
    didn't answer held every publish, on every topic, a second per new topic."""
    hub = await trustp2p.create_server(port=0, relay_topics=["a", "b"])
    try:
        entries = hub.handlers.get(PackageType.REQUEST, FETCH)
        thread, _ = entries[0]

        async def silent(socket: Any, package: Any) -> None:
            await asyncio.sleep(3600)

        entries[0] = (thread, silent)
        assert hub.url is not None
        pub = await trustp2p.create_client(peers=[hub.url])
        try:
            assert pub.client is not None
            await pub.client.wait_connected()
            await pub.publish("a", {"n": 1})  # a first publish: it looked (1 s at most)
            looking = asyncio.ensure_future(pub.publish("b", {"n": 1}))
            await asyncio.sleep(0)
            await pub.publish("a", {"n": 2})  # a known topic: no look to wait for
            assert not looking.done()
            await looking
        finally:
            await pub.stop()
    finally:
        await hub.stop()


async def test_waits_for_the_write_share_it_and_a_log_in_memory_has_none(tmp_path: Path) -> None:
    log = await MessageLog.open(tmp_path / LOG_FILE, flush_interval=3600.0)
    writes = 0
    assert log._db is not None
    write = log._db.write

    def counted(batch: Any) -> None:
        nonlocal writes
        writes += 1
        write(batch)

    log._db.write = counted  # type: ignore[method-assign]
    try:
        seqs = [log.next_seq("chat\0me") for _ in range(3)]
        assert await asyncio.gather(*(log.written() for _ in seqs)) == [True] * 3
        assert writes == 1
        log.next_seq("chat\0me")
        waiter = asyncio.ensure_future(log.written())
        await asyncio.sleep(0)
        waiter.cancel()  # cancelling a wait doesn't cancel the write, nor the others'
        assert await log.written() is True
        assert writes == 2
    finally:
        await log.close()
    memory = await MessageLog.open(None)
    try:
        memory.next_seq("chat\0me")
        coroutine = memory.written()
        with pytest.raises(StopIteration) as done:  # True at once: it never suspends
            coroutine.send(None)
        assert done.value.value is True
    finally:
        await memory.close()


async def test_a_second_message_signed_for_a_held_seq_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A different message for an ``(origin, seq)`` delivered or held: dropped (the
    first one counts), with a WARNING naming the origin and the seq; a copy of the same
    message says nothing."""
    hub = MemoryHub()
    options: dict[str, Any] = {"peer_exchange": False, "target_outbound": 0}
    node = Node(server=True, port=1, host="a", driver=MemoryDriver(hub=hub, name="a"), **options)
    peer = Node(client=True, peers=["memory://a:1"], driver=MemoryDriver(hub=hub), **options)
    got: list[GossipMessage] = []
    origin = Identity.generate()
    now = int(time.time() * 1000)
    first, held = (sign_message(origin, "chat", seq, now, {"run": "A"}) for seq in (1, 3))
    other, other_held = (sign_message(origin, "chat", seq, now, {"run": "B"}) for seq in (1, 3))
    caplog.set_level(logging.WARNING, logger="trustp2p")
    async with node, peer:
        assert node.gossip is not None and peer.client is not None
        node.gossip.subscribe("chat", got.append)
        await peer.client.wait_connected()

        def send(message: GossipMessage) -> None:
            package = build_package(PackageType.GOSSIP, "chat", message.to_body())
            assert peer.client is not None
            peer.send_package(peer.client.sockets[0], package)

        send(first)
        await wait_for(lambda: len(got) == 1)
        send(held)  # held behind the gap at 2
        send(first)
        send(held)  # copies: silent
        assert await stays(lambda: not caplog.records, 50 * MS)
        send(other)  # seq 1 again, delivered already
        send(other_held)  # seq 3 again, held
        await wait_for(lambda: len(caplog.records) == 2)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"! origin {origin.peer_id} signed two messages with seq {seq} on 'chat': a restarted "
        "publisher that lost its counter, or a copied identity? (the first one counts, the "
        "other dropped)"
        for seq in (1, 3)
    ]
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2
    assert [m.id for m in got] == [first.id]


async def test_a_publish_cancelled_while_its_message_is_written_still_sends_it(
    tmp_path: Path,
) -> None:
    """It has its seq: left unsent, every subscriber would wait ``gap_timeout`` for it."""
    (tmp_path / "threads-enabled").mkdir()
    node = await trustp2p.create_node(cwd=tmp_path, port=0, name="pub")
    got: list[int] = []
    try:
        assert node.gossip is not None
        node.gossip.subscribe("chat", lambda message: got.append(message.seq))
        publishing = asyncio.ensure_future(node.publish("chat", {"n": 1}))
        for _ in range(2):  # signed (one turn), then waiting for the write
            await asyncio.sleep(0)
        assert not publishing.done()
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing
        await node.publish("chat", {"n": 2})
        await wait_for(lambda: got == [1, 2])
    finally:
        await node.stop()


@pytest.mark.parametrize("with_data", [False, True])
async def test_a_publish_cancelled_once_signed_is_still_sent_in_turn(
    tmp_path: Path, with_data: bool
) -> None:
    """review34: a publish() cancelled just after it signed (its seq taken and logged)
    was never sent, a gap for every subscriber and its own node; one cancelled while
    its write was pending went out at once, ahead of earlier ones and their writes. A
    signed message is sent whatever becomes of its call, in turn, after its write."""
    (tmp_path / "threads-enabled").mkdir()
    node = await trustp2p.create_node(
        port=0, name="pub", **({"cwd": tmp_path} if with_data else {})
    )
    try:
        assert node.gossip is not None
        got: list[int] = []
        node.gossip.subscribe("chat", lambda m: got.append(m.seq))
        for _ in range(2):  # cancelled in the lock after signing, then later
            first = asyncio.ensure_future(node.publish("chat", {"n": 1}))
            await asyncio.sleep(0)
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
        await node.publish("chat", {"n": 3})
        await wait_for(lambda: got == [1, 2, 3])
    finally:
        await node.stop()


async def test_a_publisher_restored_from_a_backup_numbers_past_what_its_peers_keep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a tester: a publisher whose data was restored from an older backup knew
    the topic, so it didn't look, and numbered its next messages as the ones published
    since the backup: every peer dropped them as seen. The first publish on a topic in
    each run looks (only a message a peer proves counts)."""
    hub_dir, pub_dir, backup = tmp_path / "hub", tmp_path / "pub", tmp_path / "backup"
    for path in (hub_dir, pub_dir):
        (path / "threads-enabled").mkdir(parents=True)
    hub = await trustp2p.create_server(cwd=hub_dir, port=0, relay_topics=["chat"])
    try:
        assert hub.url is not None and hub.gossip is not None
        for run, count in enumerate((3, 2, 3)):
            if run == 1:
                shutil.copytree(pub_dir / "data", backup)
            if run == 2:
                shutil.rmtree(pub_dir / "data")
                shutil.copytree(backup, pub_dir / "data")
            pub = await trustp2p.create_client(cwd=pub_dir, peers=[hub.url])
            try:
                assert pub.client is not None and pub.gossip is not None
                await pub.client.wait_connected()
                for n in range(count):
                    await pub.publish("chat", {"run": run, "n": n})
                want = (3, 5, 8)[run]
                await wait_for(lambda want=want: len(hub.gossip.history("chat")) == want)
            finally:
                await pub.stop()
        kept = [(m.seq, json.loads(m.data)["run"]) for m in hub.gossip.history("chat")]
        assert kept == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 2), (7, 2), (8, 2)]
    finally:
        await hub.stop()


async def test_the_claims_are_proven_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an attacker: three peers claiming a number they never proved held a
    first publish OWN_MARK_WAIT each, in turn (3.9 s); the proofs are asked at once."""
    hubs = [await trustp2p.create_server(port=0, relay_topics=["chat"]) for _ in range(3)]
    in_flight, most = 0, 0

    async def proves(fetcher: Fetcher, socket: Any, topic: str, origin: str, seq: int) -> bool:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return False

    monkeypatch.setattr(Fetcher, "_proves", proves)
    try:
        for hub in hubs:
            entries = hub.handlers.get(PackageType.REQUEST, FETCH)
            thread, _ = entries[0]
            entries[0] = (thread, lambda socket, package: {"messages": [], "last": 10})
        pub = await trustp2p.create_client(peers=[hub.url for hub in hubs if hub.url])
        try:
            assert pub.client is not None
            await wait_for(lambda: len(pub.sockets) == 3)
            await pub.publish("chat", {"n": 1})
            assert most == 3
        finally:
            await pub.stop()
    finally:
        for hub in hubs:
            await hub.stop()
