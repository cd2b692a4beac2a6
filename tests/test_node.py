"""Integration tests: nodes over real WebSockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

import trustp2p
from trustp2p import (
    ConfigError,
    ConnectionClosed,
    EventMap,
    Node,
    NodeState,
    Package,
    PackageType,
    RemoteError,
    RequestTimeout,
    Socket,
    Thread,
    ThreadLoadError,
)
from trustp2p.protocol.package import build_package, decode, encode
from trustp2p.threads.heartbeat import HeartbeatThread

from .compiled import pure_only, refused_type
from .conftest import MS, stays, wait_for
from .nodes import FAST, MakeNode


async def raw_client(url: str) -> ClientConnection:
    """A bare WebSocket peer, to send what a node never would."""
    return await connect(url, compression=None)


async def closed_by_peer(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the node closes the connection; return its close code and reason."""
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        async with asyncio.timeout(2):
            async for _ in ws:
                pass
    return ws.close_code, ws.close_reason


def version_talk(protocol_version: str = "1.0", alt: str = "1") -> bytes:
    body = {"protocol_version": protocol_version, "alt": alt, "library": "raw"}
    return encode(build_package(PackageType.TALK, "version", body))


class Recorder(Thread):
    """Records every hook and handler call in ``calls``; answers ``echo`` requests."""

    calls: list[tuple[str, Any]]

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.calls = []
        self.echoed = 0
        type(self).instances.append(self)

    instances: ClassVar[list[Recorder]] = []

    @property
    def event_map(self) -> EventMap:
        return {
            PackageType.REQUEST: {
                "echo": self.echo,
                "explicit": self.explicit,
                "fail": self.fail,
                "slow": self.slow,
                "bad_body": self.bad_body,
                "silent": self.silent,
                "later": self.later,
                "twice": self.twice,
            },
            PackageType.TALK: {"note": self.note},
        }

    async def echo(self, socket: Socket, package: Package) -> dict[str, Any]:
        self.echoed += 1
        return {"echo": package.body}

    async def explicit(self, socket: Socket, package: Package) -> None:
        role = self.server if socket.inbound else self.client
        assert role is not None
        await role.send_response(socket, package.event, {"explicit": True}, package.tag)

    async def twice(self, socket: Socket, package: Package) -> dict[str, Any]:
        """Answers ``times`` times with send_response(), then returns a body too."""
        role = self.server if socket.inbound else self.client
        assert role is not None
        for n in range(package.body["times"]):
            await role.send_response(socket, package.event, {"n": n}, package.tag)
        return {"n": "returned"}

    def fail(self, socket: Socket, package: Package) -> dict[str, Any]:
        raise RuntimeError("secret detail")

    async def slow(self, socket: Socket, package: Package) -> dict[str, Any] | None:
        """Work for ``seconds``; stop without an answer if the peer leaves meanwhile
        (so that no test waits out a handler nobody listens to any more)."""
        try:
            async with asyncio.timeout(package.body["seconds"]):
                await socket.wait_closed()
        except TimeoutError:
            return {"slept": package.body["seconds"]}
        return None

    async def silent(self, socket: Socket, package: Package) -> None:
        pass  # a forgotten return

    def later(self, socket: Socket, package: Package) -> None:
        async def answer() -> None:
            await asyncio.sleep(package.body["after"])
            await self.answer(socket, package, {"later": True})

        self.create_task(answer())

    def bad_body(self, socket: Socket, package: Package) -> Any:
        return ["not", "a", "dict"]

    def note(self, socket: Socket, package: Package) -> None:
        self.calls.append(("note", package.body))

    def start(self) -> None:
        self.calls.append(("start", None))

    async def stop(self) -> None:
        self.calls.append(("stop", None))

    def on_socket_connection(self, socket: Socket) -> None:
        self.calls.append(("connection", socket.inbound))

    def on_socket_open(self, socket: Socket) -> None:
        self.calls.append(("open", socket.inbound))

    def on_socket_close(self, socket: Socket) -> None:
        self.calls.append(("close", socket.close_code))

    def on_socket_error(self, socket: Socket, error: Exception) -> None:
        self.calls.append(("error", str(error)))


@pytest.fixture(autouse=True)
def _reset_recorders() -> None:
    Recorder.instances.clear()


async def pair(make_node: MakeNode, **options: Any) -> tuple[Node, Node, Socket]:
    server = await make_node(server=True, threads=[Recorder], **options)
    client = await make_node(client=True, peers=[server.url], threads=[Recorder], **options)
    assert client.client is not None and server.server is not None
    await client.client.wait_connected()
    await server.server.wait_connected()
    socket, inbound = client.client.sockets[0], server.server.sockets[0]
    # Both version talks have arrived: the next package counted is the test's.
    await wait_for(lambda: socket.stats.messages_in >= 1 and inbound.stats.messages_in >= 1)
    return server, client, socket


# Request/response


async def test_request_returns_handler_result(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node)
    assert client.client is not None
    assert await client.client.request(socket, "echo", {"n": 1}) == {"echo": {"n": 1}}


async def test_explicit_send_response(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node)
    assert client.client is not None
    assert await client.client.request(socket, "explicit", {}) == {"explicit": True}


async def test_a_request_handler_that_answers_nothing_is_said_once(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by a tester: a handler that forgot its return made the requester wait
    # response_timeout (300 s), with nothing logged on either side.
    server, client, socket = await pair(make_node)
    assert client.client is not None
    server.handlers.explicit.grace = 0.1

    def said() -> list[logging.LogRecord]:
        text = "returned None and sent no response within 0.1 s"
        return [r for r in caplog.records if text in r.getMessage()]

    for _ in range(2):
        with pytest.raises(RequestTimeout):
            await client.client.request(socket, "silent", {}, timeout=0.2)
    await wait_for(lambda: said() != [])
    assert [r.levelno for r in said()] == [logging.WARNING]
    assert "REQUEST 'silent' in Recorder returned None" in said()[0].getMessage()
    # One that answered with send_response(), or answers later, isn't said.
    assert await client.client.request(socket, "explicit", {}) == {"explicit": True}
    server.handlers.explicit.grace = 1.0
    assert await client.client.request(socket, "later", {"after": 0.05}) == {"later": True}
    assert await stays(lambda: len(said()) == 1, 1.1)
    assert not [
        r for r in caplog.records if "'explicit'" in r.getMessage() or "'later'" in r.getMessage()
    ]


async def test_a_request_answered_twice_is_said_once(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a tester: a handler that answered with send_response() twice, or
    answered and returned a body too, sent three responses for one request; the peer
    counted two as unmatched, and neither side said anything."""
    server, client, socket = await pair(make_node)
    assert client.client is not None

    def said(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if text in r.getMessage()]

    for _ in range(3):
        assert await client.client.request(socket, "twice", {"times": 2}) == {"n": 0}
    for _ in range(3):  # the same request again, answered once each time: nothing said
        assert await client.client.request(socket, "explicit", {}) == {"explicit": True}
    await wait_for(lambda: socket.stats.unmatched_in == 6)
    twice = said("answered twice with send_response()")
    returned = said("in Recorder answered with send_response() and returned a body too")
    assert [r.levelno for r in twice + returned] == [logging.WARNING] * 2
    # Identical requests from two peers (one tag), each answered once: nothing said.
    other = await make_node(client=True, peers=[server.url])
    assert other.client is not None
    await other.client.wait_connected()
    other_socket = other.client.sockets[0]
    for asker, to in ((other, other_socket), (client, socket)):
        assert asker.client is not None
        assert await asker.client.request(to, "explicit", {"same": 1}) == {"explicit": True}
    assert len(said("answered twice with") + said("returned a body too")) == 2


async def test_identical_requests_pending_at_once_are_each_answered_unsaid(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: two requests with one tag pending on one connection (a peer
    that doesn't merge them, or a requester that timed out and asked again while the
    first handler ran), each answered once, were said to be answered twice."""
    server, client, socket = await pair(make_node)
    assert client.client is not None
    assert await client.client.request(socket, "explicit", {}) == {"explicit": True}  # used
    base = socket.stats.unmatched_in
    request = build_package(PackageType.REQUEST, "later", {"after": 0.1}, tag="deadbeef")
    await client.send(socket, request)  # the same package twice, both pending
    await client.send(socket, request)
    await wait_for(lambda: socket.stats.unmatched_in - base == 2)  # (sent unasked)
    with pytest.raises(RequestTimeout):
        await client.client.request(socket, "later", {"after": 0.2}, timeout=0.05)
    assert await client.client.request(socket, "later", {"after": 0.2}) == {"later": True}
    await wait_for(lambda: socket.stats.unmatched_in - base == 3)  # the first one's answer
    assert not [r for r in caplog.records if "answered twice" in r.getMessage()]
    # A third answer of the raw pair's tag is one too many: said.
    inbound = server.server.sockets[0] if server.server is not None else None
    assert inbound is not None and server.server is not None
    await server.server.send_response(inbound, "later", {}, "deadbeef")
    await wait_for(lambda: [r for r in caplog.records if "answered twice" in r.getMessage()])


async def test_a_thread_answers_a_request_later(make_node: MakeNode) -> None:
    # Found by a new user: answering from a task took guessing the role and the event
    # send_response() wanted; and that correct code was warned of all the same.
    server, client, socket = await pair(make_node)
    assert client.client is not None and server.server is not None
    assert await client.client.request(socket, "later", {"after": 0}) == {"later": True}
    thread = Recorder.instances[0]
    with pytest.raises(ValueError, match="TALK 'note' is no request"):
        await thread.answer(
            server.server.sockets[0], build_package(PackageType.TALK, "note", {}), {}
        )


async def test_server_requests_client(make_node: MakeNode) -> None:
    server, _, _ = await pair(make_node)
    assert server.server is not None
    inbound = server.server.sockets[0]
    assert await server.server.request(inbound, "echo", {"to": "client"}) == {
        "echo": {"to": "client"}
    }


async def test_unhandled_request_is_answered_at_once(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node)
    assert client.client is not None
    with pytest.raises(RemoteError) as caught:
        await client.client.request(socket, "nobody", {}, timeout=1)
    assert caught.value.body == {"error": "no handler for REQUEST 'nobody'"}
    assert caught.value.error == "no handler for REQUEST 'nobody'"
    assert caught.value.event == "nobody"
    assert str(caught.value) == (
        "peer answered request 'nobody' with an error: no handler for REQUEST 'nobody'"
    )


async def test_a_talk_no_thread_handles_is_counted_and_said_once(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # A talk has no answer: dropped, but not silently (a peer of another application, or
    # of another version of ours, says so in the log and the metrics): once a peer and
    # event at INFO, then at DEBUG (tester48 F8: 10 lines a minute, for ever, from
    # peers whose threads talk to a hub that doesn't handle it).
    server, client, socket = await pair(make_node)
    assert client.client is not None
    with caplog.at_level(logging.DEBUG, logger="trustp2p"):
        for n in range(25):
            await client.client.send_talk(socket, "nobody", {"n": n})
        await client.client.send_talk(socket, "other", {})
        await wait_for(lambda: server.metrics.unhandled.get("TALK") == 26)
    lines = [r for r in caplog.records if "no thread handles it" in r.getMessage()]
    said = [r.getMessage() for r in lines if r.levelno == logging.INFO]
    assert len(lines) == 26
    assert [line.split("] ")[-1] for line in said] == [
        "- dropped TALK 'nobody': no thread handles it (more from this peer at DEBUG)",
        "- dropped TALK 'other': no thread handles it (more from this peer at DEBUG)",
    ]
    assert all(r.levelno == logging.DEBUG for r in lines if r.getMessage() not in said)
    assert await client.client.request(socket, "echo", {"after": 1}) == {"echo": {"after": 1}}


async def test_handler_exception_answers_error_and_node_goes_on(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node)
    assert client.client is not None
    with pytest.raises(RemoteError) as caught:
        await client.client.request(socket, "fail", {})
    assert caught.value.body == {"error": "handler of 'fail' failed"}  # no internals leak
    assert await client.client.request(socket, "echo", {"after": 1}) == {"echo": {"after": 1}}


async def test_a_flood_of_failing_requests_logs_ten_tracebacks_and_answers_all(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by an attacker's test: a peer chooses how often a handler fails on its input,
    # and each failure was an ERROR with a traceback (15,001 lines in 18 s). Within the
    # log budget now: the first 10 of a minute, the rest counted.
    _, client, socket = await pair(make_node)
    assert client.client is not None
    for _ in range(25):
        with pytest.raises(RemoteError, match="handler of 'fail' failed"):
            await client.client.request(socket, "fail", {})
    failures = [r for r in caplog.records if "] ! handler of" in r.getMessage()]
    assert len(failures) == 10
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in failures)


async def test_handler_returning_a_non_dict_answers_error(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    server, client, socket = await pair(make_node)
    assert client.client is not None
    with pytest.raises(RemoteError) as caught:
        await client.client.request(socket, "bad_body", {})
    assert caught.value.body == {"error": "handler of 'bad_body' failed"}
    # The log says what the handler did wrong, without a traceback into trustp2p.
    [record] = [r for r in caplog.records if "bad_body" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is None
    prefix, reason = record.getMessage().split(" returned what can't be sent: ")
    # The line names the peer, in its text and its fields (a tester: "peer": null).
    peer = server.server.sockets[0].peer if server.server is not None else None
    assert prefix == f"[{peer}] ! handler of REQUEST 'bad_body' in Recorder"
    assert getattr(record, "peer", None) == peer
    assert re.match(refused_type("body", "dict", "list"), reason)


async def test_identical_concurrent_requests_go_on_the_wire_once(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node)
    assert client.client is not None and server.server is not None
    inbound = server.server.sockets[0]
    before = inbound.stats.messages_in
    answers = await asyncio.gather(
        *(client.client.request(socket, "echo", {"same": True}) for _ in range(5))
    )
    assert answers == [{"echo": {"same": True}}] * 5
    assert inbound.stats.messages_in - before == 1
    server_recorder = next(r for r in Recorder.instances if r.node is server)
    assert server_recorder.echoed == 1
    # Each caller got its own copy of the body.
    answers[0]["echo"]["same"] = False
    assert answers[1] == {"echo": {"same": True}}


async def test_only_the_answer_type_answers_a_request(make_node: MakeNode) -> None:
    # A REQUEST is answered by a RESPONSE only, a HEARTBEAT_PING by a HEARTBEAT_PONG only:
    # the other type with its tag is counted as unmatched, and the request waits on.
    server = await make_node(server=True, secure=False)
    assert server.url is not None and server.server is not None
    role = server.server
    async with await raw_client(server.url) as ws:
        await ws.send(version_talk())
        assert decode(await ws.recv()).event == "version"
        await wait_for(lambda: role.sockets)
        inbound = role.sockets[-1]

        async def received(package_type: PackageType, event: str) -> Package:
            while True:  # skips the node's own heartbeat pings
                package = decode(await ws.recv())
                if (package.type, package.event) == (package_type, event):
                    return package

        async def answered_after_the_wrong_type(
            request_type: PackageType, wrong: PackageType, right: PackageType, unmatched: int
        ) -> None:
            pending = asyncio.create_task(
                role.request(inbound, "ask", {}, package_type=request_type)
            )
            request = await received(request_type, "ask")
            await ws.send(encode(build_package(wrong, "ask", {"wrong": 1}, tag=request.tag)))
            await wait_for(lambda: inbound.stats.unmatched_in == unmatched)
            assert not pending.done()
            await ws.send(encode(build_package(right, "ask", {"right": 1}, tag=request.tag)))
            assert await pending == {"right": 1}

        pong, response = PackageType.HEARTBEAT_PONG, PackageType.RESPONSE
        await answered_after_the_wrong_type(PackageType.REQUEST, pong, response, 1)
        await answered_after_the_wrong_type(PackageType.HEARTBEAT_PING, response, pong, 2)
        assert server.metrics.unmatched == 2  # node-wide too, for operators


async def test_request_timeout(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node)
    assert client.client is not None
    with pytest.raises(RequestTimeout) as info:
        await client.client.request(socket, "slow", {"seconds": 0.5}, timeout=50 * MS)
    assert info.value.event == "slow"
    assert isinstance(info.value, TimeoutError)


async def test_default_response_timeout_is_an_option(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node, response_timeout=50 * MS)
    assert client.client is not None
    with pytest.raises(RequestTimeout):
        await client.client.request(socket, "slow", {"seconds": 0.5})


async def test_pending_request_fails_when_connection_closes(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node)
    assert client.client is not None and server.server is not None
    inbound = server.server.sockets[0]
    before = inbound.stats.messages_in
    pending = asyncio.create_task(client.client.request(socket, "slow", {"seconds": 5}))
    await wait_for(lambda: inbound.stats.messages_in > before)  # the request is there
    await inbound.close(1000, "bye")
    with pytest.raises(ConnectionClosed) as info:
        await pending
    assert (info.value.code, info.value.reason) == (1000, "bye")


async def test_request_on_closed_socket_raises(make_node: MakeNode) -> None:
    _, client, socket = await pair(make_node)
    assert client.client is not None
    await socket.close()
    with pytest.raises(ConnectionClosed):
        await client.client.request(socket, "echo", {})


async def test_api_misuse_raises_at_once(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node)
    assert client.client is not None and server.server is not None
    with pytest.raises(TypeError):
        await client.client.request(socket, "echo", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a request type"):
        await client.client.request(socket, "echo", {}, package_type=PackageType.TALK)
    with pytest.raises(ValueError, match="only available on the client role"):
        await server.server.request(server.server.sockets[0], "echo", {}, reroute=True)
    # Found by a tester: socket_for() gives None when not connected, and request(None)
    # said "'NoneType' object has no attribute 'id'"; a timeout in a string, "'>' not
    # supported between instances of 'str' and 'int'".
    for reroute in (False, True):
        with pytest.raises(
            TypeError, match=r"^socket must be a Socket, not None \(not connected\?\)$"
        ):
            await client.client.request(None, "echo", {}, reroute=reroute)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^socket must be a Socket, not str$"):
        await client.client.request("ws://x", "echo", {})  # type: ignore[arg-type]
    # (The compiled build checks the annotation first: "float or None object expected".)
    said = (
        r"^(timeout must be a number of seconds, not '5'|float or None object expected; got str)$"
    )
    with pytest.raises(TypeError, match=said):
        await client.client.request(socket, "echo", {}, timeout="5")  # type: ignore[arg-type]


# Rerouting


class Stalling(Thread):
    """A server that never answers ``work``."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"work": self.work}}

    async def work(self, socket: Socket, package: Package) -> None:
        return None


class Working(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"work": self.work}}

    def work(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"done_by": self.node.url}


async def test_reroute_when_a_server_stalls(make_node: MakeNode) -> None:
    stalling = await make_node(server=True, threads=[Stalling])
    working = await make_node(server=True, threads=[Working])
    client = await make_node(
        client=True, peers=[stalling.url, working.url], stalled_timeout=50 * MS
    )
    assert client.client is not None
    await client.client.wait_connected(2)
    first = client.client.socket_for(stalling.url or "")
    assert first is not None
    answer = await client.client.request(first, "work", {"job": 1}, reroute=True, timeout=2)
    assert answer == {"done_by": working.url}


async def test_reroute_passes_over_a_server_without_the_handler(make_node: MakeNode) -> None:
    """Found by a tester: a client's servers met by peer exchange needn't run its
    threads, and the first in line answered every rerouted request with "no handler",
    which ended them, although another connected server ran the handler."""
    stalling = await make_node(server=True, threads=[Stalling])
    other = await make_node(server=True)  # runs no thread of ours
    working = await make_node(server=True, threads=[Working])
    client = await make_node(client=True, peers=[stalling.url, other.url], stalled_timeout=50 * MS)
    assert client.client is not None
    await client.client.wait_connected(2)
    client.client.connect(working.url or "")  # the last in line
    await client.client.connection_to(working.url or "", timeout=2)
    first = client.client.socket_for(stalling.url or "")
    assert first is not None
    answer = await client.client.request(first, "work", {"job": 1}, reroute=True, timeout=2)
    assert answer == {"done_by": working.url}


async def test_without_reroute_a_stalled_request_waits(make_node: MakeNode) -> None:
    stalling = await make_node(server=True, threads=[Stalling])
    working = await make_node(server=True, threads=[Working])
    client = await make_node(
        client=True, peers=[stalling.url, working.url], stalled_timeout=20 * MS
    )
    assert client.client is not None
    await client.client.wait_connected(2)
    first = client.client.socket_for(stalling.url or "")
    assert first is not None
    with pytest.raises(RequestTimeout):
        # Real time: the request outlives several stalled_timeout periods, unrerouted.
        await client.client.request(first, "work", {"job": 2}, timeout=100 * MS)


async def test_reroute_at_once_when_the_connection_is_lost(make_node: MakeNode) -> None:
    stalling = await make_node(server=True, threads=[Stalling])
    working = await make_node(server=True, threads=[Working])
    client = await make_node(client=True, peers=[stalling.url, working.url], stalled_timeout=60)
    assert client.client is not None and stalling.server is not None
    await client.client.wait_connected(2)
    first = client.client.socket_for(stalling.url or "")
    assert first is not None
    pending = asyncio.create_task(
        client.client.request(first, "work", {"job": 3}, reroute=True, timeout=2)
    )
    await wait_for(
        lambda: bool(
            stalling.server
            and stalling.server.sockets
            and stalling.server.sockets[0].stats.messages_in >= 2
        )
    )
    await stalling.server.sockets[0].close(1001, "going")
    assert await pending == {"done_by": working.url}


async def test_reroute_when_the_connection_was_lost_before_the_call(make_node: MakeNode) -> None:
    # Before, check_open raised ConnectionClosed though another server was connected.
    gone = await make_node(server=True, threads=[Working])
    working = await make_node(server=True, threads=[Working])
    client = await make_node(client=True, peers=[gone.url, working.url])
    assert client.client is not None
    await client.client.wait_connected(2)
    first = client.client.socket_for(gone.url or "")
    assert first is not None
    await gone.stop()
    await wait_for(lambda: first.closed)
    answer = await client.client.request(first, "work", {}, reroute=True, timeout=2)
    assert answer == {"done_by": working.url}
    with pytest.raises(ConnectionClosed):  # without reroute, as before
        await client.client.request(first, "work", {}, timeout=2)


# Heartbeat


async def test_heartbeat_ping_pong(make_node: MakeNode) -> None:
    timings = {
        "heartbeat_interval": 20 * MS,
        "heartbeat_jitter": 5 * MS,
        "heartbeat_timeout": 20 * MS,
    }
    server = await make_node(server=True, threads=[HeartbeatThread], **timings)
    client = await make_node(client=True, peers=[server.url], threads=[HeartbeatThread], **timings)
    assert server.server is not None
    await server.server.wait_connected()
    inbound = server.server.sockets[0]
    await wait_for(lambda: inbound.stats.last_rtt is not None)
    assert inbound.stats.last_rtt is not None and inbound.stats.last_rtt > 0
    assert client.client is not None and len(client.client.sockets) == 1


async def test_heartbeat_pings_and_pongs_are_the_originals_bytes(make_node: MakeNode) -> None:
    server = await make_node(
        server=True,
        secure=False,
        threads=[HeartbeatThread],
        heartbeat_interval=20 * MS,
        heartbeat_jitter=0,
        heartbeat_timeout=20 * MS,
    )
    assert server.url is not None
    async with await raw_client(server.url) as ws:
        await ws.send(version_talk())
        frames = [await ws.recv() for _ in range(2)]  # version talk, then a ping
        ping = decode(frames[1])
        assert ping.type is PackageType.HEARTBEAT_PING
        assert frames[1] == bytes.fromhex(
            "0a03312e30120131180a220470696e672a027b7d322c5a4772334a426a6d4232476a336a4c38"
            "305442547654585472694d64486f70623348766a683275317a6b553d"
        )


async def test_silent_client_is_dropped_as_lost_peer(make_node: MakeNode) -> None:
    server = await make_node(
        server=True,
        secure=False,
        threads=[HeartbeatThread, Recorder],
        heartbeat_interval=20 * MS,
        heartbeat_jitter=0,
        heartbeat_timeout=20 * MS,
        heartbeat_response_timeout=60 * MS,
    )
    assert server.url is not None and server.server is not None
    async with await raw_client(server.url) as ws:
        # Never answers pings.
        assert await closed_by_peer(ws) == (1001, "lost peer")
    recorder = next(r for r in Recorder.instances if r.node is server)
    # The server dropped the connection without waiting for a closing handshake, which
    # a dead link can't complete: 1006 on its side.
    await wait_for(lambda: ("close", 1006) in recorder.calls)
    assert server.server.sockets == []


async def test_busy_client_is_pinged_too_and_does_not_stop_the_round(
    make_node: MakeNode,
) -> None:
    timings = {
        "heartbeat_interval": 20 * MS,
        "heartbeat_jitter": 0,
        "heartbeat_timeout": 40 * MS,
    }
    server = await make_node(server=True, threads=[HeartbeatThread, Recorder], **timings)
    assert server.server is not None
    # The busy client connects first, so the server's round meets it first: the original
    # stopped its round at the first client that wasn't silent.
    busy = await make_node(client=True, peers=[server.url], threads=[Recorder], **timings)
    await server.server.wait_connected(1)
    busy_inbound = server.server.sockets[0]
    await make_node(client=True, peers=[server.url], threads=[HeartbeatThread], **timings)
    await server.server.wait_connected(2)
    assert busy.client is not None
    busy_socket = busy.client.sockets[0]

    async def chatter() -> None:
        assert busy.client is not None
        while True:
            await busy.client.send_talk(busy_socket, "note", {})
            await asyncio.sleep(5 * MS)

    task = asyncio.create_task(chatter())
    try:
        quiet_inbound = server.server.sockets[1]
        await wait_for(lambda: quiet_inbound.stats.last_rtt is not None)
        # Pinged although it talks (the original never pinged it), and it answered
        # without a heartbeat thread: the node answers pings itself.
        await wait_for(lambda: busy_inbound.stats.last_rtt is not None)
    finally:
        task.cancel()


# Limits and bad input


async def test_max_inbound_refuses_the_next_client(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node, max_inbound=1, secure=False)
    assert server.url is not None and client.client is not None
    async with await raw_client(server.url) as ws:
        assert await closed_by_peer(ws) == (1013, "inbound connections maxed out")
    assert await client.client.request(socket, "echo", {"still": "served"}) == {
        "echo": {"still": "served"}
    }


async def test_bad_input_is_answered_counted_and_harmless(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node, secure=False)
    assert server.url is not None and server.server is not None and client.client is not None
    async with await raw_client(server.url) as ws:
        await ws.send(version_talk())
        assert decode(await ws.recv()).event == "version"
        await ws.send(b"\xff\x00garbage")  # not protobuf
        await ws.send("a text frame")  # packages travel in binary frames
        unknown = encode(build_package(PackageType.TALK, "x", {})).replace(b"\x18\x14", b"\x18\x09")
        await ws.send(unknown)  # type 9
        # A request whose body is not JSON is answered with its tag.
        bad = build_package(PackageType.REQUEST, "echo", {"a": 1})
        raw = encode(bad).replace(b'{"a":1}', b"{nope!}")
        await ws.send(raw)
        answer = decode(await ws.recv())
        assert answer.type is PackageType.RESPONSE
        assert answer.tag == bad.tag
        assert answer.body == {
            "error": "invalid request: body is not valid JSON: "
            "Expecting property name enclosed in double quotes at position 1"
        }
        inbound = server.server.sockets[-1]
        assert inbound.stats.invalid_in == 4
        # Still connected, and a good request works.
        good = build_package(PackageType.REQUEST, "echo", {"ok": True})
        await ws.send(encode(good))
        assert decode(await ws.recv()).body == {"echo": {"ok": True}}
    # The other peer never noticed.
    assert await client.client.request(socket, "echo", {"n": 2}) == {"echo": {"n": 2}}


async def test_oversized_frame_closes_that_peer_only(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node, max_package_size=1024, secure=False)
    assert server.url is not None and client.client is not None
    async with await connect(server.url, compression=None, max_size=None) as ws:
        await ws.send(b"\x00" * 1025)
        code, _ = await closed_by_peer(ws)
        assert code == 1009
    assert await client.client.request(socket, "echo", {"n": 3}) == {"echo": {"n": 3}}


async def test_incompatible_version_is_closed_with_a_reason(make_node: MakeNode) -> None:
    server = await make_node(server=True, secure=False)
    assert server.url is not None
    async with await raw_client(server.url) as ws:
        await ws.send(version_talk(protocol_version="2.0"))
        assert await closed_by_peer(ws) == (
            1002,
            "protocol version 2.0 is incompatible: the closing node speaks major version 1,"
            " the other 2",
        )


async def test_other_network_is_closed(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True, alt="1")
    client = await make_node(
        client=True, peers=[server.url], alt="2", reconnect_initial=10.0, reconnect_max=10.0
    )
    assert server.server is not None
    await wait_for(
        lambda: (
            client.client is not None
            and client.client.sockets == []
            and server.server is not None
            and server.server.sockets == []
        )
    )
    # With the reason, on both sides (before: invalid packages, a handshake timeout, and
    # each side blocking the other for an hour).
    reason = "network alt '2' is another network: the closing node runs on '1'"
    await wait_for(lambda: sum(reason in r.getMessage() for r in caplog.records) >= 2)
    assert not any("blocking" in r.getMessage() for r in caplog.records)


# Threads and lifecycle


async def test_hooks_and_order(make_node: MakeNode) -> None:
    server, client, socket = await pair(make_node)
    assert client.client is not None
    for n in range(5):
        await client.client.send_talk(socket, "note", {"n": n})
    server_recorder = next(r for r in Recorder.instances if r.node is server)
    client_recorder = next(r for r in Recorder.instances if r.node is client)
    await wait_for(lambda: len([c for c in server_recorder.calls if c[0] == "note"]) == 5)
    assert server_recorder.calls == [
        ("start", None),
        ("connection", True),
        *[("note", {"n": n}) for n in range(5)],
    ]
    assert client_recorder.calls == [("start", None), ("open", False)]
    await client.stop()
    assert client_recorder.calls[-2:] == [("stop", None), ("close", 1001)]
    await wait_for(lambda: server_recorder.calls[-1] == ("close", 1001))


class LateWriter(Thread):
    """Writes to a connection as it closes: what the README's echo thread met when a
    secure server refused a plain one right after its ``on_socket_open``."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"note": self.note}}

    async def note(self, socket: Socket, package: Package) -> None:
        pass

    async def on_socket_close(self, socket: Socket) -> None:
        socket.write(b"too late")


async def test_a_hook_that_meets_its_connection_closed_is_no_error(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A closed connection is the network's doing, not a bug in the thread: said at
    INFO, without a traceback (found by a new-user tester: an ERROR and a traceback)."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True)
    client = await make_node(client=True, peers=[server.url], threads=[LateWriter])
    assert client.client is not None
    await client.client.wait_connected()
    await client.stop()
    [line] = [r for r in caplog.records if "on_socket_close of LateWriter" in r.getMessage()]
    assert (
        line.getMessage()
        == "! on_socket_close of LateWriter ended: connection closed with code 1001: node stopping"
    )
    assert line.levelno == logging.INFO and line.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("threads", [[], [Recorder]])
async def test_a_missing_threads_enabled_directory_is_a_warning_when_no_thread_runs(
    make_node: MakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture, threads: list[Any]
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    await make_node(server=True, cwd=tmp_path, threads=threads)
    [record] = [r for r in caplog.records if "doesn't exist: no thread loaded" in r.getMessage()]
    assert record.levelno == (logging.INFO if threads else logging.WARNING)


async def test_stop_calls_every_thread_stop_and_closes_with_1001(make_node: MakeNode) -> None:
    server, _, socket = await pair(make_node)
    await server.stop()
    assert socket.close_code == 1001
    assert socket.close_reason == "node stopping"
    for recorder in Recorder.instances:
        if recorder.node is server:
            assert ("stop", None) in recorder.calls


@pytest.mark.parametrize("driver", ["ws", "tcp"])
async def test_a_server_stopped_as_a_client_connects_closes_with_1001(
    make_node: MakeNode, driver: str
) -> None:
    # Found by a library user's test: the server's end was still in its handshake (the
    # client's hello on its way); its closing handshake was cut short at once, and the
    # client saw a reset (1006) and a WARNING.
    # Peer exchange on, as by default: the client's first request follows its hello.
    server = await make_node(server=True, driver=driver, peer_exchange=True)
    client = await make_node(client=True, peers=[server.url], driver=driver, peer_exchange=True)
    assert client.client is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    await server.stop()
    async with asyncio.timeout(5):
        await socket.wait_closed()
    assert (socket.close_code, socket.close_reason) == (1001, "node stopping")


async def test_slow_handler_does_not_stall_other_connections(make_node: MakeNode) -> None:
    server = await make_node(server=True, threads=[Recorder])
    slow = await make_node(client=True, peers=[server.url])
    fast = await make_node(client=True, peers=[server.url])
    assert slow.client is not None and fast.client is not None
    await slow.client.wait_connected()
    await fast.client.wait_connected()
    assert server.server is not None
    await server.server.wait_connected(2)
    slow_inbound = next(s for s in server.server.sockets if s.peer_id == slow.peer_id)
    before = slow_inbound.stats.messages_in
    # The handler works until the slow client leaves at the end of the test.
    sleeping = asyncio.create_task(
        slow.client.request(slow.client.sockets[0], "slow", {"seconds": 60})
    )
    await wait_for(lambda: slow_inbound.stats.messages_in > before)
    assert await fast.client.request(fast.client.sockets[0], "echo", {}) == {"echo": {}}
    assert not sleeping.done()
    sleeping.cancel()


async def test_client_reconnects_after_the_server_comes_back(make_node: MakeNode) -> None:
    server = await make_node(server=True)
    port = int((server.url or "").rsplit(":", 1)[1])
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    await server.stop()
    await wait_for(lambda: client.client is not None and client.client.sockets == [])
    await make_node(server=True, port=port)
    await wait_for(lambda: client.client is not None and len(client.client.sockets) == 1)


async def test_one_connection_per_url(make_node: MakeNode) -> None:
    server = await make_node(server=True)
    assert server.url is not None
    client = await make_node(client=True, peers=[server.url, server.url])
    assert client.client is not None and server.server is not None
    dialler, accepter = client.client, server.server
    dialler.connect(server.url)
    await dialler.wait_connected()
    await accepter.wait_connected()
    # A second dial would have started with the first: its connection shows within a
    # handshake's time.
    assert await stays(lambda: len(dialler.sockets) == 1 and len(accepter.sockets) == 1, 50 * MS)


async def test_broadcast_reports_each_peer(make_node: MakeNode) -> None:
    server = await make_node(server=True, threads=[Recorder])
    clients = [
        await make_node(client=True, peers=[server.url], threads=[Recorder]) for _ in range(3)
    ]
    assert server.server is not None
    await server.server.wait_connected(3)
    sockets = server.server.sockets
    await sockets[0].close()
    results = await server.server.broadcast("note", {"all": True})
    assert results[sockets[1]] is None and results[sockets[2]] is None
    assert set(results) == set(sockets[1:])  # the closed one left the role
    results = await server.server.broadcast("note", {}, sockets=sockets)
    assert isinstance(results[sockets[0]], ConnectionClosed)
    answers = await server.server.broadcast("echo", {"q": 1}, package_type=PackageType.REQUEST)
    assert list(answers.values()) == [{"echo": {"q": 1}}] * 2
    del clients


class Started(Thread):
    """Records its start and stop in ``calls``; ``fails`` makes its start raise."""

    calls: ClassVar[list[tuple[str, str]]] = []
    fails = False

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {type(self).__name__: lambda socket, package: None}}

    def start(self) -> None:
        if self.fails:
            raise RuntimeError("no database")
        self.calls.append(("start", type(self).__name__))

    def stop(self) -> None:
        self.calls.append(("stop", type(self).__name__))


class First(Started):
    pass


class NeedsADatabase(Started):
    fails = True


class Last(Started):
    pass


class BrokenConstructor(Recorder):
    def __init__(self, node: Node) -> None:
        raise ValueError("bad configuration")


async def test_a_thread_whose_start_raises_stops_the_start() -> None:
    # Before, it was logged and the node ran without it, its handlers answering as if it
    # worked. Now Node.start() raises; the threads started before it are stopped again.
    Started.calls.clear()
    node = Node(server=True, port=0, threads=[First, NeedsADatabase, Last], **FAST)
    with pytest.raises(ThreadLoadError, match=r"start\(\) failed: RuntimeError\('no database'\)"):
        await node.start()
    assert node.state is trustp2p.NodeState.STOPPED and node.url is None  # never listened
    # The failing one isn't stopped (its start didn't finish), the last never started.
    assert Started.calls == [("start", "First"), ("stop", "First")]


async def test_a_thread_whose_constructor_raises_stops_the_start() -> None:
    node = Node(server=True, port=0, threads=[BrokenConstructor], **FAST)
    with pytest.raises(ThreadLoadError, match=r"BrokenConstructor\(node\) failed") as caught:
        await node.start()
    assert isinstance(caught.value.__cause__, ValueError)


async def test_a_failed_start_removes_the_key_and_data_it_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by testers (t27 F8, t28 F9): a start that failed on a port in use left
    ``identity/<name>.key`` and ``data/<name>/``, and ``trustp2p peers`` listed a node
    that never ran. What a start made goes with it; what a node had before stays."""
    first = Node(server=True, port=0, cwd=tmp_path, name="first", **FAST)
    await first.start()
    try:
        assert first.url is not None
        port = int(first.url.rsplit(":", 1)[1])
        caplog.set_level(logging.INFO, "trustp2p.node")
        with pytest.raises(trustp2p.DriverError, match="can't listen"):
            await Node(server=True, port=port, cwd=tmp_path, name="second", **FAST).start()
        assert sorted(p.name for p in (tmp_path / "identity").glob("*.key")) == ["first.key"]
        assert [p.name for p in (tmp_path / "data").iterdir()] == ["first"]
        assert any("removed what the failed start made" in r.getMessage() for r in caplog.records)
        # Its key's lock file too (tester48 F9: left behind, the line said all went).
        kept = ["first.key", "first.key.lock"]
        if sys.platform != "win32":  # (an open file can't be unlinked there)
            assert sorted(p.name for p in (tmp_path / "identity").iterdir()) == kept
        # Unnamed, its data directory is data/ itself, there already (found by a
        # tester: its new stores were left in it).
        with pytest.raises(trustp2p.DriverError, match="can't listen"):
            await Node(server=True, port=port, cwd=tmp_path, **FAST).start()
        assert [p.name for p in (tmp_path / "data").iterdir()] == ["first"]
        if sys.platform != "win32":
            assert sorted(p.name for p in (tmp_path / "identity").iterdir()) == kept
        await first.stop()  # then again, on a port in use, with its key and data kept
        again = Node(server=True, port=port, cwd=tmp_path, name="first", **FAST)
        async with Node(server=True, port=port, **FAST):
            with pytest.raises(trustp2p.DriverError, match="can't listen"):
                await again.start()
        assert (tmp_path / "identity" / "first.key").exists()
        assert (tmp_path / "data" / "first").is_dir()
    finally:
        await first.stop()


async def test_async_with_starts_and_stops() -> None:
    async with Node(server=True, port=0) as node:
        assert node.state is trustp2p.NodeState.RUNNING
        assert node.url is not None and node.url.startswith("ws://127.0.0.1:")
    assert node.state is trustp2p.NodeState.STOPPED


async def test_create_functions(tmp_path: Path) -> None:
    # Each node has its own directory: the identity lives in <cwd>/identity/node.key.
    for name in ("server", "client", "both"):
        (tmp_path / name).mkdir()
    server = await trustp2p.create_server(cwd=tmp_path / "server", port=0, **FAST)
    try:
        client = await trustp2p.create_client(cwd=tmp_path / "client", peers=[server.url], **FAST)
        both = await trustp2p.create_node(cwd=tmp_path / "both", port=0, peers=[server.url], **FAST)
        try:
            assert client.server is None and client.client is not None
            assert both.server is not None and both.client is not None
            async with asyncio.timeout(5):
                await client.client.wait_connected()
                await both.client.wait_connected()
                assert server.server is not None
                await server.server.wait_connected(2)
            assert (tmp_path / "server" / "identity" / "node.key").exists()
            assert (tmp_path / "server" / "data" / "peers.sqlite").exists()
        finally:
            await both.stop()
            await client.stop()
    finally:
        await server.stop()


async def test_listen_failure_is_a_driver_error(make_node: MakeNode) -> None:
    server = await make_node(server=True)
    port = int((server.url or "").rsplit(":", 1)[1])
    node = Node(server=True, port=port, threads=[Recorder])
    with pytest.raises(trustp2p.DriverError, match=r"can.t listen on 127\.0\.0\.1"):
        await node.start()
    recorder = Recorder.instances[-1]
    assert recorder.calls == [("start", None), ("stop", None)]


async def test_memory_driver_network() -> None:
    from trustp2p.drivers.memory import MemoryDriver, MemoryHub

    driver = MemoryDriver(hub=MemoryHub())
    async with Node(server=True, port=0, driver=driver, threads=[Recorder]) as server:
        assert server.url is not None and server.url.startswith("memory://")
        async with Node(client=True, peers=[server.url], driver=driver) as client:
            assert client.client is not None
            await client.client.wait_connected()
            answer = await client.client.request(client.client.sockets[0], "echo", {"m": 1})
            assert answer == {"echo": {"m": 1}}


def test_json_bodies_keep_key_order() -> None:
    package = build_package(PackageType.REQUEST, "e", {"b": 1, "a": 2})
    assert json.loads(package.body_json) == {"b": 1, "a": 2}
    assert package.body_json == '{"b":1,"a":2}'


async def test_nodes_sharing_a_directory_get_their_own_identities(tmp_path: Path) -> None:
    """The README's example: a server, a client and a node of one application directory."""
    server = await trustp2p.create_server(cwd=tmp_path, port=0, **FAST)
    try:
        client = await trustp2p.create_client(cwd=tmp_path, peers=[server.url], **FAST)
        both = await trustp2p.create_node(cwd=tmp_path, port=0, peers=[server.url], **FAST)
        try:
            assert client.client is not None and both.client is not None
            async with asyncio.timeout(5):
                await client.client.wait_connected()
                await both.client.wait_connected()
            ids = {server.peer_id, client.peer_id, both.peer_id}
            assert len(ids) == 3
            assert server.data_dir == tmp_path / "data"
            assert {client.data_dir, both.data_dir} == {
                tmp_path / "data" / "node-2",
                tmp_path / "data" / "node-3",
            }
            assert (tmp_path / "identity" / "node-2.key").exists()
        finally:
            await both.stop()
            await client.stop()
    finally:
        await server.stop()
    # Once they stopped, the first identity is free again, and the same.
    again = await trustp2p.create_server(cwd=tmp_path, port=0, **FAST)
    try:
        assert again.peer_id == server.peer_id
    finally:
        await again.stop()


async def test_named_nodes_keep_their_identities_whatever_order_they_start_in(
    tmp_path: Path,
) -> None:
    """Found by a new-user tester: two nodes of one directory restarted in the other
    order swapped identities, peer stores and message logs (node-2 and node-3). Named,
    each gets its own back."""
    peer_ids = {}
    for names in (["relay", "edge"], ["edge", "relay"]):
        nodes = [
            await trustp2p.create_server(cwd=tmp_path, port=0, name=name, **FAST) for name in names
        ]
        try:
            for name, node in zip(names, nodes, strict=True):
                assert peer_ids.setdefault(name, node.peer_id) == node.peer_id
                assert node.data_dir == tmp_path / "data" / name
        finally:
            for node in nodes:
                await node.stop()
    assert len(set(peer_ids.values())) == 2
    assert not (tmp_path / "identity" / "node.key").exists()


class SlowToStop(Thread):
    """A thread whose stop() waits for the test to let it finish."""

    released: ClassVar[asyncio.Event]

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"unused": lambda socket, package: None}}

    async def stop(self) -> None:
        await self.released.wait()


async def test_a_node_restarted_while_still_stopping_keeps_its_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A restart (Ctrl-C, then start again at once) while the old node still drains:
    # the new one waits for the identity instead of taking node-2's.
    caplog.set_level(logging.INFO, logger="trustp2p")
    SlowToStop.released = asyncio.Event()
    old = await trustp2p.create_server(cwd=tmp_path, port=0, threads=[SlowToStop], **FAST)
    stopping = asyncio.create_task(old.stop())
    await wait_for(lambda: old.state is trustp2p.NodeState.STOPPING)
    starting = asyncio.create_task(trustp2p.create_server(cwd=tmp_path, port=0, **FAST))
    await wait_for(lambda: "waiting for the node stopping" in caplog.text)
    assert not starting.done()
    SlowToStop.released.set()
    await stopping
    new = await starting
    try:
        assert new.peer_id == old.peer_id
        assert new.data_dir == tmp_path / "data"
        assert not (tmp_path / "identity" / "node-2.key").exists()
    finally:
        await new.stop()


class StopHangs(Thread):
    """A thread whose ``stop()`` never returns."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"note": lambda socket, package: None}}

    async def stop(self) -> None:
        await asyncio.Event().wait()


async def test_a_stop_cancelled_at_once_goes_on_and_a_second_stop_waits_for_it(
    make_node: MakeNode,
) -> None:
    # Before, the node stayed STOPPING for good: its tasks, store threads and files kept.
    server = await make_node(server=True)
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0)  # the stop has begun
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping  # the caller is cancelled...
    assert server.state is NodeState.STOPPING
    await server.stop()  # ...the stop isn't: this waits for its end
    assert server.state is NodeState.STOPPED and not server.tasks


async def test_cancelling_a_caller_of_stop_reaches_it(make_node: MakeNode) -> None:
    # Before, stop() swallowed a cancellation that came once it was past its first step.
    server = await make_node(server=True, threads=[StopHangs], close_timeout=200 * MS)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.stop(), 50 * MS)
    await server.stop()
    assert server.state is NodeState.STOPPED


async def test_a_threads_stop_that_never_returns_is_given_close_timeout(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_node(server=True, threads=[StopHangs], close_timeout=100 * MS)
    await server.stop()
    assert server.state is NodeState.STOPPED
    [line] = [r for r in caplog.records if "didn't return within" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == "! stop of StopHangs didn't return within 0.1 s: going on"


async def test_a_socket_of_another_node_is_a_usage_error(make_node: MakeNode) -> None:
    # Before: "ConnectionClosed: connection closed", though the connection was open.
    server, _, socket = await pair(make_node)
    other = await make_node(client=True, peers=[server.url])
    assert other.client is not None
    with pytest.raises(trustp2p.UsageError, match=r"is not a connection of this node"):
        await other.client.request(socket, "echo", {})
    assert not socket.closed


@pytest.mark.parametrize(
    ("host", "admin"),
    [
        ("LOCALHOST", None),  # (review53 M1: refused, though it listened before)
        ("127.1", None),  # (review53 L1: the resolver's call)
        ("fe80::1%lo", None),
        ("::", "127.0.0.1:1107"),  # (review53 L2: an IPv6 socket takes IPv6 only)
        ("0.0.0.0", "[::1]:1107"),
        ("127.0.0.1", "127.0.0.2:1107"),
    ],
)
def test_hosts_and_admin_addresses_a_node_takes(host: str, admin: str | None) -> None:
    trustp2p.NodeOptions(server=True, host=host, port=1107, admin=admin)
    # A memory driver binds no port: its port and the admin's may be the same number.
    trustp2p.NodeOptions(server=True, driver="memory", port=1107, admin="1107")


NAME_RULE = "1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"peers": "ws://127.0.0.1:1107"}, TypeError, "peers must be a sequence of URLs"),
        ({"port": "0"}, ValueError, "port must be an integer in 0..65535, not '0'"),
        ({"port": True}, ValueError, "port must be an integer in 0..65535, not True"),
        # tester37 F10: these failed only once the node had made its key and data
        ({"host": "127.0.0.1:1107"}, ValueError, "without a port or brackets (the port is"),
        ({"host": "[::1]"}, ValueError, "without a port or brackets"),
        ({"host": "ws://127.0.0.1"}, ValueError, "IP address, not a URL: 'ws://127.0.0.1'"),
        ({"host": "a b"}, ValueError, "host must be a host name or IP address: 'a b'"),
        ({"port": 1107, "admin": "1107"}, ConfigError, "port 1107 is the node's port too"),
        ({"port": 1107, "host": "::", "admin": "[::1]:1107"}, ConfigError, "node's port too"),
        ({"port": 1107, "host": "localhost", "admin": "1107"}, ConfigError, "node's port too"),
        # review55 R5: a name resolves to some address, which every interface's takes
        (
            {"port": 1107, "host": "0.0.0.0", "admin": "node.example:1107", "admin_token": "t"},
            ConfigError,
            "node's port too",
        ),
        ({"name": "../x"}, ValueError, f"name must be {NAME_RULE}, not '../x'"),
        ({"name": 2}, ValueError, f"name must be {NAME_RULE}, not 2"),
        ({"name": "Relay"}, ValueError, f"name must be {NAME_RULE}, not 'Relay'"),
    ],
)
async def test_mistaken_arguments_say_what_is_wrong(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    # Before: a str of peers was read as one URL per character ("peer URL 'w' lacks a
    # scheme"), and port="0" failed inside a comparison of int and str.
    with pytest.raises(error, match=re.escape(match)):
        await trustp2p.create_node(**options)


class Shutdown(Thread):
    """An admin command: a request that stops the node it runs in."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"shutdown": self.shutdown}}

    async def shutdown(self, socket: Socket, package: Package) -> dict[str, Any]:
        await self.node.stop()
        return {}


async def test_a_handler_can_stop_its_node(make_node: MakeNode) -> None:
    # Before: a RecursionError in asyncio (the stop cancelled and awaited the very task
    # it ran in), the node stuck STOPPING, and asyncio.run() crashing at its exit.
    server = await make_node(server=True, threads=[Shutdown])
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    with pytest.raises(ConnectionClosed):  # the stop cancels the handler: no answer
        await client.client.request(client.client.sockets[0], "shutdown", {})
    await wait_for(lambda: server.state is NodeState.STOPPED)
    assert not server.tasks


class ShutdownTalk(Thread):
    """An admin command as a talk: it stops the node it runs in."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"shutdown": self.shutdown}}

    async def shutdown(self, socket: Socket, package: Package) -> None:
        await self.node.stop()


async def test_a_talk_handler_can_stop_its_node_without_waiting_for_itself(
    make_node: MakeNode,
) -> None:
    # Before, the stop waited close_timeout for the worker running that very handler.
    server = await make_node(server=True, threads=[ShutdownTalk], close_timeout=30.0)
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    await client.client.send_talk(client.client.sockets[0], "shutdown", {})
    await wait_for(lambda: server.state is NodeState.STOPPED)  # 5 s at most, not 30


class ShutdownTalkSeen(ShutdownTalk):
    """:class:`ShutdownTalk`, and the connections it saw open and close."""

    opened: ClassVar[list[str]] = []
    closed: ClassVar[list[str]] = []

    def on_socket_connection(self, socket: Socket) -> None:
        self.opened.append(socket.id)

    def on_socket_close(self, socket: Socket) -> None:
        self.closed.append(socket.id)


async def test_a_handler_that_stops_its_node_sees_its_connection_close(
    make_node: MakeNode,
) -> None:
    # Found in review (review67 F3): the worker of the handler that stopped the node
    # took no next item, so its own connection's on_socket_close never ran: a thread saw
    # that connection open and never close (the other connection's close ran).
    ShutdownTalkSeen.opened, ShutdownTalkSeen.closed = [], []
    server = await make_node(server=True, threads=[ShutdownTalkSeen])
    clients = [await make_node(client=True, peers=[server.url]) for _ in range(2)]
    for client in clients:
        assert client.client is not None
        await client.client.wait_connected()
    await wait_for(lambda: len(ShutdownTalkSeen.opened) == 2)
    first = clients[0].client
    assert first is not None
    await first.send_talk(first.sockets[0], "shutdown", {})
    await wait_for(lambda: server.state is NodeState.STOPPED)
    await wait_for(lambda: sorted(ShutdownTalkSeen.closed) == sorted(ShutdownTalkSeen.opened))


@pure_only("trustp2p.node.node", "a compiled Node takes no weak reference to watch it with")
async def test_a_stopped_node_is_freed_at_once() -> None:
    """Found by a soak tester: a stopped node stayed in memory for up to a minute (its
    context, which named it, lives on in the cancelled timers asyncio keeps until they
    fall due; restarting nodes held 2-4 old ones, +35 MB)."""
    import gc
    import weakref

    node = Node(server=True, client=True, port=0, **FAST)
    await node.start()
    await node.stop()
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None


async def test_a_start_that_fails_after_claiming_the_identity_undoes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in review: a failure between the identity's claim and the threads' start
    # left the node NEW, its identity locked and its peer store open.
    async def broken(self: object) -> None:
        raise RuntimeError("gossip can't start")

    monkeypatch.setattr("trustp2p.node.gossip.Gossip.start", broken)
    node = Node(server=True, port=0, cwd=tmp_path)
    with pytest.raises(RuntimeError, match="gossip can't start"):
        await node.start()
    assert node.state is NodeState.STOPPED
    assert node.store is not None
    with pytest.raises(trustp2p.NodeStateError, match=r"^the peer store is closed$"):
        await node.store.record_failure("ws://127.0.0.1:1")
    monkeypatch.undo()
    async with Node(server=True, port=0, cwd=tmp_path) as again:
        # identity/node.key again, not node-2.key: the failed start doesn't hold it (it
        # made the key, and removed it).
        assert [p.name for p in (tmp_path / "identity").glob("*.key")] == ["node.key"]
        assert again.data_dir == tmp_path / "data"


@pytest.mark.parametrize("phase", ["opening the store and gossip", "starting threads"])
async def test_a_stop_during_start_waits_for_it_then_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """Found running a stop() beside a start(): once the start had marked the node
    running (its threads starting), the stop ran beside it and the start then listened:
    a STOPPED node accepting connections on its port. Before that (identity, store,
    gossip), stop() did nothing and the node then ran. Now stop() waits for the start
    to end, then stops the node; a second start() meanwhile is refused."""
    reached, gate = asyncio.Event(), asyncio.Event()

    async def held() -> None:
        reached.set()
        await gate.wait()

    class SlowStart(Recorder):
        async def start(self) -> None:
            await held()

    if phase == "starting threads":
        threads: list[type[Thread]] = [SlowStart]
    else:
        threads = []
        gossip_start = trustp2p.node.gossip.Gossip.start

        async def slow_gossip(self: trustp2p.node.gossip.Gossip) -> None:
            await held()
            await gossip_start(self)

        monkeypatch.setattr("trustp2p.node.gossip.Gossip.start", slow_gossip)
    node = Node(server=True, port=0, cwd=tmp_path, threads=threads, **FAST)
    starting = asyncio.create_task(node.start())
    await reached.wait()
    with pytest.raises(trustp2p.NodeStateError, match="can't start a node that is starting"):
        await node.start()
    stopping = asyncio.create_task(node.stop())
    assert await stays(lambda: not stopping.done(), 0.05)
    gate.set()
    await starting  # the start ends as it would have
    await stopping
    assert node.state is NodeState.STOPPED
    assert node.url is not None
    port = int(node.url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        await asyncio.open_connection("127.0.0.1", port)
    async with Node(server=True, port=0, cwd=tmp_path) as again:
        assert again.peer_id == node.peer_id  # the identity was released


async def test_a_thread_that_stops_its_node_in_its_start_fails_the_start(
    tmp_path: Path,
) -> None:
    """A thread's start() can't wait for a stop that waits for the start: its stop()
    raises, which fails the start (a thread that can't work raises in its start()).
    Before, the stop ran and the start then listened: a STOPPED node accepting
    connections on its port."""

    class Quitter(Recorder):
        async def start(self) -> None:
            await self.node.stop()

    node = Node(server=True, port=0, cwd=tmp_path, threads=[Quitter], **FAST)
    with pytest.raises(ThreadLoadError, match=r"NodeStateError\(\"stop\(\) within start\(\)"):
        await node.start()
    assert node.state is NodeState.STOPPED and node.url is None  # never listened


def test_a_start_lists_only_the_stores_it_makes(tmp_path: Path) -> None:
    # Found in review (review45 F3): a store there already, its -wal missing at the
    # start, was listed; a failed start deleted the -wal another process had made since.
    from trustp2p.node.lifecycle import made_by_start
    from trustp2p.storage.msglog import LOG_FILE
    from trustp2p.storage.peerstore import STORE_FILE

    assert made_by_start(tmp_path / "data") == [tmp_path / "data"]
    (tmp_path / STORE_FILE).write_bytes(b"")  # there already, without its -wal
    made = {path.name for path in made_by_start(tmp_path)}
    assert made == {LOG_FILE, f"{LOG_FILE}-wal", f"{LOG_FILE}-shm", f"{LOG_FILE}-journal"}


@pytest.mark.parametrize("driver", ["ws", "tcp"])
async def test_a_stop_does_not_wait_close_timeout_for_a_peer_that_said_nothing(
    make_node: MakeNode, driver: str
) -> None:
    """Found by a tester (tester37 F5): a raw TCP connection that sends nothing (a port
    scanner, a load balancer's health check) held a tcp:// server's stop for the whole
    ``close_timeout`` (10 s), as did a dial of a port that took it and said nothing.
    Such a connection gets SILENT_CLOSE (1 s) to answer our close, then is dropped."""
    server = await make_node(server=True, driver=driver, close_timeout=10.0)
    assert server.url is not None
    port = int(server.url.rsplit(":", 1)[1])
    taken: list[asyncio.StreamWriter] = []
    listener = await asyncio.start_server(lambda r, w: taken.append(w), "127.0.0.1", 0)
    silent_port = listener.sockets[0].getsockname()[1]
    client = await make_node(client=True, driver=driver, close_timeout=10.0,
                             peers=[f"{driver}://127.0.0.1:{silent_port}"])  # fmt: skip
    _, writer = await asyncio.open_connection("127.0.0.1", port)  # says nothing
    try:
        if driver == "tcp":  # (ws: still in its HTTP upgrade, which websockets drops)
            await wait_for(lambda: server.connections.inbound.accepted > 0)
        loop = asyncio.get_running_loop()
        for node in (server, client):
            began = loop.time()
            await node.stop()
            assert loop.time() - began < 5.0  # (SILENT_CLOSE; before: close_timeout)
    finally:
        for each in (writer, *taken):  # (the listener says nothing)
            each.close()
            with contextlib.suppress(ConnectionError):
                await each.wait_closed()
        listener.close()
        await listener.wait_closed()
