"""
Slow links, with real processes: a client in a network namespace whose outgoing
traffic ``tc`` limits. An honest peer on a slow link is served, however long its large
messages take to cross, and is never taken for one that reads nothing.

"""

from __future__ import annotations

from collections.abc import Callable

from trustp2p import Node

from ..nodes import wait_for
from .conftest import Child, Namespace
from .peer import Service


async def test_large_requests_crossing_a_slow_link_are_not_a_stall(
    children: Callable[..., Child], namespace: Namespace
) -> None:
    # Found by a tester: four 256 KiB requests over a 100 kbit/s link, default options.
    # Each time the write buffer drained below its limit the next request refilled it,
    # so it never went below its lowest size and the client, whose peer read all along,
    # cut the connection after send_stall_timeout, again after each reconnect. Here:
    # 3 requests of 256 KiB at 1 Mbit/s (about 2 s to send each), a 1 s stall timeout
    # (above a retransmission timeout: tbf drops what waits more than 400 ms).
    # Default options but the stall timeout and the client's ping interval (the short
    # response timeout of the other fault tests would take a retransmission's pause,
    # when tbf drops, for a dead link).
    server = Node(server=True, host=namespace.host_ip, port=0, threads=(Service,))
    await server.start()
    try:
        assert server.url is not None
        namespace.shape("1mbit")
        options = {
            "client": True,
            "peers": [server.url],
            "send_stall_timeout": 1.0,
            # Pings written while the buffer is full start the stall watch.
            "heartbeat_interval": 0.1,
            "heartbeat_jitter": 0.05,
            "heartbeat_timeout": 0.5,
            "_big": [3, 256 * 1024],
        }
        client = children(options, prefix=namespace.exec_prefix)
        await wait_for(lambda: "big requests ended" in client.log, timeout=60)
        assert "big requests ended: ok ok ok" in client.log, client.log
        assert "read nothing" not in client.log, client.log
    finally:
        await server.stop()
    assert "Traceback" not in client.log, client.log


async def test_a_large_package_crossing_a_slow_link_is_not_a_stalled_frame(
    children: Callable[..., Child], namespace: Namespace
) -> None:
    # Found by a tester: frame_timeout was a deadline for the whole frame, so at
    # 100 kbit/s a plain package of more than about 120 KB could never arrive, however
    # honest its sender. Now a frame must only make progress (16 KiB per frame_timeout).
    # Here: plain mode (a package is one frame), one 256 KiB request at 1 Mbit/s (about
    # 2 s to cross), a 1 s frame deadline on the server, other options the defaults.
    server = Node(
        server=True,
        host=namespace.host_ip,
        port=0,
        threads=(Service,),
        secure=False,
        frame_timeout=1.0,
    )
    await server.start()
    try:
        assert server.url is not None
        namespace.shape("1mbit")
        options = {"client": True, "peers": [server.url], "secure": False, "_big": [1, 2**18]}
        client = children(options, prefix=namespace.exec_prefix)
        await wait_for(lambda: "big requests ended" in client.log, timeout=60)
        assert "big requests ended: ok" in client.log, client.log
        assert "frame stalled" not in client.log, client.log
    finally:
        await server.stop()
    assert "Traceback" not in client.log, client.log
