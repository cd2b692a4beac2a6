"""
The parts a node makes from its options when it starts (:meth:`Node.start
<trustp2p.node.node.Node.start>`): its requests, its secure layer, its peer store and its
threads, and what it says once started; and the order in which its stop undoes them
(:func:`stop_parts`). Each sees the node only through its public attributes, and is
given the rest.

"""

from __future__ import annotations

__all__ = [
    "SILENT_CLOSE",
    "load_threads",
    "made_by_start",
    "make_requests",
    "make_secure_layer",
    "open_store",
    "say_started",
    "stop_parts",
]

import asyncio
import contextlib
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..drivers.base import Listening, Socket
from ..identity import Identity, mark_stopping
from ..protocol.close import CloseCode
from ..protocol.hosts import host_of
from ..security.channel import SecureLayer
from ..storage.msglog import LOG_FILE
from ..storage.peerstore import STORE_FILE, PeerSource, PeerStore
from ..threads.base import Thread
from ..threads.loader import enabled_thread_classes, make_threads
from ..threads.peer_exchange import PeerExchangeThread
from .gossip_thread import GossipThread
from .requests import Requests
from .stopping import stop_threads, tasks_end

if TYPE_CHECKING:
    from .node import Node

SILENT_CLOSE = 1.0
"""Seconds a connection whose peer sent nothing has to answer our close when the node
stops, before it is dropped (:func:`stop_parts`; within ``close_timeout``)."""


def make_requests(node: Node) -> Requests:
    """The requests in flight of ``node``, with its options."""
    options = node.options
    return Requests(
        node.connections,
        reroute_target=node.client.reroute_target if node.client is not None else None,
        response_timeout=options.response_timeout,
        stalled_timeout=options.stalled_timeout,
        alt=options.alt,
        metrics=node.metrics,
        max_package_size=options.max_package_size,
    )


def make_secure_layer(node: Node, identity: Identity) -> SecureLayer:
    """The secure layer of ``node`` (secure mode) for ``identity``."""
    options = node.options
    return SecureLayer(
        node.connections,
        identity,
        admit=node.connections.inbound.admit,
        failed=node.connections.handshake_failed,
        handshake_timeout=options.handshake_timeout,
        close_timeout=options.close_timeout,
        time_inbound=False,  # the inbound deadline runs from TCP accept
        max_package_size=options.max_package_size,
    )


async def open_store(node: Node) -> PeerStore:
    """Open the peer store of ``node``: in its data directory, or in memory. A client's
    bootstrap URLs (``peers``, as given: a ``/p2p/<id>`` stays) that the store holds are
    marked bootstrap; the others are stored once a dial to them worked (tester37 F1: a
    typo was redialled by every later run), by :meth:`Dialer.record_connected
    <trustp2p.node.dialer.Dialer.record_connected>`."""
    options = node.options
    path = None
    if options.peer_store and node.data_dir is not None and options.store_shelf is None:
        path = node.data_dir / STORE_FILE
    store = await PeerStore.open(path, policy=options.block_policy(), shelf=options.store_shelf)
    if node.client is not None and options.peers:
        known = [url for url in options.peers if store.knows_url(url)]
        await store.add_urls(known, PeerSource.BOOTSTRAP)
    return store


def load_threads(node: Node) -> list[Thread]:
    """The threads of ``node``, in load order: those enabled in its directory, its
    options' own, then the built-in peer exchange and gossip threads if it runs them."""
    options = node.options
    classes = enabled_thread_classes(options.cwd, node.log, others=bool(options.threads))
    classes.extend(options.threads)
    if options.peer_exchange:
        classes.append(PeerExchangeThread)
    if node.gossip is not None:
        classes.append(GossipThread)
    return make_threads(node, classes)


def say_started(node: Node) -> None:
    """Log the start of ``node``, and warn if peers can't learn its address, or a
    server takes none (``max_inbound`` 0: accepted, as a full server, said: a tester)."""
    node.log.info("= node started%s", f" on {node.url}" if node.url else "")
    if node.server is not None and node.options.max_inbound == 0:
        node.log.warning("! max_inbound is 0: this server refuses every peer (1013"
                         " 'inbound connections maxed out'); None means no limit")  # fmt: skip
    if node.url is not None and not node.listen_urls:
        what = (
            "peers can't dial it and won't learn this node's address: set listen_urls"
            " (TRUSTP2P_LISTEN_URLS, or listen_urls in trustp2p.toml)"
        )
        node.log.warning("! listening on the unspecified address, %s: %s", node.url, what)
    named = [url for url in node.listen_urls if _is_name(host_of(url))]
    if named:  # (a tester followed docs/deploy.md's example: its nodes found only the seed)
        node.log.info(
            "= listen URL(s) %s name a host, not an address: peers don't pass such a URL"
            " on (they can't check it without resolving it); they reach this node through"
            " their peers/--connect, or a listen URL with its address",
            ", ".join(named),
        )


def _is_name(host: str) -> bool:
    """Whether ``host`` is a DNS name (``localhost`` counts as an address)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host != "localhost"
    return False


async def stop_parts(
    node: Node,
    caller: asyncio.Task[Any] | None,
    *,
    listening: Listening | None,
    identity_lock: IO[bytes] | None,
    requests: Requests | None,
    made: Sequence[Path] = (),
) -> None:
    """Stop ``node``'s parts, in the order :meth:`Node.stop
    <trustp2p.node.node.Node.stop>` documents: its ``listening``, roles and threads,
    then its connections, tasks and stores; the files and directories ``made`` by a
    start that failed are removed, and ``identity_lock`` is closed last."""
    for role in (node.server, node.client):  # (their waiters outlived it: a tester)
        if role is not None:
            role.node_stopping()
    if identity_lock is not None:
        mark_stopping(identity_lock)  # a node restarted meanwhile waits
    if node.admin is not None:
        await node.admin.close()
    if listening is not None:
        listening.close()
    if node.client is not None:
        await node.client.stop()
    # Those closing or in their upgrade first: the close_all() below starts closing
    # handshakes, which close_unfinished() would cut short (a reset for the peer).
    node.connections.inbound.close_unfinished()
    secure = node.secure_layer
    if secure is not None:
        secure.close_all(CloseCode.GOING_AWAY, "node stopping")
    await stop_threads(node, caller)  # while the handlers running finish (R57-3)
    if node.gossip is not None:  # a goodbye published in stop() went out (a tester)
        node.gossip.publishing = False
    # Every connection, those refused or still in their handshake included, so
    # that no transport outlives the node.
    raw = secure.raw_sockets if secure is not None else []
    sockets = [*node.connections.all_sockets(), *raw]
    grace = min(SILENT_CLOSE, node.options.close_timeout)
    await _close_sockets(node, sockets, grace, len(raw) if secure is not None else len(sockets))
    await node.connections.workers.wait(node.options.close_timeout, caller)  # the hooks
    if requests is not None:
        requests.close()
    await tasks_end(node)  # (bounded: review61 F2, a request handler could hold it)
    if node.gossip is not None:
        await node.gossip.stop()
    if node.store is not None:
        await node.store.close()
    if listening is not None:
        await listening.wait_closed()
    _remove(node, made)  # (while the identity is held: no node takes it meanwhile)
    if identity_lock is not None:
        identity_lock.close()  # another node may take this identity now


async def _close_sockets(
    node: Node, sockets: Sequence[Socket], grace: float, connections: int
) -> None:
    """Close ``sockets``, each within its ``close_timeout``; those whose peer sent
    nothing within ``grace``, then dropped: nothing may answer (a tester: a port
    scanner's connection, or a dial of a port that took it and said nothing, held a
    tcp:// node's stop for the whole ``close_timeout``; a peer whose introduction is
    on its way answers at once). The rest are dropped if the stop is hurried (the
    ``connections`` they are: in secure mode, each a channel and its transport)."""
    silent = [socket for socket in sockets if not socket.stats.messages_in]  # (review51:
    # the original's empty text frames count no bytes)
    for socket in sockets:
        socket.close_soon(CloseCode.GOING_AWAY, "node stopping")
    if silent:
        waits = {asyncio.ensure_future(socket.wait_closed()): socket for socket in silent}
        _, pending = await asyncio.wait(waits, timeout=grace)
        for wait in pending:
            waits[wait].abort()  # (closing still: no answer)
    if sockets:
        closed = [asyncio.ensure_future(socket.wait_closed()) for socket in sockets]
        counted = closed[-connections:] if connections else []  # (secure: the raw ones)

        def what() -> str:  # said 3 s in: those still open then (tester49 F2)
            left = sum(not wait.done() for wait in counted)
            return f"the closing handshake of {left} connection(s)"

        stop = node.stop_waits
        if await stop.wait(what, closed, node.options.close_timeout) and stop.hurried:
            for socket in sockets:
                socket.abort()  # (nothing if it is closed)
        await asyncio.gather(*closed)


def made_by_start(data_dir: Path) -> list[Path]:
    """What a start in ``data_dir`` will make that isn't there: the directory, or the
    stores' files in it (found by a tester: a failed start in a directory with data
    of an earlier node left its new, empty stores behind)."""
    if not data_dir.exists():
        return [data_dir]
    stores = [data_dir / name for name in (STORE_FILE, LOG_FILE)]
    # A store there already keeps its files (review: its -wal, missing at the start,
    # was another process's by the end, and deleting it lost that process's writes).
    new = (store for store in stores if not store.exists())
    return [store.with_name(store.name + end) for store in new for end in _SQLITE_FILES]


_SQLITE_FILES = ("", "-wal", "-shm", "-journal")  # a database's files, by the end of its name


def _remove(node: Node, made: Sequence[Path]) -> None:
    """Remove what a failed start made (its new key, its new data directory): found by
    testers, a start on a port in use left a node that ``trustp2p peers`` then listed."""
    removed = []
    for path in made:
        if not path.exists():  # (a database's -wal it never made)
            continue
        try:
            if path.is_dir():  # its files: data/ holds the other nodes' directories too
                for inside in path.iterdir():
                    if not inside.is_dir():
                        inside.unlink()
                with contextlib.suppress(OSError):  # (another node's came meanwhile)
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            node.log.warning("! can't remove %s, made by the failed start: %s", path, exc)
        else:
            removed.append(str(path))
    if removed:
        node.log.info("x removed what the failed start made: %s", ", ".join(removed))
