"""Feeler dials over loopback (review62 F1): a client at its target dials the untried
URLs it learned from a ``get_peers`` answer, one at a time; a live server's URL is proven
and its connection closed, a made-up one's failure is counted. The rule is tested on a
fake clock in ``tests/protocol/test_feelers.py``; what proving does in a full store, in
``tests/storage/test_peer_feelers.py``."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from trustp2p import EventMap, Node, Package, PackageType, Socket, Thread

from .conftest import MS, stays
from .nodes import MakeNode, node_factory, wait_for


@pytest.fixture
def made_up() -> Iterator[str]:
    """A URL whose port is bound and never listened on: a dial is refused at once, and
    no other process can take the port while the test runs (a fixed port was, once)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"ws://127.0.0.1:{held.getsockname()[1]}"


TOLD: list[str] = []


class Teller(Thread):
    """Answers every ``get_peers`` with TOLD."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"get_peers": self.get_peers}}

    def get_peers(self, socket: Socket, package: Package) -> dict[str, Any]:
        return {"peers": TOLD}


@pytest.fixture
async def make_default() -> AsyncIterator[MakeNode]:
    """Nodes with the documented defaults (ports aside)."""
    async for make in node_factory({}):
        yield make


async def failures(node: Node, url: str) -> int:
    """The failed dials of ``url``'s peer in ``node``'s store (-1: not stored)."""
    assert node.store is not None
    records = [r for r in await node.store.peers() if url in r.urls]
    return records[0].failures if records else -1


async def test_a_client_at_its_target_proves_a_learned_url_and_counts_a_made_up_one(
    make_default: MakeNode, caplog: pytest.LogCaptureFixture, made_up: str
) -> None:
    """Default options but ``feeler_interval`` (120 s) and a target of 1, met by the
    bootstrap server: without feelers the URLs learned stay untried (the manager dials
    nothing at its target)."""
    caplog.set_level(logging.DEBUG, logger="trustp2p")
    server = await make_default(server=True)
    bootstrap = await make_default(server=True, peer_exchange=False, threads=[Teller])
    TOLD[:] = [server.url, made_up]
    client = await make_default(
        client=True, peers=[bootstrap.url], target_outbound=1, feeler_interval=50 * MS
    )
    store = client.store
    assert store is not None and client.client is not None
    await wait_for(lambda: store.knows_url(server.url) and store.knows_url(made_up))
    await wait_for(lambda: store.proven(server.url), timeout=10)
    async with asyncio.timeout(10):
        while await failures(client, made_up) < 1:  # noqa: ASYNC110 - the store's records
            await asyncio.sleep(10 * MS)
    assert not store.proven(made_up)
    # The feeler's connection closed once it worked: the client keeps its bootstrap
    # peer alone, and the server neither blocked nor penalised it.
    role = client.client
    await wait_for(lambda: [s.peer for s in role.sockets] == [bootstrap.url])
    await wait_for(lambda: not server.sockets)
    assert server.store is not None and client.peer_id is not None
    assert not server.store.is_blocked(peer_id=client.peer_id)
    assert server.store.score_of(client.peer_id) in (None, 0.0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # The feelers' own lines at DEBUG; their connections' open and close at INFO, as
    # any connection's (within the log budget).
    said = [r for r in caplog.records if r.name == "trustp2p.node.dialer"]
    assert len(said) >= 2
    assert all(r.levelno == logging.DEBUG for r in said)


async def test_a_feeler_to_a_peer_connected_already_keeps_one_connection(
    make_default: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL learned is a peer's that dialled us: the feeler reaches it, the node
    keeps one of the two connections (by the peers' ids), and the URL is known as that
    peer's (no failure counted). The one kept stays, whichever it is: the feeler's is
    not closed for being a feeler (the peer would have had to dial again)."""
    caplog.set_level(logging.DEBUG, logger="trustp2p")
    client = await make_default(
        server=True, client=True, target_outbound=1, feeler_interval=50 * MS
    )
    server = await make_default(server=True, client=True, target_outbound=0)
    assert server.client is not None and client.client is not None
    server.client.connect(client.url)
    await wait_for(lambda: len(client.sockets) == 1)
    bootstrap = await make_default(server=True, peer_exchange=False, threads=[Teller])
    TOLD[:] = [server.url]
    client.client.connect(bootstrap.url)
    store = client.store
    assert store is not None
    await wait_for(lambda: store.knows_url(server.url))
    await wait_for(lambda: store.proven(server.url), timeout=10)
    assert store.peer_id_of(server.url) == server.peer_id
    assert await failures(client, server.url) == 0
    both = sorted(str(peer) for peer in (server.peer_id, bootstrap.peer_id))
    await wait_for(lambda: sorted(str(s.peer_id) for s in client.sockets) == both)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # The peer's dial, if it was closed for the feeler's, waits while we are connected
    # (its redial comes after reconnect_initial, 1 s).
    assert await stays(lambda: len(server.sockets) == len(client.sockets) - 1 == 1, 2.0)


async def test_a_full_server_refusing_feelers_is_no_failure_of_its_url(
    make_default: MakeNode,
) -> None:
    """A server with no room (1013 "inbound connections maxed out") is a live node: the
    feelers it refuses wait their retry delay, but count no failure in the store (review69
    F1: each counted -2, so a popular full server's URL was the first a flood pushed out,
    and forgotten for good after 3 refusals and an hour)."""
    server = await make_default(server=True, max_inbound=1)
    occupier = await make_default(client=True, peers=[server.url], target_outbound=0)
    await wait_for(lambda: len(server.sockets) == 1)
    bootstrap = await make_default(server=True, peer_exchange=False, threads=[Teller])
    TOLD[:] = [server.url]
    client = await make_default(
        client=True, peers=[bootstrap.url], target_outbound=1, feeler_interval=50 * MS
    )
    assert client.client is not None and client.store is not None
    dialer = client.client.dialer
    await wait_for(lambda: dialer.policy.failures(server.url) >= 2, timeout=10)
    assert "maxed out" in (dialer.last_failure(server.url) or "")
    assert await failures(client, server.url) == 0
    assert not client.store.proven(server.url)
    assert len(occupier.client.sockets) == 1 if occupier.client else False


async def test_a_feeler_that_opens_short_of_the_target_is_kept(
    make_default: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The client was at its target when the feeler was chosen, but its one outbound
    peer left while the feeler's dial was under way (held at a proxy): the feeler's
    connection is then one of its outbound connections, kept as a managed dial's
    (review69 F2: this path was untested)."""
    caplog.set_level(logging.DEBUG, logger="trustp2p")
    server = await make_default(server=True)
    port = int(server.url.rsplit(":", 1)[1])
    release = asyncio.Event()
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await release.wait()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        to_reader, to_writer = await asyncio.open_connection("127.0.0.1", port)
        pipes.add(asyncio.create_task(pipe(reader, to_writer)))
        pipes.add(asyncio.create_task(pipe(to_reader, writer)))

    listener = await asyncio.start_server(proxy, "127.0.0.1", 0)
    try:
        held = f"ws://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        bootstrap = await make_default(server=True, peer_exchange=False, threads=[Teller])
        TOLD[:] = [held]
        client = await make_default(
            client=True, peers=[bootstrap.url], target_outbound=1, feeler_interval=50 * MS
        )
        assert client.client is not None
        role, feelers = client.client, client.client.dialer.feelers
        await wait_for(lambda: feelers.policy.under_way == held, timeout=10)
        await wait_for(lambda: [s.peer for s in role.sockets] == [bootstrap.url])
        await bootstrap.stop()
        await wait_for(lambda: not role.sockets)
        release.set()

        def worked() -> list[str]:
            return [m for r in caplog.records if f"feeler {held} worked" in (m := r.getMessage())]

        await wait_for(worked, timeout=10)
        assert worked() == [f"= feeler {held} worked: kept"]
        assert [s.peer for s in role.sockets] == [held]
        assert [d.url for d in role.dialer.policy.dials] == [held]  # a managed dial now
        await client.stop()
    finally:
        release.set()
        listener.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def test_a_feeler_refused_after_the_open_counts_as_a_managed_dial_would(
    make_default: MakeNode,
) -> None:
    """A plain client's feeler to a secure server: the server refuses it once it opened
    (a secure channel required); the failure counts against the URL, with the longest
    retry wait, as for a managed dial (review69 F3: none was counted)."""
    server = await make_default(server=True)
    bootstrap = await make_default(server=True, secure=False, peer_exchange=False, threads=[Teller])
    TOLD[:] = [server.url]
    client = await make_default(
        client=True,
        secure=False,
        peers=[bootstrap.url],
        target_outbound=1,
        feeler_interval=50 * MS,
    )
    assert client.client is not None
    dialer = client.client.dialer
    await wait_for(lambda: dialer.policy.failures(server.url) >= 1, timeout=10)
    assert "secure channel required" in (dialer.last_failure(server.url) or "")
    async with asyncio.timeout(10):
        while await failures(client, server.url) < 1:  # noqa: ASYNC110 - the store's records
            await asyncio.sleep(10 * MS)
