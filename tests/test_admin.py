"""The admin listener of a running node: /metrics, /status.json, the page, the token,
and ``trustp2p status``, over loopback."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

import trustp2p
from trustp2p import Node, NodeOptions, PackageType, Thread
from trustp2p.admin.client import status_url, url_token
from trustp2p.admin.server import MAX_CONNECTIONS
from trustp2p.admin.status import TopicRates, node_status
from trustp2p.cli import main
from trustp2p.drivers.base import Socket
from trustp2p.exceptions import ConfigError, DriverError
from trustp2p.node.gossip import Validation
from trustp2p.options import parse_admin_address
from trustp2p.protocol.package import Package
from trustp2p.threads.base import EventMap

from .nodes import MakeNode, wait_for

# Pings every 20-40 ms, so that the heartbeat's histogram moves within a test.
PINGS = {"heartbeat_interval": 0.02, "heartbeat_jitter": 0.0, "heartbeat_timeout": 0.04}


class Echo(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self.echo, "warn": self.warn}}

    async def echo(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"n": package.body["n"]}

    async def warn(self, socket: Socket, package: Package) -> dict[str, Any]:
        logging.getLogger("trustp2p.test").warning("something odd: %s", package.body["n"])
        return {}


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, url, headers)


async def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await get(f"{node.admin_url}metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def status_of(node: Node) -> Any:
    status, body = await get(f"{node.admin_url}status.json")
    assert status == 200
    return json.loads(body)


async def pair(make_node: MakeNode, **options: Any) -> tuple[Node, Node]:
    server = await make_node(server=True, threads=[Echo], admin="127.0.0.1:0", **options)
    assert server.url is not None
    client = await make_node(client=True, peers=[server.url], admin="127.0.0.1:0", **options)
    assert client.client is not None
    await client.client.wait_connected()
    await wait_for(lambda: len(server.connections) == 1)
    return server, client


async def test_counters_move_as_peers_exchange_requests_gossip_and_pings(
    make_node: MakeNode,
) -> None:
    server, client = await pair(make_node, **PINGS)
    assert server.admin_url is not None and server.admin_url.startswith("http://127.0.0.1:")
    assert server.admin_url != client.admin_url
    server.subscribe("news", lambda message: None)  # (without a handler: "carried")
    client.subscribe("news")
    # Each catches the new topic up from the other: let those requests be answered.
    settled = (server.metrics, client.metrics)
    await wait_for(lambda: all(m.requests_sent >= 1 for m in settled))
    await wait_for(lambda: all(m.requests_answered == m.requests_sent for m in settled))
    first = await scrape(server)
    first_client = await scrape(client)
    rtts = lambda: server.metrics.heartbeat_rtt.count + client.metrics.heartbeat_rtt.count  # noqa: E731
    pings = rtts()  # (at least those scraped)
    assert client.client is not None
    socket = client.client.sockets[0]
    for n in range(5):
        assert await client.client.request(socket, "echo", {"n": n}) == {"n": n}
    assert client.gossip is not None
    await wait_for(lambda: "news" in client.gossip.router.peer_topics(socket.id))
    await client.publish("news", {"text": "hello"})
    await wait_for(lambda: server.metrics.topic_delivered.get("news", 0) >= 1)
    await wait_for(lambda: rtts() >= pings + 2)
    second = await scrape(server)
    second_client = await scrape(client)

    def moved(before: dict[Any, float], after: dict[Any, float], key: Any) -> bool:
        return after[key] > before.get(key, 0)

    request = ("trustp2p_packages_received_total", (("type", "REQUEST"),))
    assert moved(first, second, request)
    assert moved(first, second, ("trustp2p_handler_duration_seconds_count", ()))
    assert moved(first_client, second_client, ("trustp2p_requests_sent_total", ()))
    answered, timed = "trustp2p_requests_answered_total", "trustp2p_request_duration_seconds_count"
    # The 5 echoes, and the first publish's question of its own numbers on "news".
    assert second_client[answered, ()] - first_client[answered, ()] == 6
    assert second_client[timed, ()] - first_client[timed, ()] == 6
    assert moved(first_client, second_client, ("trustp2p_gossip_published_total", ()))
    assert moved(first, second, ("trustp2p_gossip_delivered_total", ()))
    rtt = ("trustp2p_heartbeat_rtt_seconds_count", ())
    assert moved(first, second, rtt) or moved(first_client, second_client, rtt)
    assert second["trustp2p_connections", (("direction", "inbound"), ("role", "server"))] == 1
    assert (
        second_client["trustp2p_connections", (("direction", "outbound"), ("role", "client"))] == 1
    )
    assert second["trustp2p_handshakes_total", (("outcome", "ok"), ("reason", ""))] == 1
    assert second["trustp2p_peer_store_peers", ()] >= 1


async def test_status_lists_the_connected_peers_and_topics(make_node: MakeNode) -> None:
    server, client = await pair(make_node)
    server.subscribe("news")
    status = await status_of(server)
    node = status["node"]
    assert node["peer_id"] == server.peer_id
    assert node["mode"] == "server" and node["secure"] is True
    assert node["listen_urls"] == [server.url]
    assert node["uptime_s"] >= 0
    [peer] = status["peers"]
    assert peer["peer_id"] == client.peer_id
    assert peer["role"] == "server" and peer["direction"] == "inbound"
    assert peer["state"] == "open"
    assert peer["packages_in"] >= 1 and peer["bytes_in"] > 0
    assert [t["topic"] for t in status["topics"]] == ["news"]
    assert status["topics"][0]["subscribed"] is True
    [seen] = (await status_of(client))["peers"]
    assert seen["peer_id"] == server.peer_id and seen["direction"] == "outbound"


async def test_status_says_what_each_peer_runs_and_none_for_one_that_never_said(
    make_node: MakeNode,
) -> None:
    """An operator of a mixed network wants to know which peers are originals (found
    by an interop tester): ours say what they run in their version talk, even in plain
    mode; the original never introduces itself (its version talk is an empty frame)."""
    server, _ = await pair(make_node, secure=False, program="chat", program_version="2.1")
    assert server.url is not None
    [peer] = (await status_of(server))["peers"]
    assert peer["runs"] == f"trustp2p {trustp2p.__version__} (chat 2.1)"
    async with connect(server.url, compression=None) as ws:  # says nothing, as the original
        await ws.send(b"")
        await wait_for(lambda: len(server.connections) == 2)
        peers = (await status_of(server))["peers"]
        assert sorted(p["runs"] or "" for p in peers) == ["", peer["runs"]]
        assert [p["runs"] for p in peers if p["socket_id"] != peer["socket_id"]] == [None]


async def test_status_keeps_the_warnings_of_its_own_node(make_node: MakeNode) -> None:
    server, client = await pair(make_node)
    assert client.client is not None
    await client.client.request(client.client.sockets[0], "warn", {"n": 7})
    warnings = (await status_of(server))["warnings"]
    assert [w["message"] for w in warnings] == ["something odd: 7"]
    assert warnings[0]["level"] == "WARNING" and warnings[0]["logger"] == "trustp2p.test"
    assert (await status_of(client))["warnings"] == []


async def test_status_keeps_the_warnings_of_the_start_too(
    make_node: MakeNode, tmp_path: Path
) -> None:
    # Found by a new user: "threads-enabled doesn't exist", the warning an operator most
    # needs at start, never reached the page (the listener attached later).
    node = await make_node(server=True, admin="127.0.0.1:0", cwd=tmp_path)
    messages = [w["message"] for w in (await status_of(node))["warnings"]]
    assert any("threads-enabled doesn't exist" in m for m in messages), messages


async def test_the_page_and_errors(make_node: MakeNode) -> None:
    server = await make_node(server=True, admin="127.0.0.1:0")
    status, page = await get(f"{server.admin_url}")
    assert status == 200 and b"status.json" in page and b"<svg" in page
    # Nothing fetched from elsewhere (the one http:// is the SVG namespace's name).
    assert not re.search(rb"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", page)
    assert page.count(b"http://") == page.count(b"http://www.w3.org/2000/svg") == 1
    assert (await get(f"{server.admin_url}nothing"))[0] == 404
    big = {"X-Filler": "x" * 10_000}
    assert (await get(f"{server.admin_url}metrics", big))[0] == 431


async def _raw(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        return await reader.read()
    finally:
        writer.close()


async def test_a_malformed_request_target_is_a_400(make_node: MakeNode) -> None:
    """Found by an attacker's test: ``GET //[x`` closed the connection with no answer
    and logged a traceback at ERROR each time, before any token check."""
    server = await make_node(server=True, admin="127.0.0.1:0", admin_token="s3cret")
    assert server.admin is not None and server.admin_url is not None
    port = int(server.admin_url.rstrip("/").rsplit(":", 1)[1])
    for target in (b"//[x", b"http://[::1/"):
        answer = await _raw(port, b"GET " + target + b" HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        assert answer.endswith(b"bad request target\n")


async def test_bare_lf_line_ends_are_read(make_node: MakeNode) -> None:
    """Found by independent testers: a request whose lines end with a bare LF waited the
    whole REQUEST_TIMEOUT and was closed unanswered. RFC 9112 §2.2 lets a recipient take
    a single LF as a line end; CRLF and LF may mix, and empty lines before the request
    line are skipped."""
    server = await make_node(server=True, admin="127.0.0.1:0", admin_token="s3cret")
    assert server.admin_url is not None
    port = int(server.admin_url.rstrip("/").rsplit(":", 1)[1])
    for head in (
        b"GET /status.json HTTP/1.1\nAuthorization: Bearer s3cret\n\n",
        b"GET /status.json HTTP/1.1\r\nAuthorization: Bearer s3cret\n\r\n",
        b"\r\n\nGET /status.json HTTP/1.1\nHost: x\r\nAuthorization: Bearer s3cret\r\n\n",
    ):
        async with asyncio.timeout(5):  # bounds a failing test only
            answer = await _raw(port, head)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), (head, answer)
    async with asyncio.timeout(5):
        answer = await _raw(port, b"GET /metrics HTTP/1.1\n\n")
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), answer
    # Short lines still add up to the head's limit.
    async with asyncio.timeout(5):
        answer = await _raw(port, b"GET / HTTP/1.1\n" + b"X: y\n" * 2000 + b"\n")
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer


async def test_a_bare_cr_or_a_folded_header_line_is_a_400(make_node: MakeNode) -> None:
    """Found by independent testers: a request whose lines end with a bare CR waited the
    whole REQUEST_TIMEOUT unanswered (no LF ever came), and a folded header line was read
    as a header of its own. RFC 9112 §2.2 calls a bare CR invalid and §5.2 lets a server
    refuse obs-fold with a 400: both are answered at once, before the token check."""
    server = await make_node(server=True, admin="127.0.0.1:0", admin_token="s3cret")
    assert server.admin_url is not None
    port = int(server.admin_url.rstrip("/").rsplit(":", 1)[1])
    for head, reason in (
        (b"GET /status.json HTTP/1.1\rAuthorization: Bearer s3cret\r\r", b"bare CR"),
        (b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n", b"bare CR"),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n Authorization: Bearer s3cret\r\n\r\n", b"folded"),
        (b"GET / HTTP/1.1\nX-A: 1\n\tmore\n\n", b"folded"),
    ):
        async with asyncio.timeout(2):  # REQUEST_TIMEOUT is 10 s: a wait fails the test
            answer = await _raw(port, head)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (head, answer)
        assert reason in answer, answer
    # A CR before LF, and CRLF split across writes, are still line ends.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in (
        b"\r",
        b"\nGET /status.json HTTP/1.1\r",
        b"\nAuthorization: Bearer s3cret\r",
        b"\n\r",
        b"\n",
    ):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate reads on the server, not a wait on a result
    async with asyncio.timeout(2):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer


async def test_admin_connections_are_capped(make_node: MakeNode) -> None:
    """Found by an attacker's test: idle admin connections, each kept 10 s, had no cap,
    and took the file descriptors the node's peers needed. Past MAX_CONNECTIONS, a new
    one drops the oldest still sending its request (found by another: 40 connections
    sending their head a byte at a time made 32 of 50 scrapes fail); those answered
    stay."""
    server = await make_node(server=True, admin="127.0.0.1:0")
    assert server.admin_url is not None
    port = int(server.admin_url.rstrip("/").rsplit(":", 1)[1])
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    try:
        idle[0][1].write(b"G")  # a slow request: the oldest
        assert (await get(f"{server.admin_url}status.json"))[0] == 200  # in its place
        async with asyncio.timeout(2):
            assert await idle[0][0].read() == b""  # dropped unanswered
        reader, writer = idle[1]
        writer.write(b"GET /status.json HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(2):
            assert (await reader.read()).startswith(b"HTTP/1.1 200 OK")
    finally:
        for _, writer in idle:
            writer.close()


async def test_slow_request_heads_dont_keep_a_scraper_out(make_node: MakeNode) -> None:
    """Found by an attacker's test: 40 connections from one process, each sending its
    request head a byte at a time and connecting again when cut, made 32 of 50
    ``/metrics`` scrapes fail. The attacker and the scraper share an address (loopback),
    the default case: the scraper's connection gets in, and is answered."""
    server = await make_node(server=True, admin="127.0.0.1:0")
    assert server.admin_url is not None
    port = int(server.admin_url.rstrip("/").rsplit(":", 1)[1])
    opened = 0

    async def slowloris() -> None:
        nonlocal opened
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened += 1
            try:
                while not writer.is_closing() and not reader.at_eof():
                    writer.write(b"G")
                    await writer.drain()
                    await asyncio.sleep(0.05)  # the attacker's pace, not a wait on a result
            except ConnectionError:
                pass  # dropped: connect again
            finally:
                writer.close()

    async with asyncio.TaskGroup() as group:
        attackers = [group.create_task(slowloris()) for _ in range(40)]
        await wait_for(lambda: opened >= 48)  # all in, some cut and back
        statuses = [(await get(f"{server.admin_url}metrics"))[0] for _ in range(5)]
        for attacker in attackers:
            attacker.cancel()
    assert statuses == [200] * 5


async def test_a_token_is_required_when_set(make_node: MakeNode) -> None:
    server = await make_node(server=True, admin="127.0.0.1:0", admin_token="s3cret")
    url = server.admin_url
    assert url is not None
    for path in ("", "metrics", "status.json"):
        assert (await get(url + path))[0] == 401
    assert (await get(url + "metrics", {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await get(url + "metrics", {"Authorization": "Bearer s3cret"}))[0] == 200
    assert (await get(url + "status.json?token=s3cret"))[0] == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "[::]", "example.com"])
def test_an_admin_listener_beyond_loopback_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match="admin-token"):
        NodeOptions(server=True, admin=f"{host}:9107")
    NodeOptions(server=True, admin=f"{host}:9107", admin_token="t")  # allowed with one
    NodeOptions(server=True, admin="localhost:9107")
    NodeOptions(server=True, admin="[::1]:9107")


@pytest.mark.parametrize("token", ["", "pässword", "two words", "tab\there", "nl\n"])
def test_an_admin_token_is_printable_ascii_without_spaces(token: str) -> None:
    # Found by a tester: a non-ASCII token never matched in the Authorization header
    # (clients send what isn't ASCII as they see fit); one with a space can't either.
    with pytest.raises(ConfigError, match=r"^admin_token must (not be empty|be printable ASCII)"):
        NodeOptions(server=True, admin="127.0.0.1:9107", admin_token=token)
    NodeOptions(server=True, admin="127.0.0.1:9107", admin_token="Zm9v+/=_-.~!")


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.1:x", "h:70000", "99999", ":x", "ws://127.0.0.1:9107"]
)
def test_a_malformed_admin_address_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        NodeOptions(server=True, admin=address)


def test_the_cli_refuses_a_public_admin_without_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--port", "0", "--admin", "0.0.0.0:0"]) == 2
    assert "--admin-token" in capsys.readouterr().err


async def test_trustp2p_status_prints_the_peers(
    make_node: MakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    server, client = await pair(make_node)
    assert server.admin_url is not None
    code = await asyncio.to_thread(main, ["status", "--admin", server.admin_url, "--json"])
    assert code == 0
    status = json.loads(capsys.readouterr().out)
    assert [p["peer_id"] for p in status["peers"]] == [client.peer_id]
    address = server.admin_url.removeprefix("http://").rstrip("/")
    assert await asyncio.to_thread(main, ["status", "--admin", address]) == 0
    out = capsys.readouterr().out
    assert "1 peer(s)" in out and "server <-" in out
    assert f"{server.peer_id}" in out
    # The status.json URL itself: found by a tester, a 404 before; a bare port (a
    # tester's --admin 1331 was read as the host 0.0.5.51).
    port = address.rsplit(":", 1)[1]
    for admin in (f"{address}/status.json", f"{server.admin_url}status.json", port, f":{port}"):
        assert await asyncio.to_thread(main, ["status", "--admin", admin, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["peers"][0]["peer_id"] == client.peer_id


async def test_trustp2p_status_with_a_token(
    make_node: MakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_node(server=True, admin="127.0.0.1:0", admin_token="t0k")
    assert server.admin_url is not None
    args = ["status", "--admin", server.admin_url, "--json"]
    assert await asyncio.to_thread(main, args) == 1
    said = "HTTP Error 401: Unauthorized (the node's admin listener has a token: give it with"
    assert f"{said} --token)" in capsys.readouterr().err  # (a tester got the 401 alone)
    assert await asyncio.to_thread(main, [*args, "--token", "wrong"]) == 1
    assert "401: Unauthorized (not the node's admin token: its --admin-token" in (
        capsys.readouterr().err
    )
    assert await asyncio.to_thread(main, [*args, "--token", "t0k"]) == 0
    monkeypatch.setenv("TRUSTP2P_ADMIN_TOKEN", "t0k")  # (tester40 F6: as the node reads it)
    assert await asyncio.to_thread(main, args) == 0
    monkeypatch.delenv("TRUSTP2P_ADMIN_TOKEN")
    # The browser's URL, pasted: its token is taken (a tester: the page was fetched).
    browser = ["status", "--admin", f"{server.admin_url.rstrip('/')}/?token=t0k", "--json"]
    capsys.readouterr()
    assert await asyncio.to_thread(main, browser) == 0
    assert json.loads(capsys.readouterr().out)["node"]["peer_id"] == server.peer_id


def test_trustp2p_status_of_nothing_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--admin", "http://127.0.0.1:1/"]) == 1
    assert "can't get the status from http://127.0.0.1:1/" in capsys.readouterr().err
    # A bare port: the URL tried, and the reason without urllib's wrapping (a tester:
    # "can't get the status from 1: <urlopen error [Errno 111] Connection refused>").
    assert main(["status", "--admin", "1"]) == 1
    said = capsys.readouterr().err.strip()
    assert said == (
        "trustp2p: error: can't get the status from http://127.0.0.1:1/status.json:"
        " [Errno 111] Connection refused"
    )


def test_status_urls_of_ipv6_and_https_say_what_to_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tester37 F7: ``::1:PORT`` (no brackets) got a 421 and a hint to write 127.0.0.1;
    ``https://`` got OpenSSL's "wrong version number" alone."""
    assert status_url("::1:9107") == "http://[::1]:9107/status.json"
    assert status_url("::1:9107/status.json") == "http://[::1]:9107/status.json"
    assert status_url("[::1]:9107") == "http://[::1]:9107/status.json"
    assert status_url("127.0.0.1:9107/") == "http://127.0.0.1:9107/status.json"
    # (review53 L4: a query right after the port, with a colon in it)
    assert status_url("::1:9107?token=a:b") == "http://[::1]:9107/status.json"
    assert url_token("http://[::1]:9107?token=a:b") == "a:b"
    # The hint only where TLS met plain HTTP (review53 L3: it came with every failure)
    assert main(["status", "--admin", "https://127.0.0.1:1/"]) == 1
    assert "speaks plain http" not in capsys.readouterr().err  # (connection refused)
    plain = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        assert main(["status", "--admin", f"https://127.0.0.1:{plain.server_port}/"]) == 1
    finally:
        plain.shutdown()
        plain.server_close()
    assert capsys.readouterr().err.strip().endswith(" (the admin listener speaks plain http://)")


def test_a_bare_admin_port_is_on_loopback_for_a_node_too() -> None:
    """Found by a tester: `status --admin 9107` worked, `server --admin 9107` was
    refused (the one flag read two ways)."""
    assert parse_admin_address("9107") == ("127.0.0.1", 9107)
    assert parse_admin_address(":9107") == ("127.0.0.1", 9107)
    assert parse_admin_address("[::1]:9107") == ("::1", 9107)
    # (tester37 F10: the URL `status --admin` takes was refused as "reachable from
    # other machines", and with a token, as a host name)
    assert parse_admin_address("http://127.0.0.1:9107/") == ("127.0.0.1", 9107)
    assert parse_admin_address("http://[::1]:9107") == ("::1", 9107)
    with pytest.raises(ConfigError, match="admin address must be HOST:PORT"):
        parse_admin_address("99999")


HUGE_TIME = (
    b'{"node": {"peer_id": "x", "version": "1", "mode": "gossip", "secure": true,'
    b' "uptime_s": 1, "listen_urls": []}, "peers": [], "topics": [],'
    b' "warnings": [{"time": 1e300, "level": "W", "message": "m"}]}'
)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b'{"node": {}}', "answered JSON that isn't a trustp2p node's status"),
        (b"[1, 2]", "answered JSON that isn't a trustp2p node's status"),
        (b'{"node": {"version": 1}}', "answered JSON that isn't a trustp2p node's status"),
        (HUGE_TIME, "answered JSON that isn't a trustp2p node's status"),  # (review33)
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    ],
)
def test_trustp2p_status_of_another_program_says_so(
    capsys: pytest.CaptureFixture[str], answer: bytes, said: str
) -> None:
    """Found by an attacker: JSON without a node status's keys (another program on the
    port, another version) ended in a KeyError traceback."""
    import http.server
    import threading

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        admin = f"127.0.0.1:{server.server_address[1]}"
        assert main(["status", "--admin", admin]) == 1
        err = capsys.readouterr().err
        assert said in err, err
        assert "Traceback" not in err
    finally:
        server.shutdown()
        server.server_close()


async def test_trustp2p_status_of_a_peer_port_says_so(
    make_node: MakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by a tester: the peer port (an easy slip) said only "HTTP Error 426".
    server = await make_node(server=True)
    assert server.url is not None
    peer_port = server.url.removeprefix("ws://")
    assert await asyncio.to_thread(main, ["status", "--admin", peer_port]) == 1
    err = capsys.readouterr().err
    assert "426" in err
    assert err.rstrip().endswith(
        "(a peer listener: give the node's --admin HOST:PORT, not its --port)"
    )


async def test_limits_penalties_and_validation_are_counted(make_node: MakeNode) -> None:
    server, client = await pair(make_node, request_rate=5, request_burst=1)
    assert client.client is not None and server.gossip is not None
    socket = client.client.sockets[0]
    await asyncio.gather(*(client.client.request(socket, "echo", {"n": n}) for n in range(3)))
    assert server.metrics.throttles >= 1  # over its budget: reading paused, not refused
    [inbound] = server.sockets
    server.penalize(inbound, "made-up reason: 42")
    assert server.metrics.invalid == {"made-up reason": 1}
    server.gossip.set_validator("news", lambda message: Validation.REJECT)
    server.subscribe("news")
    assert client.gossip is not None
    await wait_for(lambda: "news" in client.gossip.router.peer_topics(socket.id))
    await client.publish("news", {"text": "spam"})
    await wait_for(lambda: server.metrics.validation.get("reject") == 1)
    metrics = await scrape(server)
    assert metrics["trustp2p_gossip_validations_total", (("outcome", "reject"),)] == 1
    assert metrics["trustp2p_throttles_total", ()] >= 1
    assert metrics["trustp2p_invalid_packages_total", (("reason", "made-up reason"),)] >= 1


async def test_failed_handshakes_are_counted_by_reason(make_node: MakeNode) -> None:
    server = await make_node(server=True, admin="127.0.0.1:0")
    assert server.url is not None
    await make_node(client=True, peers=[server.url], secure=False)
    await wait_for(lambda: any(key != "ok" for key in server.metrics.handshakes))
    metrics = await scrape(server)
    failed = [key for key in metrics if key[0] == "trustp2p_handshakes_total"]
    assert any(dict(labels)["outcome"] == "failed" for _, labels in failed)


async def test_without_a_token_only_local_host_names_are_answered(make_node: MakeNode) -> None:
    """Found by an attacker: the tokenless (loopback) admin listener answered any
    ``Host``, so a web page in the operator's browser that rebound its name to
    127.0.0.1 could read the status and metrics. With a token, the token decides."""
    node = await make_node(server=True, admin="127.0.0.1:0")
    assert node.admin_url is not None
    port = node.admin_url.rstrip("/").rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", "127.1.2.3", "[::1]:9"):
        assert (await get(f"{node.admin_url}status.json", {"Host": host}))[0] == 200, host
    for host in (f"rebind.attacker.example:{port}", "10.0.0.1", "[fe80::1]", "localhost.evil"):
        for path in ("status.json", "metrics", ""):
            status, body = await get(f"{node.admin_url}{path}", {"Host": host})
            assert status == 421 and b"loopback" in body, (host, path)
    guarded = await make_node(server=True, admin="127.0.0.1:0", admin_token="s3cret")
    assert guarded.admin_url is not None
    headers = {"Host": "rebind.attacker.example", "Authorization": "Bearer s3cret"}
    assert (await get(f"{guarded.admin_url}status.json", headers))[0] == 200


async def test_a_taken_admin_port_fails_the_start(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    first = await make_node(server=True, admin="127.0.0.1:0")
    assert first.admin_url is not None
    taken = first.admin_url.rstrip("/").removeprefix("http://")
    caplog.set_level(logging.INFO, "trustp2p.node")
    caplog.clear()
    with pytest.raises(DriverError, match="admin listener can't listen"):
        await make_node(server=True, admin=taken)
    # Found by a tester: a start that failed was logged as a stop ("x stopping node",
    # "x node stopped") before its error, like a node that had run.
    said = [r.getMessage() for r in caplog.records if r.name == "trustp2p.node.node"]
    assert said == ["x undoing a failed start", "x failed start undone"]


def test_status_tables_print_brackets_as_text() -> None:
    # Found by a tester: rich read "[fe80::1]" as markup and printed "ws://:1107"; a
    # peer's words in a warning could restyle the table the same way.
    from rich.console import Console
    from rich.table import Table

    from trustp2p.admin.client import add_plain_row, status_tables

    status: dict[str, Any] = {
        "node": {
            "peer_id": None,
            "version": "1.0.0",
            "mode": "server",
            "secure": False,
            "uptime_s": 1.0,
            "listen_urls": ["ws://[fe80::1]:1107"],
        },
        "peers": [
            {
                "address": "[fe80::2]:5000",
                "role": "server",
                "direction": "inbound",
                "connected_since": 0,
                "packages_in": 1,
                "packages_out": 1,
                "state": "open",
            }
        ],
        "topics": [
            {"topic": "[red]t", "subscribed": True, "published": 0, "delivered": 0, "rate_per_s": 0}
        ],
        "warnings": [
            {"time": 0, "level": "WARNING", "message": "closed ([bold]bye[/bold])"},
            {"time": 0, "level": "WARNING", "message": "closed (\x1b]0;pwned\x07)"},
        ],
    }
    console = Console(record=True, width=200)
    for table in status_tables(status):
        console.print(table)
    text = console.export_text()
    for shown in ("ws://[fe80::1]:1107", "[fe80::2]:5000", "[red]t", "closed ([bold]bye[/bold])"):
        assert shown in text
    # A peer's escape sequence (here: set the terminal's title) is shown, not obeyed.
    assert "closed (\\x1b]0;pwned\\x07)" in text and "\x1b" not in text
    table = Table("urls")
    add_plain_row(table, "ws://a:1\nws://[::1]:2")
    console = Console(record=True, width=200)
    console.print(table)
    assert ["ws://a:1", "ws://[::1]:2"] == [
        line.strip("│ ") for line in console.export_text().splitlines() if "ws://" in line
    ]


async def test_status_keeps_the_warnings_the_stores_log_from_their_thread(
    make_node: MakeNode, tmp_path: Path
) -> None:
    """Found by a new user: a corrupt peer store and message log, moved aside at start,
    said so on stderr but never on the status page (logged on the stores' thread,
    outside the node's context)."""
    first = await make_node(server=True, cwd=tmp_path, name="n")
    data = first.data_dir
    await first.stop()
    assert data is not None
    for name in ("peers.sqlite", "gossip.sqlite"):
        (data / name).write_bytes(b"not a database" * 100)
    node = await make_node(server=True, admin="127.0.0.1:0", cwd=tmp_path, name="n")
    messages = [w["message"] for w in (await status_of(node))["warnings"]]
    assert sum("is corrupt" in m for m in messages) == 2, messages


def test_status_tables_say_a_failing_store_the_clock_and_drops_for_age() -> None:
    """tester41 F2: `trustp2p status` showed only the first WARNING of a store whose
    writes still failed 26 minutes later, and the same page once they worked again; F5:
    the topic table left out the messages dropped as too old."""
    from trustp2p.admin.client import status_tables

    status: dict[str, Any] = {
        "node": {
            "peer_id": "tpx", "version": "0.1.0", "mode": "server", "secure": True,
            "uptime_s": 5.0, "listen_urls": [], "clock_offset_s": -172800.0,
            "stores": {
                "peers": {"failing": False, "write_failures": 0},
                "messages": {"failing": True, "write_failures": 12},
            },
        },
        "peers": [],
        "topics": [{"topic": "chat", "subscribed": True, "published": 1, "delivered": 2,
                    "rate_per_s": 0.0, "too_old": 7}],
        "warnings": [],
    }  # fmt: skip
    from rich.console import Console

    console = Console(width=200, record=True)
    for table in status_tables(status):
        console.print(table)
    text = console.export_text()
    assert re.search(r"clock\W+\+172800\.0 s from its peers' median", text)
    assert re.search(r"messages store\W+writes failing: in memory \(12 failed\)", text)
    assert re.search(r"peers store\W+ok \(0 failed\)", text)
    assert "too old" in text and re.search(r"chat\W+yes\W+1\W+2\W+0\.00\W+7\W", text)


async def test_status_json_says_each_stores_state(make_node: MakeNode, tmp_path: Path) -> None:
    node = await make_node(server=True, cwd=tmp_path)
    stores = node_status(node, TopicRates(0.0))["node"]["stores"]
    assert stores == {
        "peers": {"failing": False, "write_failures": 0},
        "messages": {"failing": False, "write_failures": 0},
    }
