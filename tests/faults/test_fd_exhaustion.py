"""
Running out of file descriptors, with a real process: a server limited to 64 open files
gets a burst of 100 connections. It must pause accepting with one warning (asyncio's
loop logged a traceback per attempt, thousands a second), stay idle, keep serving the
peer already connected, and accept again once the burst is gone.

"""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from trustp2p import Node

from ..nodes import wait_for
from .conftest import Child

NOFILE = 64
BURST = 100
PAUSED = "can't accept connections, out of file descriptors"
RESUMED = "accepting connections again"


def limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextmanager
def burst(url: str) -> Iterator[list[socket.socket]]:
    """Open BURST TCP connections to ``url`` that never say a word; close them after."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    sockets = []
    try:
        for _ in range(BURST):
            sock = socket.socket()
            sockets.append(sock)
            sock.setblocking(False)
            try:
                sock.connect((host, int(port)))
            except BlockingIOError:
                pass  # the kernel completes it into the server's backlog
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def echo(node: Node) -> object:
    assert node.client is not None
    await node.client.wait_connected()
    socket = node.client.sockets[0]
    return await node.client.request(socket, "echo", {"n": 1}, timeout=5.0)


async def test_a_server_out_of_file_descriptors_pauses_and_recovers(
    children: Callable[..., Child],
) -> None:
    server = children({"server": True, "port": 0}, preexec_fn=limit_files)
    await wait_for(lambda: server.url is not None or not server.alive, timeout=10)
    url = server.url
    assert url is not None, server.log
    peers = {"client": True, "peers": [url], "reconnect_initial": 0.05, "reconnect_max": 0.5}
    connected = Node(**peers)
    await connected.start()
    late = Node(**peers)
    try:
        assert await echo(connected) == {"echo": {"n": 1}}
        with burst(url):
            await wait_for(lambda: PAUSED in server.log, timeout=10)
            before = server.cpu_seconds()
            # Real time passing: how busy the paused server is (the asyncio loop spent
            # over half a core logging tracebacks).
            await asyncio.sleep(1.0)
            assert server.cpu_seconds() - before < 0.3
            # The peer connected before is served.
            assert await echo(connected) == {"echo": {"n": 1}}
            assert RESUMED not in server.log
        # The burst is gone: its descriptors are freed and accepting resumes.
        await wait_for(lambda: RESUMED in server.log, timeout=10)
        await late.start()
        assert await echo(late) == {"echo": {"n": 1}}
    finally:
        await late.stop()
        await connected.stop()
        server.signal(signal.SIGTERM)
    assert server.stop() == 0, server.log
    log = server.log
    assert log.count(PAUSED) == 1, log
    assert "Traceback" not in log and "out of system resource" not in log, log


async def test_the_admin_listener_out_of_file_descriptors_pauses_too(
    children: Callable[..., Child],
) -> None:
    """Found by an attacker's test: out of file descriptors, one request to the admin
    listener (asyncio's accept loop) logged 28,700 tracebacks in 16 s, ever more a
    second. It accepts as the peer listener does: one warning, paused."""
    server = children({"server": True, "port": 0, "admin": "127.0.0.1:0"}, preexec_fn=limit_files)
    # (Its URL comes on stdout, the admin listener's line on stderr: both.)
    await wait_for(
        lambda: ("admin listener on" in server.log and server.url) or not server.alive, timeout=10
    )
    url = server.url
    found = re.search(r"admin listener on http://127\.0\.0\.1:(\d+)/", server.log)
    assert url is not None and found is not None, server.log
    try:
        with burst(url):
            await wait_for(lambda: PAUSED in server.log, timeout=10)
            with burst(f"ws://127.0.0.1:{found[1]}"):
                await wait_for(lambda: server.log.count(PAUSED) == 2, timeout=10)
                before = server.cpu_seconds()
                await asyncio.sleep(1.0)  # real time: how busy the paused server is
                assert server.cpu_seconds() - before < 0.3
    finally:
        server.signal(signal.SIGTERM)
    assert server.stop() == 0, server.log
    log = server.log
    assert "Traceback" not in log and "out of system resource" not in log, log
