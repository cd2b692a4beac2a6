"""
What a client's peer store keeps of the URLs it was given, over real loopback sockets,
with default options (tester37):

- F2: a ``/p2p/<id>`` pin given with ``peers`` (``--connect``) was stored without it,
  and the client restarted without ``peers`` dialled the unpinned URL, taking another
  key there without a word; another key at a URL that names no peer is now said.
- F1: a mistyped ``peers`` URL was stored at start, and redialled by every later run.

"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trustp2p import Node
from trustp2p.identity import short_id
from trustp2p.storage.peerstore import STORE_PATH, PeerSource, PeerStore

from .conftest import MS, stays, wait_for
from .nodes import MakeNode, node_factory


@pytest.fixture
async def default_node(tmp_path: Path) -> AsyncIterator[MakeNode]:
    """Nodes with the documented defaults (on ephemeral ports); their directories
    ``server``, ``client`` and ``other`` in ``tmp_path`` are made."""
    for name in ("server", "client", "other"):
        (tmp_path / name).mkdir()
    async for make in node_factory({}):
        yield make


def port_of(node: Node) -> int:
    return int((node.url or "").rsplit(":", 1)[1])


async def stored(cwd: Path) -> dict[str, tuple[str | None, PeerSource]]:
    """URL -> (peer id, source) in the stopped node's store in ``cwd``."""
    store = await PeerStore.open(cwd / STORE_PATH)
    try:
        return {url: (r.peer_id, r.source) for r in await store.peers() for url in r.urls}
    finally:
        await store.close()


async def met_then_replaced(
    default_node: MakeNode, tmp_path: Path, *, pinned: bool
) -> tuple[Node, str, str]:
    """A client (its own directory, default options) meets a server, at ``url`` pinned
    or not, and stops; the server stops, and another one, with a new key, listens at
    that address. Returns the new server, the old id and the URL given."""
    server = await default_node(server=True, cwd=tmp_path / "server")
    assert server.url is not None and server.peer_id is not None
    url = f"{server.url}/p2p/{server.peer_id}" if pinned else server.url
    client = await default_node(client=True, peers=[url], cwd=tmp_path / "client")
    assert client.client is not None and client.store is not None
    await client.client.wait_connected()
    store = client.store
    await wait_for(lambda: store.verified_peer_id(url) == server.peer_id)
    await client.stop()
    await server.stop()
    other = await default_node(server=True, cwd=tmp_path / "other", port=port_of(server))
    assert other.peer_id != server.peer_id
    return other, server.peer_id, url


async def test_a_pin_given_with_peers_holds_in_later_runs_without_peers(
    default_node: MakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    other, old_id, url = await met_then_replaced(default_node, tmp_path, pinned=True)
    assert await stored(tmp_path / "client") == {url: (old_id, PeerSource.BOOTSTRAP)}
    # Restarted without peers: it dials the peers its store knows, the pin with it.
    client = await default_node(client=True, cwd=tmp_path / "client")
    assert client.client is not None and other.server is not None
    refused = f"failed: peer is {other.peer_id}, not the expected {old_id}"
    await wait_for(lambda: refused in caplog.text)
    assert any(r.levelno == logging.WARNING and refused in r.getMessage() for r in caplog.records)
    assert await stays(lambda: not client.client.sockets and not other.server.sockets, 300 * MS)
    await client.stop()
    # The entry keeps its pin and its peer: the other key got nothing.
    assert await stored(tmp_path / "client") == {url: (old_id, PeerSource.BOOTSTRAP)}


async def test_another_key_at_a_url_learnt_from_peers_is_said_at_info(
    default_node: MakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review50 R5: a URL the operator never gave (learnt from peers), whose server
    starts without a data directory (a new key each start), made a WARNING after each
    restart, with advice to pin it."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await default_node(server=True, cwd=tmp_path / "server")
    assert server.url is not None and server.peer_id is not None
    store = await PeerStore.open(tmp_path / "client" / STORE_PATH)
    await store.add_urls([server.url], PeerSource.EXCHANGE)
    await store.close()
    client = await default_node(client=True, cwd=tmp_path / "client")
    assert client.client is not None and client.store is not None
    url, old_id, client_store = server.url, server.peer_id, client.store
    await wait_for(lambda: client_store.verified_peer_id(url) == old_id)
    await client.stop()
    await server.stop()
    other = await default_node(server=True, cwd=tmp_path / "other", port=port_of(server))
    client = await default_node(client=True, cwd=tmp_path / "client")
    assert client.client is not None
    await client.client.wait_connected()
    said = f"! {url}: another key answers there now: peer {other.peer_id}, not {old_id}"
    await wait_for(lambda: said in caplog.text)
    (record,) = [r for r in caplog.records if said in r.getMessage()]
    assert record.levelno == logging.INFO


async def test_another_key_at_an_unpinned_url_is_said(
    default_node: MakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like SSH's "host key changed": which URL, the old id, the new one, and how to pin.
    The connection stays (a URL without a pin trusts whoever answers there)."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    other, old_id, url = await met_then_replaced(default_node, tmp_path, pinned=False)
    client = await default_node(client=True, cwd=tmp_path / "client")
    assert client.client is not None
    await client.client.wait_connected()
    said = (
        f"! {url}: another key answers there now: peer {other.peer_id}, not {old_id} as"
        " before (its identity changed, or another node took the address); connected, as"
        f" the URL names no peer: dial {url}/p2p/{old_id} to accept only the old one there"
    )
    await wait_for(lambda: said in caplog.text)
    (record,) = [r for r in caplog.records if said in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert short_id(other.peer_id or "") in caplog.text  # "connected (peer ...)"


async def test_a_url_that_never_worked_is_not_stored(
    default_node: MakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """F1: a typo (tcp:// to a ws:// server) isn't kept for the next runs to dial; the
    right URL, once it worked, is stored as a bootstrap URL."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await default_node(server=True, cwd=tmp_path / "server")
    assert server.url is not None
    typo = server.url.replace("ws://", "tcp://")
    client = await default_node(client=True, peers=[typo], cwd=tmp_path / "client")
    assert client.store is not None
    await wait_for(lambda: f"= {typo}: connection closed during handshake" in caplog.text)
    assert not client.store.knows_url(typo)
    await client.stop()
    assert await stored(tmp_path / "client") == {}
    client = await default_node(client=True, peers=[server.url], cwd=tmp_path / "client")
    assert client.client is not None
    await client.client.wait_connected()
    await client.stop()
    assert await stored(tmp_path / "client") == {server.url: (server.peer_id, PeerSource.BOOTSTRAP)}
