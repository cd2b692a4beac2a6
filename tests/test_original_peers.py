"""
Peers that behave like the shipped original (plain mode, default options): an empty text
frame on every connection (its version talk, which it can't encode), then pings, pongs
and requests. They must stay connected, as our client and as our server.

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from trustp2p import EventMap, Node, Package, PackageType, RemoteError, Socket, Thread
from trustp2p.admin.counters import INVALID
from trustp2p.protocol.package import build_package, decode, encode
from trustp2p.threads.heartbeat import HeartbeatThread

from .conftest import stays
from .nodes import wait_for

# Enough to cross every per-peer threshold of the old rules (10 packages, ratio 0.1).
EXCHANGES = 40


class Echo(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self.echo}}

    def echo(self, socket: Socket, package: Package) -> dict[str, object]:
        return {"echo": package.body}


def original_ping() -> bytes:
    # The original's captured ping (shared/protocol/README.md): type 10, "ping", {}.
    return encode(build_package(PackageType.HEARTBEAT_PING, "ping", {}))


async def test_an_original_client_stays_connected_to_our_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from websockets.asyncio.client import connect

    caplog.set_level(logging.DEBUG, logger="trustp2p.node")
    async with Node(server=True, secure=False, port=0, threads=[Echo, HeartbeatThread]) as node:
        assert node.url is not None and node.server is not None
        async with connect(node.url, compression=None) as ws:
            await ws.send("")  # the original's version talk
            for n in range(EXCHANGES):
                request = build_package(PackageType.REQUEST, "echo", {"n": n})
                await ws.send(encode(request))
                while True:  # our version talk, then the answer
                    answer = decode(await ws.recv())
                    if answer.type is PackageType.RESPONSE:
                        break
                assert (answer.tag, answer.body) == (request.tag, {"echo": {"n": n}})
            inbound = node.server.sockets[0]
            assert not inbound.closed
            assert inbound.stats.invalid_in == 0
            # Not a package, nor an invalid one (found by a tester: each of the
            # original's empty text frames was counted as an INVALID package).
            assert node.metrics.packages_in[INVALID] == 0
    assert any("empty text frame" in r.getMessage() for r in caplog.records)


async def test_an_original_client_that_said_nothing_is_pinged_and_stays() -> None:
    """Found by a tester (t44): the original's client sends its version talk before its
    .proto is loaded, so on a fast link it sends nothing at all, and our server closed it
    at handshake_timeout (it never redials). Half that time after accept, a plain
    connection that said nothing is pinged; the original answers, and stays."""
    from websockets.asyncio.client import connect

    async with Node(
        server=True, secure=False, port=0, handshake_timeout=1.0, threads=[Echo]
    ) as node:
        assert node.url is not None and node.server is not None
        async with connect(node.url, compression=None) as ws:
            version = decode(await ws.recv())  # ours; the original's own never left
            assert version.event == "version"
            ping = decode(await ws.recv())
            assert ping.type is PackageType.HEARTBEAT_PING
            pong = build_package(PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, tag=ping.tag)
            await ws.send(encode(pong))  # the original's heartbeat thread answers
            await wait_for(lambda: not node.connections.inbound.awaiting)
            inbound = node.server.sockets[0]
            assert node.connections.admission.finished(inbound.id)
            assert await stays(lambda: not inbound.closed, 1.0)  # past the deadline
            request = build_package(PackageType.REQUEST, "echo", {"n": 1})
            await ws.send(encode(request))
            answer = decode(await ws.recv())
            assert (answer.tag, answer.body) == (request.tag, {"echo": {"n": 1}})


async def test_a_silent_plain_client_that_answers_no_ping_is_closed_at_the_deadline() -> None:
    from websockets.asyncio.client import connect

    async with Node(server=True, secure=False, port=0, handshake_timeout=1.0) as node:
        assert node.url is not None
        async with connect(node.url, compression=None) as ws:
            received = [decode(await ws.recv()) for _ in range(2)]
            assert [p.type for p in received] == [PackageType.TALK, PackageType.HEARTBEAT_PING]
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1008, "handshake not complete within 1 s")


async def test_our_client_stays_connected_to_an_original_server() -> None:
    """The original server sends "" then pings; our client answers each with a pong."""
    pongs: list[Package] = []
    done = asyncio.Event()

    async def original_server(ws: ServerConnection) -> None:
        await ws.send("")
        for _ in range(EXCHANGES):
            await ws.send(original_ping())
            while True:
                package = decode(await ws.recv())
                if package.type is PackageType.HEARTBEAT_PONG:
                    pongs.append(package)
                    break
        done.set()
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async with serve(original_server, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with Node(
            client=True,
            secure=False,
            peers=[f"ws://127.0.0.1:{port}"],
            threads=[HeartbeatThread],
        ) as node:
            assert node.client is not None
            await node.client.wait_connected()
            socket = node.client.sockets[0]
            await wait_for(done.is_set, timeout=10)
            assert not socket.closed
            assert socket.stats.invalid_in == 0
            assert {p.body["sleep"] for p in pongs} == {False}
            assert len(pongs) == EXCHANGES


async def test_our_client_keeps_an_original_server_that_answers_no_ping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The original's server drops every ping it gets (found by a tester, t43 F1: with
    default options our client pinged it once its pings had put ours off 5 intervals,
    and dropped it, no pong, every 112 s). Its pings put ours off for as long as they
    come; when they stop, anything it says answers our ping; silent, it is dropped."""
    pinged = asyncio.Event()
    mode = "pings"  # then "talks", then "silent"

    async def original_server(ws: ServerConnection) -> None:
        await ws.send("")
        talk = encode(build_package(PackageType.TALK, "news", {}))
        with contextlib.suppress(Exception):
            while True:
                if mode != "silent":
                    await ws.send(original_ping() if mode == "pings" else talk)
                with contextlib.suppress(TimeoutError):  # read, and answer nothing
                    async with asyncio.timeout(0.02):
                        package = decode(await ws.recv())
                        if package.type is PackageType.HEARTBEAT_PING:
                            pinged.set()

    timings = {
        "heartbeat_timeout": 0.1,  # (so 5 intervals: 0.5 s)
        "heartbeat_response_timeout": 0.5,  # (a loaded machine's stalls are no silence)
        "heartbeat_interval": 0.02,
        "heartbeat_jitter": 0.0,
    }
    async with serve(original_server, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with Node(
            client=True, secure=False, peers=[f"ws://127.0.0.1:{port}"], **timings
        ) as node:
            assert node.client is not None
            await node.client.wait_connected()
            socket = node.client.sockets[0]
            assert await stays(lambda: not socket.closed, 1.5)  # three times 5 intervals
            assert not pinged.is_set()  # (its pings kept coming: none of ours was due)
            mode = "talks"  # it stops pinging (a busy client isn't pinged): we ping
            await wait_for(pinged.is_set)
            assert await stays(lambda: not socket.closed, 1.0)
            mode = "silent"
            await wait_for(lambda: socket.closed, timeout=5)
            assert [r.getMessage().split("! ")[-1] for r in caplog.records if r.levelno >= 30] == [
                "lost peer: no pong within 0.5 s"
            ]


async def test_an_array_answer_of_an_original_server_fails_the_request_at_once() -> None:
    """The original's encoder takes any JSON object *or array* as a body; ours refuses
    an array. Found by a tester: the request then waited for its timeout (300 s by
    default). It fails at once with RemoteError, saying why."""

    async def original_server(ws: ServerConnection) -> None:
        await ws.send("")
        async for message in ws:
            if isinstance(message, bytes):
                request = decode(message)
                answer = Package(
                    PackageType.RESPONSE, request.event, {}, tag=request.tag, body_json="[1,2]"
                )
                await ws.send(encode(answer))

    async with serve(original_server, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with Node(client=True, secure=False, peers=[f"ws://127.0.0.1:{port}"]) as node:
            assert node.client is not None
            await node.client.wait_connected()
            socket = node.client.sockets[0]
            with pytest.raises(RemoteError) as caught:
                await node.client.request(socket, "list", {}, timeout=30)
            assert caught.value.body == {
                "error": "invalid response: body is not a JSON object but an array"
            }
            # Labelled by what was wrong (found by the same tester: every decoder
            # error was labelled "invalid package"). (It answers our node's own
            # requests, such as peer exchange, with arrays too.)
            assert list(node.metrics.invalid) == ["body is not a json object but an array"]


@contextlib.asynccontextmanager
async def silent_original(event: str) -> AsyncIterator[tuple[str, list[str]]]:
    """An original server that drops requests for ``event`` unanswered, as the original
    drops what it doesn't know: its URL, and the list of those it got."""
    asked: list[str] = []

    async def original_server(ws: ServerConnection) -> None:
        await ws.send("")
        async for message in ws:
            if isinstance(message, bytes) and decode(message).event == event:
                asked.append(event)

    async with serve(original_server, "127.0.0.1", 0, compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", asked


async def test_an_original_server_that_drops_get_peers_is_not_asked_again() -> None:
    """Found by a tester: peer exchange asked an original server for peers every ~70 s
    for as long as it ran, each a timeout in the metrics. After one timeout on a plain
    connection, not again."""
    async with (
        silent_original("get_peers") as (url, asked),
        Node(
            client=True,
            secure=False,
            peers=[url],
            open_timeout=0.2,  # the request's timeout
            exchange_interval=0.1,  # asked again every 0.1 s while short of peers
        ) as node,
    ):
        assert node.client is not None
        await node.client.wait_connected()
        await wait_for(lambda: node.metrics.requests_timed_out >= 1)
        assert await stays(lambda: len(asked) == 1, 0.5), asked


async def test_bytes_that_are_not_a_package_are_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by a tester: what a peer sent that wasn't a package was never shown, not
    even at DEBUG, so an interoperability problem couldn't be seen. Its first 64 bytes
    are logged at DEBUG."""
    from websockets.asyncio.client import connect

    caplog.set_level(logging.DEBUG, logger="trustp2p.node")
    async with Node(server=True, secure=False, port=0) as node:
        assert node.url is not None and node.server is not None
        async with connect(node.url, compression=None) as ws:
            await ws.send(b"\xff\x00not protobuf" + b"x" * 100)
            await wait_for(lambda: "not read: " in caplog.text)
    [line] = [r.getMessage() for r in caplog.records if "not read: " in r.getMessage()]
    assert line.endswith("< not read: " + repr(b"\xff\x00not protobuf" + b"x" * 50)), line


async def test_an_original_peer_is_not_asked_for_gossip_catch_up() -> None:
    """Found by a tester: every catch-up round (30 s) could ask an original, which has
    no gossip, for high-water marks, each a timeout in the metrics. The rounds ask only
    peers that share one of our topics."""
    async with (
        silent_original("gossip/hwm") as (url, asked),
        Node(
            client=True,
            secure=False,
            peers=[url],
            open_timeout=0.2,  # the request's timeout
            catchup_interval=0.05,
        ) as node,
    ):
        node.subscribe("chat")
        assert node.client is not None
        await node.client.wait_connected()
        # (the catch-up as the connection opens may ask once)
        assert await stays(lambda: len(asked) <= 1, 1.0), asked
