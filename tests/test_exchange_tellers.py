"""Peer exchange: the URLs of a ``get_peers`` answer are stored with who told them: the answering
server's host (attacker39 E1; the store's rules are in ``tests/storage/test_peer_tellers.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from trustp2p import EventMap, Package, PackageType, Socket, Thread
from trustp2p.protocol.package import build_package
from trustp2p.storage.peerstore import PeerSource, PeerStore

from .nodes import MakeNode, wait_for

LISTED = ["ws://198.51.100.9:1107", "ws://203.0.113.9:1107"]


class Teller(Thread):
    """Answers every ``get_peers`` with LISTED."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"get_peers": self.get_peers}}

    def get_peers(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"peers": LISTED}


async def test_a_get_peers_answer_is_stored_with_its_servers_host(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    told: list[tuple[list[str], str | None]] = []
    add_urls = PeerStore.add_urls

    async def spy(
        self: PeerStore,
        urls: Iterable[str],
        source: PeerSource,
        *,
        peer_id: str | None = None,
        teller: str | None = None,
    ) -> None:
        if source is PeerSource.EXCHANGE and peer_id is None:
            told.append((list(urls), teller))
        await add_urls(self, urls, source, peer_id=peer_id, teller=teller)

    monkeypatch.setattr(PeerStore, "add_urls", spy)
    server = await make_node(server=True, threads=[Teller])
    client = await make_node(client=True, peers=[server.url], peer_exchange=True)
    assert client.store is not None
    await wait_for(lambda: told)
    assert told == [(LISTED, "127.0.0.1")]
    assert all(client.store.knows_url(url) for url in LISTED)


class NoPeers(Teller):
    """Answers every ``get_peers`` with no peers (nothing to dial: the tests stay on this
    machine)."""

    def get_peers(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"peers": []}


async def test_peer_exchange_waits_for_room_before_it_times_its_ask(make_node: MakeNode) -> None:
    """review82 R4, review83 F4: a request's timeout counts its wait for room to send
    (tester45 F3), but peer exchange waits for room first: a plain server whose answer
    timed out behind the client's own full link was taken for the original, which drops
    requests it doesn't know, and never asked again."""
    options = {"write_limit": 1024, "max_send_bytes": 2**24, "max_package_size": 2**22}
    server = await make_node(server=True, secure=False, threads=[NoPeers], **options)
    client = await make_node(
        client=True,
        secure=False,
        peers=[server.url],
        peer_exchange=True,
        open_timeout=0.5,  # the ask's timeout
        target_outbound=2,  # short of it: asks again every 0.2 s
        exchange_interval=0.2,
        **options,
    )
    assert client.client is not None and server.server is not None
    metrics = client.metrics
    await wait_for(lambda: metrics.requests_answered >= 2)  # asked at the open, and again
    (to_server,) = client.client.sockets
    server.server.sockets[0].pause_reading()  # it reads nothing: no room
    talk = build_package(PackageType.TALK, "news", {"pad": "z" * 1_000_000})
    while not to_server.write_paused:
        client.send_package(to_server, talk)
        await asyncio.sleep(0)
    answered, timed_out = metrics.requests_answered, metrics.requests_timed_out
    await asyncio.sleep(1.2)  # longer than the ask's timeout
    server.server.sockets[0].resume_reading()
    await wait_for(lambda: metrics.requests_answered > answered)  # (else: never asked again)
    assert metrics.requests_timed_out == timed_out
