"""Handlers side by side: requests of one connection run concurrently up to
``max_concurrent_requests``; talks and hooks keep their order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from trustp2p import (
    ConnectionClosed,
    EventMap,
    Node,
    Package,
    PackageType,
    RemoteError,
    Socket,
    Thread,
)
from trustp2p.drivers.memory import MemoryDriver, MemoryHub

from .conftest import stays
from .nodes import MakeNode, wait_for

HEARTBEAT = {
    "heartbeat_interval": 0.05,
    "heartbeat_jitter": 0.01,
    "heartbeat_timeout": 0.3,
    "heartbeat_response_timeout": 0.2,
}
"""Short liveness timings: a peer is pinged every 0.3 s and has 0.2 s to answer."""


class Gate(Thread):
    """``slow`` requests wait for the gate; ``fast`` ones answer at once; talks are
    recorded in order."""

    def start(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0
        self.started = 0
        self.cancelled = 0
        self.most = 0
        self.talks: list[int] = []

    @property
    def event_map(self) -> EventMap:
        return {
            PackageType.REQUEST: {"slow": self.slow, "fast": self.fast},
            PackageType.TALK: {"note": self.note},
        }

    async def slow(self, socket: Socket, package: Package) -> dict[str, Any]:
        self.running += 1
        self.started += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return {"slow": package.body["n"]}

    async def fast(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"fast": True}

    async def note(self, socket: Socket, package: Package) -> None:
        await asyncio.sleep(0)  # a suspension: order must hold across it
        if package.body.get("wait"):  # holds up the connection's next packages
            await self.gate.wait()
        self.talks.append(package.body["n"])


async def connected(
    make_node: MakeNode, thread: type[Thread], **options: Any
) -> tuple[Node, Node, Socket]:
    """A server running ``thread`` (with ``options``), and a client connected to it."""
    server = await make_node(server=True, threads=[thread], **options)
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    return server, client, client.client.sockets[0]


def gate_of(node: Any) -> Gate:
    return next(t for t in node.threads if isinstance(t, Gate))


async def test_a_slow_handler_does_not_hold_up_the_next_request(make_node: MakeNode) -> None:
    server, client, socket = await connected(make_node, Gate)
    slow = asyncio.ensure_future(client.client.request(socket, "slow", {"n": 1}))
    await wait_for(lambda: gate_of(server).running == 1)
    # The slow one is still running: the fast one is answered anyway.
    assert await client.client.request(socket, "fast", {}) == {"fast": True}
    assert not slow.done()
    gate_of(server).gate.set()
    assert await slow == {"slow": 1}


async def test_concurrency_is_bounded_per_connection(make_node: MakeNode) -> None:
    server, client, socket = await connected(make_node, Gate, max_concurrent_requests=3)
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n})) for n in range(8)
    ]
    gate = gate_of(server)
    await wait_for(lambda: gate.running == 3)
    gate.gate.set()
    assert await asyncio.gather(*requests) == [{"slow": n} for n in range(8)]
    assert gate.most == 3


async def test_the_requests_of_a_closed_connection_are_abandoned(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Default options (16 slots). The requester was told the connection closed, and may
    # ask another peer: the handlers still running are cancelled (they would do the work
    # twice, and a peer could keep tasks busy by dropping connections), the requests still
    # queued never start; the talk queued behind them still runs, then the close hook.
    server, client, socket = await connected(make_node, Gate)
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n})) for n in range(18)
    ]
    await client.client.send_talk(socket, "note", {"n": 1})
    gate = gate_of(server)
    await wait_for(lambda: gate.running == 16 and server.metrics.packages_in[PackageType.TALK] >= 2)
    with caplog.at_level(logging.INFO, logger="trustp2p"):
        await socket.close()
        await wait_for(lambda: gate.running == 0 and gate.talks == [1])
    assert server.metrics.requests_abandoned == 18
    assert (gate.started, gate.cancelled) == (16, 16)
    assert "requests left unanswered by the close: 16 running (cancelled), 2 queued" in caplog.text
    for request in requests:
        with pytest.raises(ConnectionClosed):
            await request


async def test_large_requests_are_bounded_by_bytes_too(make_node: MakeNode) -> None:
    # Found by an attacker's test: the bounds counted packages, so 60 requests of 1 MB
    # to a slow handler held about 94 MB per connection (16 running, 32 queued). Default
    # options: max_pending_bytes (4 MiB) bounds what runs and waits, whatever the count.
    server, client, socket = await connected(make_node, Gate)
    pad = "x" * 400_000
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n, "pad": pad}))
        for n in range(40)
    ]
    gate = gate_of(server)
    # 4 MiB holds 5 of these (each counts its text and the string read from it, 800 KB):
    # at most one more runs (the one that crossed the bound).
    await wait_for(lambda: gate.running >= 5)
    assert await stays(lambda: gate.running <= 6, 0.3)
    gate.gate.set()
    answers = await asyncio.gather(*requests)
    assert [answer["slow"] for answer in answers] == list(range(40))
    assert gate.most <= 6


async def test_requests_are_bounded_by_what_their_bodies_take_read(make_node: MakeNode) -> None:
    # Found by an attacker: 1 MB of [{},{},...] takes 24 MB once read, and counted 1 MB
    # against max_pending_bytes: 30 connections each sending 8 grew a node to 1.4 GB.
    # Each bracket and comma counts too: 60 KB of text, about 2 MB held.
    server, client, socket = await connected(make_node, Gate)
    pad = [{}] * 20_000
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n, "pad": pad}))
        for n in range(12)
    ]
    gate = gate_of(server)
    await wait_for(lambda: gate.running >= 1)
    assert await stays(lambda: gate.running <= 3, 0.3)  # counted as text: all 12
    gate.gate.set()
    answers = await asyncio.gather(*requests)
    assert [answer["slow"] for answer in answers] == list(range(12))
    assert gate.most <= 3


async def test_reading_resumes_once_the_large_packages_that_paused_it_are_handled(
    make_node: MakeNode,
) -> None:
    # Found in review: the check to read again came before the package just taken had
    # its bytes counted off, and never after the last one: a connection paused by a few
    # large packages was never read again once they were handled.
    server, client, socket = await connected(make_node, Gate, max_pending_bytes=64_000)
    gate = gate_of(server)
    pad = "x" * 40_000
    await client.client.send_talk(socket, "note", {"n": 0, "wait": True})
    await client.client.send_talk(socket, "note", {"n": 1, "pad": pad})
    await client.client.send_talk(socket, "note", {"n": 2, "pad": pad})  # 80 KB: paused
    conn = server.connection(server.server.sockets[0])
    assert conn is not None
    await wait_for(lambda: conn.worker is not None and conn.worker.paused)
    gate.gate.set()
    await wait_for(lambda: gate.talks == [0, 1, 2])
    assert await client.client.request(socket, "fast", {}, timeout=5) == {"fast": True}


@pytest.mark.parametrize("driver", ["tcp", "ws"])
async def test_a_peer_that_leaves_while_we_read_nothing_is_found(
    make_node: MakeNode, driver: str
) -> None:
    # Found by an attacker's test: a peer that queued more slow requests than the node
    # takes (reading paused) and died was never noticed (nothing read, nothing written):
    # its connection, its slot of max_inbound and its handlers stayed for good. The
    # heartbeat pings it again while paused; a write that fails ends the connection.
    server = await make_node(server=True, threads=[Gate], driver=driver, **HEARTBEAT)
    client = await make_node(client=True, peers=[server.url], driver=driver)
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    socket = client.client.sockets[0]
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n})) for n in range(80)
    ]
    gate = gate_of(server)
    inbound = server.server.sockets[0]
    conn = server.connection(inbound)
    assert conn is not None
    await wait_for(lambda: gate.running == 16 and conn.worker is not None and conn.worker.paused)
    socket.abort()  # the client vanishes (as killed: a reset, no close frame)
    await wait_for(lambda: inbound.closed, timeout=10)
    await wait_for(lambda: server.connection(inbound) is None, timeout=10)
    await wait_for(lambda: gate.running == 0)  # its handlers are cancelled
    await asyncio.gather(*requests, return_exceptions=True)


@pytest.mark.parametrize("driver", ["memory", "tcp", "ws"])
async def test_two_nodes_that_read_nothing_from_each_other_stay_connected(
    make_node: MakeNode, driver: str
) -> None:
    # Each queues more slow requests than the other takes: both pause reading, so no
    # pong can come either way. Over TCP each kernel takes the other's pings; the
    # memory driver counts its paused inbox as taken up to RECEIVE_WINDOW likewise
    # (found in review: it counted it all, and both peers were dropped as vanished).
    if driver == "memory":
        hub = MemoryHub()
        server = await make_node(
            server=True,
            host="a",
            port=1,
            driver=MemoryDriver(hub=hub, name="a"),
            threads=[Gate],
            **HEARTBEAT,
        )
        peers, dialler = ["memory://a:1"], MemoryDriver(hub=hub, name="b")
    else:
        server = await make_node(server=True, threads=[Gate], driver=driver, **HEARTBEAT)
        peers, dialler = [server.url or ""], driver  # type: ignore[assignment]
    client = await make_node(client=True, peers=peers, driver=dialler, threads=[Gate], **HEARTBEAT)
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    outbound, inbound = client.client.sockets[0], server.server.sockets[0]
    requests = [
        asyncio.ensure_future(role.request(socket, "slow", {"n": n}))
        for role, socket in ((client.client, outbound), (server.server, inbound))
        for n in range(60)
    ]
    conns = [server.connection(inbound), client.connection(outbound)]
    await wait_for(lambda: all(c is not None and c.worker and c.worker.paused for c in conns))
    # Ten response timeouts, both paused all along.
    assert await stays(lambda: not outbound.closed and not inbound.closed, 2.0)
    assert (server.metrics.lost_peers, client.metrics.lost_peers) == (0, 0)
    gate_of(server).gate.set()
    gate_of(client).gate.set()
    answers = await asyncio.gather(*requests)
    assert len(answers) == 120


async def test_talks_keep_their_order(make_node: MakeNode) -> None:
    server, client, socket = await connected(make_node, Gate)
    for n in range(50):
        await client.client.send_talk(socket, "note", {"n": n})
    await wait_for(lambda: len(gate_of(server).talks) == 50)
    assert gate_of(server).talks == list(range(50))


async def test_one_at_a_time_when_asked(make_node: MakeNode) -> None:
    server, client, socket = await connected(make_node, Gate, max_concurrent_requests=1)
    first = asyncio.ensure_future(client.client.request(socket, "slow", {"n": 1}))
    second = asyncio.ensure_future(client.client.request(socket, "slow", {"n": 2}))
    gate = gate_of(server)
    await wait_for(lambda: gate.running == 1)
    gate.gate.set()
    assert await asyncio.gather(first, second) == [{"slow": 1}, {"slow": 2}]
    assert gate.most == 1


async def test_the_slots_of_finished_handlers_are_free_at_once(make_node: MakeNode) -> None:
    # Round after round of slow requests each run max_concurrent_requests at a time,
    # not that many, then one alone while the finished ones' slots are still counted.
    server, client, socket = await connected(make_node, Gate, max_concurrent_requests=3)
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n})) for n in range(9)
    ]
    gate = gate_of(server)
    for done in (3, 6):
        await wait_for(lambda: gate.running == 3)
        gate.gate.set()  # the three running finish; the next three wait at the gate
        gate.gate.clear()
        await wait_for(lambda: sum(r.done() for r in requests) == done)  # noqa: B023
    await wait_for(lambda: gate.running == 3)
    gate.gate.set()
    assert await asyncio.gather(*requests) == [{"slow": n} for n in range(9)]
    assert gate.most == 3


async def test_a_threads_pong_goes_ahead_of_requests_waiting(make_node: MakeNode) -> None:
    # `trustp2p init` enables the heartbeat thread, which answers pings: its pong must
    # not wait behind a slow handler, or the peer drops us as lost.
    from trustp2p.threads.heartbeat import HeartbeatThread

    server = await make_node(
        server=True, threads=[Gate, HeartbeatThread], max_concurrent_requests=1
    )
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    slow = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n})) for n in range(3)
    ]
    gate = gate_of(server)
    await wait_for(lambda: gate.running == 1)  # the worker waits for it; two more queue
    pong = await client.client.request(
        socket, "ping", {}, package_type=PackageType.HEARTBEAT_PING, timeout=5
    )
    assert pong == {"sleep": False}
    assert not any(request.done() for request in slow)
    gate.gate.set()
    assert await asyncio.gather(*slow) == [{"slow": n} for n in range(3)]


class Gates(Thread):
    """``slow`` requests each wait for their own gate, opened one at a time."""

    def start(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"slow": self.slow}}

    async def slow(self, socket: Socket, package: Package) -> dict[str, Any]:
        n = package.body["n"]
        await self.gates.setdefault(n, asyncio.Event()).wait()
        return {"slow": n}

    def running(self) -> set[int]:
        return {n for n, gate in self.gates.items() if not gate.is_set()}


async def test_a_slot_freed_by_any_handler_takes_the_next_request(make_node: MakeNode) -> None:
    # Before, the request that took the last slot ran in the connection's worker: slots
    # freed while it ran stayed unused, and the next requests waited for that one.
    server, client, socket = await connected(make_node, Gates, max_concurrent_requests=3)
    requests = [
        asyncio.ensure_future(client.client.request(socket, "slow", {"n": n})) for n in range(6)
    ]
    gates = next(t for t in server.threads if isinstance(t, Gates))
    await wait_for(lambda: gates.running() == {0, 1, 2})
    gates.gates[2].set()  # the last one to start finishes first
    await wait_for(lambda: gates.running() == {0, 1, 3})
    gates.gates[0].set()  # 3 still runs: 4 takes the slot of 0
    await wait_for(lambda: gates.running() == {1, 3, 4})
    for n in (1, 3, 4):
        gates.gates[n].set()
    await wait_for(lambda: gates.running() == {5})
    gates.gates[5].set()
    assert await asyncio.gather(*requests) == [{"slow": n} for n in range(6)]


class Cancels(Thread):
    """Request handlers that raise ``CancelledError`` of their own: at once, or after
    waiting (a helper task of theirs was cancelled)."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"at once": self.at_once, "later": self.later}}

    async def at_once(self, socket: Socket, package: Package) -> dict[str, Any]:
        raise asyncio.CancelledError

    async def later(self, socket: Socket, package: Package) -> dict[str, Any]:
        helper = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_soon(helper.cancel)
        await helper  # raises CancelledError: the helper's, not this task's
        return {}


@pytest.mark.parametrize("event", ["at once", "later"])
async def test_a_handler_raising_cancelled_error_is_a_failing_handler(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, event: str
) -> None:
    # Before, the request was never answered (the peer waited response_timeout, 300 s)
    # and nothing was logged.
    server, client, socket = await connected(make_node, Cancels)
    with pytest.raises(RemoteError, match=f"handler of '{event}' failed"):
        await client.client.request(socket, event, {})
    failures = [r for r in caplog.records if "] ! handler of REQUEST" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.ERROR]
    assert server.running  # and it goes on
    with pytest.raises(RemoteError):
        await client.client.request(socket, event, {"again": True})


class TalkCancels(Thread):
    """A talk handler that raises ``CancelledError`` of its own, then one that counts."""

    def start(self) -> None:
        self.noted: list[int] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"cancel": self.cancel, "note": self.note}}

    async def cancel(self, socket: Socket, package: Package) -> None:
        raise asyncio.CancelledError

    def note(self, socket: Socket, package: Package) -> None:
        self.noted.append(package.body["n"])


async def test_a_talk_handler_raising_cancelled_error_holds_up_nothing(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, it ended the connection's worker: the talks after it waited for the next
    # package to arrive, and nothing was logged.
    server, client, socket = await connected(make_node, TalkCancels)
    await client.client.send_talk(socket, "cancel", {})
    await client.client.send_talk(socket, "note", {"n": 1})
    thread = next(t for t in server.threads if isinstance(t, TalkCancels))
    await wait_for(lambda: thread.noted == [1])
    failures = [r for r in caplog.records if "] ! handler of TALK" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.ERROR]


class SlowPings(Thread):
    """A request and a ping handler that both wait for the gate."""

    def start(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0

    @property
    def event_map(self) -> EventMap:
        return {
            PackageType.REQUEST: {"slow": self.slow, "fast": self.fast},
            PackageType.HEARTBEAT_PING: {"ping": self.slow},
        }

    async def slow(self, socket: Socket, package: Package) -> dict[str, Any]:
        self.waiting += 1
        await self.gate.wait()
        return {}

    async def fast(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"fast": True}


async def test_a_ping_waiting_for_a_slot_beside_the_worker_strands_neither(
    make_node: MakeNode,
) -> None:
    # Found in review of the slot wait: a ping's task waiting for a slot took the
    # worker's future; the worker was never woken, and the connection's requests hung.
    server, client, socket = await connected(make_node, SlowPings, max_concurrent_requests=1)
    assert client.client is not None
    thread = next(t for t in server.threads if isinstance(t, SlowPings))
    slow = asyncio.ensure_future(client.client.request(socket, "slow", {}))
    await wait_for(lambda: thread.waiting == 1)  # the worker waits for the slot
    ping = asyncio.ensure_future(
        client.client.request(socket, "ping", {}, package_type=PackageType.HEARTBEAT_PING)
    )
    await wait_for(lambda: thread.waiting == 2)
    fast = asyncio.ensure_future(client.client.request(socket, "fast", {}))
    thread.gate.set()
    assert await asyncio.wait_for(asyncio.gather(slow, ping, fast), 5) == [{}, {}, {"fast": True}]
