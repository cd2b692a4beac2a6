"""Payloads (wire field 7) between nodes over loopback ws:// and tcp://: both ways
intact, never merged, in talks, broadcasts and handlers' replies; error answers carry
none."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trustp2p import EventMap, Node, Package, PackageType, RemoteError, Reply, Socket, Thread

from .nodes import MakeNode, wait_for

KIB_256 = bytes(range(256)) * 1024


class Store(Thread):
    """``echo`` answers with the request's payload reversed; ``count`` answers how many
    requests it has seen, once two are waiting; records talks' payloads."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.talks: list[bytes] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.seen = 0

    @property
    def event_map(self) -> EventMap:
        return {
            PackageType.REQUEST: {
                "echo": self.echo,
                "count": self.count,
                "body-only": self.body_only,
                "none": self.no_payload,
                "bad": self.bad,
            },
            PackageType.TALK: {"note": self.note},
        }

    def echo(self, socket: Socket, package: Package) -> Reply:
        return Reply({"size": len(package.payload)}, package.payload[::-1])

    async def count(self, socket: Socket, package: Package) -> Reply:
        self.seen += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        if len(self.waiting) == 2:  # both requests arrived: answer both
            for waiting in self.waiting:
                waiting.set_result(None)
        await future
        return Reply({"seen": self.seen}, package.payload)

    def body_only(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"size": len(package.payload)}

    def no_payload(self, socket: Socket, package: Package) -> Reply:
        return Reply({"size": len(package.payload)}, None)  # as request(payload=None)

    def bad(self, socket: Socket, package: Package) -> Reply:
        return Reply({"x": {1, 2}}, b"never sent")  # a set: not JSON

    def note(self, socket: Socket, package: Package) -> None:
        self.talks.append(package.payload)


def store(node: Node) -> Store:
    return next(thread for thread in node.threads if isinstance(thread, Store))


async def pair(make_node: MakeNode, driver: str, secure: bool) -> tuple[Node, Node, Socket]:
    server = await make_node(server=True, driver=driver, secure=secure, threads=[Store])
    client = await make_node(client=True, peers=[server.url], secure=secure, threads=[Store])
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    return server, client, client.client.sockets[0]


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
@pytest.mark.parametrize("driver", ["ws", "tcp"])
async def test_a_256_kib_payload_goes_both_ways_intact(
    make_node: MakeNode, driver: str, secure: bool
) -> None:
    server, client, socket = await pair(make_node, driver, secure)
    assert client.client is not None
    response = await client.client.request_package(socket, "echo", {}, payload=KIB_256)
    assert response.body == {"size": len(KIB_256)}
    assert response.payload == KIB_256[::-1]
    assert type(response.payload) is bytes
    # The server asks the client the same way.
    assert server.server is not None
    (back,) = server.server.sockets
    answer = await server.server.request_package(back, "echo", {}, payload=KIB_256[:1000])
    assert answer.payload == KIB_256[:1000][::-1]


@pytest.mark.parametrize("driver", ["ws", "tcp"])
async def test_concurrent_identical_payload_requests_are_both_answered(
    make_node: MakeNode, driver: str
) -> None:
    server, client, socket = await pair(make_node, driver, secure=False)
    assert client.client is not None
    first, second = await asyncio.gather(
        client.client.request_package(socket, "count", {}, payload=b"same"),
        client.client.request_package(socket, "count", {}, payload=b"same"),
    )
    assert store(server).seen == 2  # both went on the wire: not merged
    assert first.tag != second.tag
    assert first.payload == second.payload == b"same"


async def test_a_reply_with_payload_none_has_no_payload(make_node: MakeNode) -> None:
    # Found by a tester: Reply(body, None) failed as "returned no JSON object", though
    # request_package(payload=None) means no payload.
    _, client, socket = await pair(make_node, "ws", secure=False)
    assert client.client is not None
    response = await client.client.request_package(socket, "none", {}, payload=None)
    assert (response.body, response.payload) == ({"size": 0}, b"")


async def test_request_returns_the_body_and_handlers_may_answer_without_payload(
    make_node: MakeNode,
) -> None:
    _, client, socket = await pair(make_node, "ws", secure=False)
    assert client.client is not None
    assert await client.client.request(socket, "echo", {}, payload=b"abc") == {"size": 3}
    response = await client.client.request_package(socket, "body-only", {}, payload=b"ab")
    assert (response.body, response.payload) == ({"size": 2}, b"")
    response = await client.request_package(socket, "echo", {})  # the Node's, no payload
    assert (response.body, response.payload) == ({"size": 0}, b"")
    assert await client.request(socket, "echo", {}, payload=b"xy") == {"size": 2}


async def test_an_error_answer_carries_no_payload(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node, "ws", secure=False)
    assert client.client is not None
    with pytest.raises(RemoteError) as caught:
        await client.client.request_package(socket, "bad", {}, payload=b"p")
    assert caught.value.body == {"error": "handler of 'bad' failed"}


async def test_talks_and_broadcasts_carry_a_payload(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node, "ws", secure=False)
    assert client.client is not None and server.server is not None
    await client.client.send_talk(socket, "note", {}, payload=b"talk")
    await server.server.broadcast("note", {}, payload=b"broadcast")
    await wait_for(lambda: len(store(server).talks) == 1 and len(store(client).talks) == 1)
    assert store(server).talks == [b"talk"]
    assert store(client).talks == [b"broadcast"]
    results = await server.server.broadcast(
        "echo", {}, package_type=PackageType.REQUEST, payload=b"abcd"
    )
    assert list(results.values()) == [{"size": 4}]


async def test_send_response_carries_a_payload(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node, "ws", secure=False)
    assert client.client is not None and server.server is not None
    (back,) = server.server.sockets
    request = asyncio.ensure_future(
        client.client.request_package(socket, "unhandled-yet", {}, payload=b"q")
    )
    # Nobody handles it: the server answers with an error, which carries no payload.
    with pytest.raises(RemoteError):
        await request
    response_tag = "t" * 8
    await server.server.send_response(back, "x", {"ok": True}, response_tag, payload=b"r")
