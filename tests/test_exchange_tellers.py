"""The URLs of a ``get_peers`` answer are stored with who told them: the answering
server's host (attacker39 E1; the store's rules are in ``tests/storage/test_peer_tellers.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from trustp2p import EventMap, Package, PackageType, Socket, Thread
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
