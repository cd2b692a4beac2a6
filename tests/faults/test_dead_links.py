"""
Dead links, with real processes: a peer frozen by SIGSTOP, a link turned into a black
hole by iptables in a network namespace. Both sides must find the dead link within the
liveness bound, and a request pending on it must fail at once, not after its 300 s.

The nodes run the default options except the liveness timing knobs (``TIMINGS``), so
that each test takes a few seconds; ``tests/protocol/test_liveness.py`` checks the
bound of the default timings.

"""

from __future__ import annotations

import signal
from collections.abc import Callable

from trustp2p import Node, NodeOptions

from ..nodes import wait_for
from .conftest import TIMINGS, Child, Namespace
from .peer import Service

BOUND = NodeOptions(server=True, **TIMINGS).liveness_timings().detection_bound
# Waits are generous (a loaded CI machine), but far below the 300 s a request waited.
PATIENCE = 3 * BOUND + 5.0


async def start_server(host: str = "127.0.0.1") -> Node:
    server = Node(server=True, host=host, port=0, threads=(Service,), **TIMINGS)
    await server.start()
    return server


def client_options(url: str) -> dict[str, object]:
    return {"client": True, "peers": [url], "_ask": True, **TIMINGS}


async def test_a_frozen_client_is_dropped_and_notices_when_it_thaws(
    children: Callable[..., Child],
) -> None:
    server = await start_server()
    try:
        assert server.url is not None and server.server is not None
        client = children(client_options(server.url))
        await wait_for(lambda: len(server.sockets) == 1, timeout=PATIENCE)
        await wait_for(lambda: "hang request sent" in client.log, timeout=PATIENCE)

        client.signal(signal.SIGSTOP)  # alive to the kernel, silent to the node
        await wait_for(lambda: server.sockets == [], timeout=PATIENCE)

        client.signal(signal.SIGCONT)
        # The thawed client finds its connection gone, its request failed rather than
        # waiting out its 300 s, and it connects again.
        await wait_for(lambda: "hang request ended: ConnectionClosed" in client.log, PATIENCE)
        await wait_for(lambda: len(server.sockets) == 1, timeout=PATIENCE)
    finally:
        await server.stop()
    assert "Traceback" not in client.log, client.log


async def test_both_sides_find_a_black_holed_link(
    children: Callable[..., Child], namespace: Namespace
) -> None:
    server = await start_server(namespace.host_ip)
    try:
        assert server.url is not None
        client = children(client_options(server.url), prefix=namespace.exec_prefix)
        await wait_for(lambda: len(server.sockets) == 1, timeout=PATIENCE)
        await wait_for(lambda: "hang request sent" in client.log, timeout=PATIENCE)
        # Both sides talk: the heartbeat ran at least once each way.
        inbound = server.sockets[0]
        await wait_for(lambda: inbound.stats.last_rtt is not None, timeout=PATIENCE)

        namespace.black_hole()  # no packet in or out, no RST, no ICMP
        # The server finds it...
        await wait_for(lambda: server.sockets == [], timeout=PATIENCE)
        # ...and so does the client, which can't hear of the server's close: its own
        # heartbeat drops the link, and its pending request fails at once.
        await wait_for(lambda: "! lost peer: no pong within" in client.log, PATIENCE)
        await wait_for(lambda: "hang request ended: ConnectionClosed" in client.log, PATIENCE)

        namespace.heal()
        await wait_for(lambda: len(server.sockets) == 1, timeout=PATIENCE)
    finally:
        await server.stop()
    assert "Traceback" not in client.log, client.log


async def test_a_client_we_read_nothing_from_is_found_when_its_host_vanishes(
    children: Callable[..., Child], namespace: Namespace
) -> None:
    # Its 60 requests fill the server's handlers and queue (16 + 32): the server reads
    # nothing from it, so no pong can come. Then its host vanishes without a reset. Found
    # by a review: the server's pings sat unacknowledged in the kernel and the connection
    # was kept until TCP gave up retransmitting (about 15 minutes on Linux).
    server = await start_server(namespace.host_ip)
    try:
        assert server.url is not None
        options = {**client_options(server.url), "_hangs": 60}
        client = children(options, prefix=namespace.exec_prefix)
        await wait_for(lambda: len(server.sockets) == 1, timeout=PATIENCE)
        inbound = server.sockets[0]
        conn = server.connection(inbound)
        assert conn is not None
        await wait_for(lambda: conn.worker is not None and conn.worker.paused, PATIENCE)

        namespace.black_hole()
        await wait_for(lambda: server.sockets == [], timeout=PATIENCE)
        assert server.metrics.lost_peers == 1
        await wait_for(lambda: "! lost peer: no pong within" in client.log, PATIENCE)
    finally:
        await server.stop()
    assert "Traceback" not in client.log, client.log
