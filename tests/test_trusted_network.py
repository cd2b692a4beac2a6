"""
Trusted peers between nodes on 127.0.0.1: bad peer exchange answers, an abusive peer next
to a quiet one, the outbound manager's netgroup limit, and ``/p2p/<id>`` URLs over TCP.

"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import pytest

from trustp2p import EventMap, Node, Package, PackageType, Socket, Thread
from trustp2p.drivers.memory import MemoryDriver, MemoryHub
from trustp2p.identity import Identity
from trustp2p.node import connections
from trustp2p.node.connections import GOOD_BATCH
from trustp2p.protocol.limits import is_loopback, netgroup
from trustp2p.protocol.urls import MAX_URL_LENGTH, address_of
from trustp2p.storage.peerstore import PeerSource
from trustp2p.threads.heartbeat import HeartbeatThread

from .conftest import MS
from .nodes import FAST, MakeNode, wait_for


class Recorder(Thread):
    """Answers ``echo``; records what reaches threads."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.seen: list[tuple[str, Any]] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self.echo}}

    def echo(self, socket: Socket, package: Package) -> dict[str, Any]:
        self.seen.append(("echo", package.body))
        return {"echo": package.body}

    def on_socket_connection(self, socket: Socket) -> None:
        self.seen.append(("connection", socket.peer_id))

    def on_socket_open(self, socket: Socket) -> None:
        self.seen.append(("open", socket.peer_id))

    def on_socket_error(self, socket: Socket, error: Exception) -> None:
        self.seen.append(("error", str(error)))


def recorder(node: Node) -> Recorder:
    return next(t for t in node.threads if isinstance(t, Recorder))


# Bad peer exchange answers

MISSING = object()


def answering(body: dict[str, Any]) -> type[Thread]:
    """A thread that answers every ``get_peers`` with ``body``."""

    class Liar(Thread):
        @property
        def event_map(self) -> EventMap:
            return {PackageType.REQUEST: {"get_peers": self.get_peers}}

        def get_peers(self, socket: Socket, package: Package) -> dict[str, Any]:
            return body

    return Liar


async def ask_liar(make_node: MakeNode, peers: Any, **client_options: Any) -> tuple[Node, Socket]:
    """A client with peer exchange connects to a server answering ``{"peers": peers}``
    (``{}`` for ``MISSING``); it asks at once. Returns the client and its socket to the
    server."""
    body = {} if peers is MISSING else {"peers": peers}
    server = await make_node(server=True, threads=[answering(body)])
    client = await make_node(client=True, peers=[server.url], peer_exchange=True, **client_options)
    assert client.client is not None
    await client.client.wait_connected()
    return client, client.client.sockets[0]


async def stored_urls(node: Node) -> set[str]:
    assert node.store is not None
    return {url for record in await node.store.peers() for url in record.urls}


async def wait_stored(node: Node, url: str) -> None:
    async with asyncio.timeout(5):
        while url not in await stored_urls(node):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(MS)


def peer_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("trustp2p.node")
    ]


async def test_a_10000_entry_peer_list_is_refused_and_counted(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    flood = [f"ws://192.0.{i // 250}.{i % 250 + 1}:1107" for i in range(10_000)]
    assert len(set(flood)) == 10_000  # each one valid on its own
    client, socket = await ask_liar(make_node, flood)
    await wait_for(lambda: socket.stats.invalid_in == 1)
    assert client.store is not None
    # None of them is kept: the only URL known is the bootstrap one.
    assert await stored_urls(client) == {socket.peer}
    assert await client.store.candidates(100) == [socket.peer]
    assert (
        f"[{socket.peer}] ! invalid get_peers answer: list of 10000 URLs exceeds the limit of 100"
        in peer_warnings(caplog)
    )
    # Counted against the server, not held against the connection: one bad answer
    # stays under the block policy.
    assert not socket.closed
    assert not client.store.is_blocked(peer_id=socket.peer_id)


async def test_bad_entries_are_dropped_not_held_against_the_server(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A server passes on what others told it, and rules differ between versions (an
    attacker's test: a long URL an honest node passed on got it blocked by every
    client that asked it). A list that isn't one, or too long, still counts."""
    caplog.set_level(logging.INFO)
    own = "ws://127.0.0.1:1"
    me = Identity.generate()
    peers = [
        "ws://192.0.2.1:1107",
        "ws://user:secret@192.0.2.2:1107",  # credentials
        "http://192.0.2.3:1107",  # scheme
        "ws://192.0.2.1:1107",  # duplicate
        own,  # our own URL
        f"ws://192.0.2.4:1107/p2p/{me.peer_id}",  # our own id
        42,
        "tcp://192.0.2.5:1107",
    ]
    client, socket = await ask_liar(make_node, peers, listen_urls=[own], identity=me)
    await wait_stored(client, "ws://192.0.2.1:1107")
    assert await stored_urls(client) == {socket.peer, "ws://192.0.2.1:1107", "tcp://192.0.2.5:1107"}
    assert socket.stats.invalid_in == 0
    assert peer_warnings(caplog) == []
    said = [r.getMessage() for r in caplog.records if "get_peers answer" in r.getMessage()]
    assert said == [
        f"= dropped from {socket.peer}'s get_peers answer: "
        "URL 'ws://user:secret@192.0.2.2:1107' holds credentials"
    ]


async def test_our_own_url_is_dropped_not_held_against_the_sender(make_node: MakeNode) -> None:
    """Found by an attacker's test: a third peer announced our URL (with our id) to an
    honest server, whose answers then listed it; each counted against the server, and
    we blocked it for an hour. A server can't know every spelling of ours."""
    own = "ws://127.0.0.1:1"
    client, socket = await ask_liar(make_node, [own, "ws://192.0.2.1:1107"], listen_urls=[own])
    assert client.store is not None
    await wait_stored(client, "ws://192.0.2.1:1107")
    assert own not in await stored_urls(client)
    assert socket.stats.invalid_in == 0


async def test_a_long_url_goes_out_without_an_id_that_would_make_it_too_long(
    make_node: MakeNode,
) -> None:
    """An attacker's test: a URL of 254 characters (a long DNS name) the node had
    dialled went out with its checked id, 293 characters, which every asker refused;
    they blocked the node for an hour. Without the id it is as it was stored."""
    seed = await make_node(server=True, peer_exchange=True)
    assert seed.store is not None and seed.url is not None
    host = ".".join(c * 63 for c in "abc") + "." + "d" * 35 + ".example"
    url = f"ws://{host}:1107"
    assert MAX_URL_LENGTH - 39 < len(url) <= MAX_URL_LENGTH
    await seed.store.record_connected(peer_id=Identity.generate().peer_id, url=url, address=None)
    asker = await make_node(client=True, peers=[seed.url])
    assert asker.client is not None
    await asker.client.wait_connected()
    answer = await asker.client.request(asker.client.sockets[0], "get_peers", {})
    assert url in answer["peers"]
    assert asker.client.sockets[0].stats.invalid_in == 0


async def test_get_peers_leaves_out_the_askers_address_however_spelled(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an attacker's test: a client announced the asker's URL with the asker's
    id (``url/p2p/<id>``), which didn't match the asker's own spelling, so the server
    answered the asker with its own address."""
    seed = await make_node(server=True, peer_exchange=True)
    asker = await make_node(server=True, client=True, peers=[seed.url], port=0)
    assert asker.url is not None and asker.client is not None
    await asker.client.wait_connected()
    # The attacker's node announces another's id: what ours refuses to start with.
    monkeypatch.setattr("trustp2p.options.NodeOptions.check_own_urls", lambda *args: None)
    framer = await make_node(
        client=True, peers=[seed.url], listen_urls=[f"{asker.url}/p2p/{asker.peer_id}"]
    )
    monkeypatch.undo()
    assert framer.client is not None
    await framer.client.wait_connected()
    await wait_for(lambda: all(conn.listen_urls for conn in seed.connections))
    answer = await asker.client.request(asker.client.sockets[0], "get_peers", {})
    assert all(address_of(url) != address_of(asker.url) for url in answer["peers"]), answer


async def test_get_peers_lists_one_announced_url_a_scheme_a_peer(make_node: MakeNode) -> None:
    """Found by an attacker: 20 connections announcing 8 URLs each made 99 of the 100
    URLs of a server's answers theirs, and a new client never found the honest relay
    (the server's proven URLs come first now, half the list at least). Found in review:
    one URL a peer left out its ``tcp://`` one for an asker that dials only that."""
    seed = await make_node(server=True, peer_exchange=True)
    assert seed.url is not None
    for n in range(3):
        urls = [f"ws://127.0.0.1:{40000 + 10 * n + i}" for i in range(4)]
        urls += [f"tcp://127.0.0.1:{40005 + 10 * n + i}" for i in range(2)]
        announcer = await make_node(client=True, peers=[seed.url], listen_urls=urls)
        assert announcer.client is not None
        await announcer.client.wait_connected()
    asker = await make_node(client=True, peers=[seed.url])
    assert asker.client is not None
    await asker.client.wait_connected()
    await wait_for(lambda: sum(bool(conn.listen_urls) for conn in seed.connections) == 3)
    answer = await asker.client.request(asker.client.sockets[0], "get_peers", {})
    schemes_ports = sorted((url.split(":")[0], urlsplit(url).port or 0) for url in answer["peers"])
    assert [(scheme, port // 10) for scheme, port in schemes_ports] == [
        ("tcp", 4000),
        ("tcp", 4001),
        ("tcp", 4002),
        ("ws", 4000),
        ("ws", 4001),
        ("ws", 4002),
    ], answer  # one of each scheme of each peer


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (MISSING, "expected a list of URLs, not NoneType"),
        (None, "expected a list of URLs, not NoneType"),
        ("ws://192.0.2.1:1107", "expected a list of URLs, not str"),
        ({"ws://192.0.2.1:1107": 1}, "expected a list of URLs, not dict"),
    ],
)
async def test_an_answer_that_is_no_list_is_counted(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, answer: Any, problem: str
) -> None:
    caplog.set_level(logging.WARNING)
    client, socket = await ask_liar(make_node, answer)
    await wait_for(lambda: socket.stats.invalid_in == 1)
    assert await stored_urls(client) == {socket.peer}
    assert f"[{socket.peer}] ! invalid get_peers answer: {problem}" in peer_warnings(caplog)


# An abusive peer next to a quiet one


class Work(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"work": self.work}}

    def work(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"ok": True}


class CountingHeartbeat(HeartbeatThread):
    pings = 0

    def _handle_ping(self, socket: Socket, package: Package) -> dict[str, Any]:
        self.pings += 1
        return super()._handle_ping(socket, package)


async def test_an_abusive_peer_does_not_delay_the_others_heartbeats(
    make_node: MakeNode,
) -> None:
    timings = {
        "heartbeat_interval": 20 * MS,
        "heartbeat_jitter": 5 * MS,
        "heartbeat_timeout": 20 * MS,
        # Generous: a pong later than this would drop the quiet client as lost.
        "heartbeat_response_timeout": 5.0,
    }
    server = await make_node(
        server=True,
        threads=[HeartbeatThread, Work],
        request_rate=20,
        request_burst=10,
        **timings,
    )
    abuser = await make_node(client=True, peers=[server.url])
    quiet = await make_node(client=True, peers=[server.url], threads=[CountingHeartbeat], **timings)
    assert server.server is not None and abuser.client is not None and quiet.client is not None
    await abuser.client.wait_connected()
    await quiet.client.wait_connected()
    quiet_socket = quiet.client.sockets[0]
    await wait_for(lambda: server.socket_for_peer(quiet.peer_id or "") is not None)
    quiet_inbound = server.socket_for_peer(quiet.peer_id or "")
    assert quiet_inbound is not None
    heartbeat = next(t for t in quiet.threads if isinstance(t, CountingHeartbeat))
    outcomes: Counter[str] = Counter()

    async def flood() -> None:
        assert abuser.client is not None
        n = 0
        while True:
            sockets = abuser.client.sockets
            if not sockets:  # disconnected for flooding; it comes back
                await asyncio.sleep(MS)
                continue
            batch = [
                abuser.client.request(sockets[0], "work", {"n": n + i}, timeout=30)
                for i in range(50)
            ]
            n += 50
            for result in await asyncio.gather(*batch, return_exceptions=True):
                outcomes["ok" if isinstance(result, dict) else type(result).__name__] += 1

    task = asyncio.create_task(flood())
    try:
        # The flood is over the budget (burst 10), and goes on, throttled, while the
        # quiet client is pinged 5 times.
        await wait_for(lambda: outcomes["ok"] >= 50, timeout=10)
        pings, served = heartbeat.pings, outcomes["ok"]
        await wait_for(lambda: heartbeat.pings >= pings + 5, timeout=10)
        await wait_for(lambda: outcomes["ok"] >= served + 10, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The quiet client was pinged all along, answered, and is still connected.
    assert quiet_inbound.stats.last_rtt is not None
    assert not quiet_socket.closed and not quiet_inbound.closed
    assert quiet.client.sockets == [quiet_socket]
    # The abuser was slowed down, never refused nor disconnected.
    assert set(outcomes) == {"ok"}
    assert abuser.client.sockets and server.server.sockets[0].stats.invalid_in == 0


# The outbound manager's netgroup limit


def group_of(url: str) -> str | None:
    host = urlsplit(url).hostname or ""
    return None if is_loopback(host) else netgroup(host)


STORE_URLS = [
    *(f"ws://10.1.0.{i}:1107" for i in range(1, 6)),  # 10.1.0.0/16
    "ws://[::ffff:10.1.9.9]:1107",  # IPv4-mapped: 10.1.0.0/16 too
    *(f"ws://10.2.{i}.1:1107" for i in range(1, 5)),  # 10.2.0.0/16
    *(f"tcp://[2001:db8:{i}::1]:1107" for i in range(1, 4)),  # 2001:db8::/32
    "ws://a.example:1107",  # names are groups of their own
    "ws://b.example:1107",
    # Loopback is exempt.
    *(f"ws://127.0.0.1:{port}" for port in range(40001, 40005)),
    "ws://127.0.0.2:40001",
    "ws://localhost:40001",
]
LOOPBACK_URLS = {url for url in STORE_URLS if group_of(url) is None}


async def managed_client(make_node: MakeNode) -> tuple[Node, list[str]]:
    """A client whose outbound manager records the URLs it dials, without dialling:
    those dials never end. The store holds the URLs as bootstrap ones (proven), so the
    bound on unproven dials (8 at once) doesn't hide the netgroup rule."""
    node = await make_node(
        client=True, target_outbound=20, max_outbound_per_netgroup=2, exchange_interval=60.0
    )
    role = node.client
    assert role is not None and node.store is not None
    dialled: list[str] = []

    async def dial(url: str, expected: Any) -> Socket:
        dialled.append(url)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    role.dialer.dial = dial  # type: ignore[method-assign]
    await node.store.add_urls(STORE_URLS, PeerSource.BOOTSTRAP)
    return node, dialled


def per_group(urls: list[str]) -> Counter[str | None]:
    return Counter(group_of(url) for url in urls)


async def test_outbound_manager_dials_at_most_two_per_netgroup(make_node: MakeNode) -> None:
    node, dialled = await managed_client(make_node)
    assert node.client is not None
    node.client.wake()
    # 2 of each /16 or /32, each name, and every loopback URL.
    await wait_for(lambda: len(dialled) >= 14)
    await asyncio.sleep(20 * MS)
    assert len(dialled) == len(set(dialled)) == 14
    groups = per_group(dialled)
    assert groups.pop(None) == len(LOOPBACK_URLS)
    assert groups == {
        "10.1.0.0/16": 2,
        "10.2.0.0/16": 2,
        "2001:db8::/32": 2,
        "a.example": 1,
        "b.example": 1,
    }
    assert LOOPBACK_URLS <= set(dialled)


async def test_outbound_manager_counts_dials_in_progress(make_node: MakeNode) -> None:
    node, dialled = await managed_client(make_node)
    assert node.client is not None
    node.client.wake()
    await wait_for(lambda: len(dialled) >= 14)
    node.client.wake()  # another round (peer exchange learnt something, a dial ended...)
    await asyncio.sleep(50 * MS)
    groups = per_group(dialled)
    del groups[None]
    assert max(groups.values()) <= 2, groups


# /p2p/<peer-id> over TCP


async def test_p2p_url_over_tcp(make_node: MakeNode) -> None:
    server = await make_node(server=True, driver="tcp", threads=[Recorder])
    assert server.url is not None and server.url.startswith("tcp://127.0.0.1:")
    client = await make_node(client=True, peers=[f"{server.url}/p2p/{server.peer_id}"])
    assert client.client is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    assert socket.peer == server.url
    assert socket.peer_id == server.peer_id
    assert await client.client.request(socket, "echo", {"over": "tcp"}) == {"echo": {"over": "tcp"}}
    assert client.client.socket_for(f"{server.url}/p2p/{server.peer_id}") is socket


async def test_wrong_p2p_id_over_tcp_is_refused(make_node: MakeNode) -> None:
    server = await make_node(server=True, driver="tcp", threads=[Recorder])
    impostor = Identity.generate().peer_id
    client = await make_node(
        client=True, peers=[f"{server.url}/p2p/{impostor}"], threads=[Recorder]
    )
    assert client.client is not None
    errors = recorder(client).seen
    await wait_for(
        lambda: ("error", f"peer is {server.peer_id}, not the expected {impostor}") in errors
    )
    # It keeps trying and keeps being refused; nothing reaches a handler or a hook.
    await wait_for(lambda: len(errors) >= 2)
    assert {kind for kind, _ in errors} == {"error"}
    assert client.client.sockets == []
    assert [kind for kind, _ in recorder(server).seen if kind != "error"] == []


async def test_an_idle_peers_last_seen_follows_its_heartbeats(make_node: MakeNode) -> None:
    assert (connections._PING, connections._PONG) == (  # its plain ints for the types
        PackageType.HEARTBEAT_PING,
        PackageType.HEARTBEAT_PONG,
    )
    # Valid packages are counted in the peer store 32 at a time; a heartbeat counts at
    # once, so that `trustp2p peers` doesn't show a connected peer last seen when it
    # connected (with the defaults, 32 pings took about 10 minutes).
    timings = {
        "heartbeat_interval": 10 * MS,
        "heartbeat_jitter": 0.0,
        "heartbeat_timeout": 50 * MS,
        "heartbeat_response_timeout": 5.0,
    }
    server = await make_node(server=True, **timings)
    client = await make_node(client=True, peers=[server.url], **timings)
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await wait_for(lambda: server.socket_for_peer(client.peer_id or "") is not None)
    sides = [(client, server.peer_id), (server, client.peer_id)]
    conns = [node.connection(node.sockets[0]) for node, _ in sides]
    assert conns[0] is not None and conns[1] is not None

    async def last_seen(node: Node, peer_id: str | None) -> float:
        assert node.store is not None
        [record] = [r for r in await node.store.peers() if r.peer_id == peer_id]
        assert record.last_seen is not None
        return record.last_seen

    for (node, peer_id), conn in zip(sides, conns, strict=True):
        seen, valid = await last_seen(node, peer_id), conn.protocol.valid
        async with asyncio.timeout(5):
            while await last_seen(node, peer_id) == seen:  # noqa: ASYNC110 - the store
                await asyncio.sleep(5 * MS)
        assert conn.protocol.valid - valid < GOOD_BATCH  # counted before a batch filled


async def test_a_node_on_the_unspecified_address_announces_nothing_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Found by a new user following docs/deploy.md (--host 0.0.0.0): every hello said
    # ws://0.0.0.0:1107, which peers stored and passed on (validate_url refuses it now).
    caplog.set_level(logging.WARNING)
    driver = MemoryDriver(hub=MemoryHub(), name="n")
    async with Node(server=True, host="0.0.0.0", port=1, driver=driver, **FAST) as node:
        assert node.url == "memory://0.0.0.0:1" and node.listen_urls == []
    assert caplog.messages == [
        "! listening on the unspecified address, memory://0.0.0.0:1: peers can't dial it "
        "and won't learn this node's address: set listen_urls (TRUSTP2P_LISTEN_URLS, or "
        "listen_urls in trustp2p.toml)"
    ]
    caplog.clear()
    named = ["ws://node.example:1107"]
    driver = MemoryDriver(hub=MemoryHub(), name="n")
    options = {**FAST, "listen_urls": named}
    caplog.set_level(logging.INFO, logger="trustp2p.node")
    async with Node(server=True, host="0.0.0.0", port=1, driver=driver, **options) as node:
        assert node.listen_urls == named
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # A name is announced, not passed on by peers (a tester followed docs/deploy.md's
    # example with one: its nodes found only the seed): said at start.
    said = [m for m in caplog.messages if "name a host, not an address" in m]
    assert said == [
        "= listen URL(s) ws://node.example:1107 name a host, not an address: peers don't"
        " pass such a URL on (they can't check it without resolving it); they reach this"
        " node through their peers/--connect, or a listen URL with its address"
    ]


def test_get_peers_takes_two_urls_of_an_ipv6_64_not_of_each_address() -> None:
    """attacker38 A3: the two-a-host cap counted an IPv6 peer by its exact address, so
    one /64's addresses (which max_per_ip counts as one) put 8 of its URLs in an
    answer; an IPv4 address got 2."""
    from types import SimpleNamespace

    from trustp2p.threads.peer_exchange import PeerExchangeThread

    def conn(host: str, port: int) -> SimpleNamespace:
        url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
        return SimpleNamespace(socket=SimpleNamespace(host=host), listen_urls=[url])

    same_64 = [conn(f"2001:db8::{n}", 1000 + n) for n in range(2, 10)]
    others = [conn("2001:db8:1::5", 2000), conn("203.0.113.7", 3000), conn("203.0.113.8", 3001)]
    node = SimpleNamespace(server=None, client=None, connections=[*same_64, *others])
    thread = PeerExchangeThread(node)  # type: ignore[arg-type]
    urls = thread._announced(None, set(), 50)
    assert urls[:2] == ["ws://[2001:db8::2]:1002", "ws://[2001:db8::3]:1003"]
    assert urls[2:] == [
        "ws://[2001:db8:1::5]:2000", "ws://203.0.113.7:3000", "ws://203.0.113.8:3001"
    ]  # fmt: skip
