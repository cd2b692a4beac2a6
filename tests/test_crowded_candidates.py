"""
The candidate rule at node level, against the abuses a review found (plain mode, 3
slots, loopback limited as remote networks would be): one address finishing a
handshake and leaving over and over, bare connects pushing out an honest candidate,
and a refused candidate's first package.
"""

from __future__ import annotations

import asyncio

from websockets.protocol import State

from trustp2p import PackageType
from trustp2p.protocol.package import build_package, decode, encode

from .nodes import MakeNode, wait_for
from .test_limits_inbound import VERSION, Echo, closed_by_peer, crowded_server, raw_plain_peer

ROOM_MADE = "inbound connections maxed out: room made for a peer from another network"
MAXED_OUT = "inbound connections maxed out"


async def test_one_address_making_room_and_leaving_closes_one_peer(make_node: MakeNode) -> None:
    """Connect, say hello, leave, while the crowded network takes its slot back: the
    first time one of the crowd is closed; the next times, the address is refused."""
    server, peers = await crowded_server(make_node)
    admission = server.connections.admission
    try:
        attacker = await raw_plain_peer(server.url or "", "127.9.0.9")
        assert await closed_by_peer(peers[1]) == (1013, ROOM_MADE)
        await attacker.close()
        await wait_for(lambda: len(admission) == 2)
        for _ in range(2):
            honest = await raw_plain_peer(server.url or "", "127.0.0.2")  # redials
            peers.append(honest)
            await wait_for(lambda: len(admission) == 3 and admission.handshaking == 0)
            attacker = await raw_plain_peer(server.url or "", "127.9.0.9", introduced=False)
            assert await closed_by_peer(attacker) == (1013, MAXED_OUT)  # at once
            assert honest.state is State.OPEN
            await honest.close()
            await wait_for(lambda: len(admission) == 2)
        assert server.metrics.inbound_evicted == {"crowded": 1}
    finally:
        for ws in peers:
            await ws.close()


async def test_bare_connects_from_one_network_leave_an_honest_candidate(
    make_node: MakeNode,
) -> None:
    """Four connects that send nothing, from another network, replace each other as
    that network's candidate; the honest candidate stays and makes room once it says
    hello."""
    server, peers = await crowded_server(make_node)
    assert server.url is not None
    admission = server.connections.admission
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    bare = []
    try:
        newcomer = await raw_plain_peer(server.url, "127.2.0.1", introduced=False)
        peers.append(newcomer)
        await wait_for(lambda: len(admission) == 4)
        for _ in range(4):
            bare.append(
                await asyncio.open_connection("127.0.0.1", port, local_addr=("127.9.0.9", 0))
            )
        await wait_for(lambda: server.metrics.inbound_evicted.get("unfinished") == 3)
        assert len(admission) == 5
        await newcomer.send(VERSION)
        assert await closed_by_peer(peers[1]) == (1013, ROOM_MADE)
        assert newcomer.state is State.OPEN
    finally:
        for ws in peers:
            await ws.close()
        for _, writer in bare:
            writer.close()


async def test_a_refused_candidate_s_first_request_is_not_handled(make_node: MakeNode) -> None:
    """In plain mode any first package introduces a peer (the original sends no version
    talk): a candidate refused then has none of its package carried out."""
    Echo.calls = 0
    server = await make_node(
        server=True, secure=False, max_inbound=3, limit_loopback=True, threads=[Echo]
    )
    assert server.url is not None
    hosts = ("127.0.0.1", "127.0.0.2", "127.1.0.1")
    peers = [await raw_plain_peer(server.url, host) for host in hosts]
    admission = server.connections.admission
    await wait_for(lambda: admission.handshaking == 0 and len(admission) == 3)
    try:
        first = await raw_plain_peer(server.url, "127.2.0.1", introduced=False)
        second = await raw_plain_peer(server.url, "127.3.0.1", introduced=False)
        peers += [first, second]
        await wait_for(lambda: len(admission) == 5)
        await first.send(VERSION)  # makes room: the groups are even then
        await wait_for(lambda: len(admission) == 4)
        request = build_package(PackageType.REQUEST, "echo", {"x": 1})
        await second.send(encode(request))
        assert await closed_by_peer(second) == (1013, MAXED_OUT)
        await first.send(encode(build_package(PackageType.REQUEST, "echo", {"x": 2})))
        while (answer := decode(await first.recv())).type != PackageType.RESPONSE:
            pass  # (the server's version talk first)
        assert answer.body == {"echo": {"x": 2}} and Echo.calls == 1
    finally:
        for ws in peers:
            await ws.close()
