"""
One network can't hold every inbound slot of a node with the default options, over a
network namespace (loopback addresses are exempt from these limits by default): 100
clients from 13 addresses of one /16, 8 an address (``max_per_ip``), fill the 100 slots
(``max_inbound``) and finish their handshakes. A client from another /16 still gets
in, the newest of the crowd making room (closed with 1013 and the reason); one more
from the crowded /16 is refused.

"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from trustp2p import Node

from ..nodes import wait_for
from .conftest import Child, Namespace

CROWD = str(Path(__file__).with_name("crowd.py"))
ROOM_MADE = "1013 inbound connections maxed out: room made for a peer from another network"


async def test_one_network_cannot_hold_every_slot(
    children: Callable[..., Child], namespace: Namespace
) -> None:
    subnet = namespace.host_ip.rsplit(".", 1)[0]  # the namespace's end is .2
    crowd = [f"{subnet}.{n}" for n in range(2, 15)]
    for address in [*crowd[1:], f"{subnet}.15"]:
        namespace.add_addresses(None, f"{address}/24")
    other = f"172.31.{subnet.rsplit('.', 1)[1]}"  # another /16
    namespace.add_addresses(f"{other}.1/24", f"{other}.2/24")
    server = Node(server=True, host=namespace.host_ip, port=0)  # the defaults otherwise
    await server.start()
    try:
        assert server.url is not None and server.server is not None
        admission = server.connections.admission
        many = children({}, prefix=namespace.exec_prefix, argv=(CROWD, server.url, "100", *crowd))
        await wait_for(
            lambda: len(server.sockets) == 100 and admission.handshaking == 0, timeout=60
        )
        honest = children(
            {}, prefix=namespace.exec_prefix, argv=(CROWD, server.url, "1", f"{other}.2")
        )
        await wait_for(lambda: "connected 0" in honest.stdout, timeout=10)
        await wait_for(lambda: ROOM_MADE in many.stdout, timeout=10)
        evicted = re.findall(rf"^closed (\d+) {ROOM_MADE}$", many.stdout, re.MULTILINE)
        assert len(evicted) == 1
        late = children(
            {}, prefix=namespace.exec_prefix, argv=(CROWD, server.url, "1", f"{subnet}.15")
        )
        refused = f"connection to {server.url} closed (1013 inbound connections maxed out);"
        await wait_for(lambda: refused in late.log, timeout=10)
        assert "connected 0" not in late.stdout
        assert len(server.sockets) == 100
        assert "closed 0" not in honest.stdout
    finally:
        await server.stop()
