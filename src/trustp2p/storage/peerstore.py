"""
The peer store: what a node remembers about its peers, across restarts.

It lives in ``<cwd>/data/peers.sqlite`` (:data:`STORE_PATH`), an SQLite database in WAL
mode with ``synchronous=NORMAL`` (:mod:`trustp2p.storage.writebehind`): a committed write
survives the process being killed (``kill -9``); only a power cut may lose the last ones.
The schema is versioned with ``PRAGMA user_version`` and upgraded by an ordered list of
migrations.

**Memory first.** The store keeps every peer, URL and block in memory, loaded once at
:meth:`PeerStore.open`; the database is written behind it. Calls made per package or per
accepted connection (:meth:`~PeerStore.record_packages`, :meth:`~PeerStore.is_blocked`) are
plain dict operations and never touch the disk. The async methods write their change at
once; package counts are written by a flush every ``flush_interval`` seconds and at
:meth:`~PeerStore.close`.

**Off the event loop.** ``sqlite3`` runs only on one worker thread owned by the store
(a single-thread executor), so a slow disk never stalls the loop. Call the store's methods
from the event loop thread that opened it; they are not thread-safe.

**Faults are not fatal.** Nothing here raises because of the disk: a failed write (disk
full, I/O error) logs one WARNING, the store runs on in memory and writes everything at
the first flush that works (INFO); a file that is not a database is moved aside to
``peers.sqlite.corrupt-<unix time>`` (WARNING) and a new one made; a database that can't
be opened at all runs the store in memory, opened and merged as soon as it can be.

The store counts; it doesn't judge. Whether a peer's packages call for a block is the
:class:`~trustp2p.protocol.scoring.BlockPolicy`'s decision; peers are named by the keys of
:mod:`trustp2p.protocol.peers`. The records, the in-memory tables and the queries live in
private modules beside this one (``_peer_records``, ``_peer_table``, ``_peer_queries``,
``_peer_dials``).

"""

from __future__ import annotations

__all__ = ["STORE_FILE", "STORE_PATH", "PeerRecord", "PeerSource", "PeerStore"]

import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from ..exceptions import NodeStateError
from ..protocol.feelers import Untried
from ..protocol.limits import address_key
from ..protocol.peers import PeerKey, is_address_key
from ..protocol.scoring import Block, BlockPolicy, PackageCounts
from . import DATA_DIR
from ._peer_dials import failed_dial, untried_urls
from ._peer_queries import GoodRanking, active_block, is_anchor, ranked_urls, records
from ._peer_records import ADDRESS, PEER, Batch, Loaded, PeerDatabase, PeerRecord, PeerSource
from ._peer_table import PeerTable
from .memory import MemoryShelf
from .writebehind import WriteBehind

logger = logging.getLogger(__name__)

STORE_FILE = "peers.sqlite"
"""The peer store's file name, in :data:`~trustp2p.storage.DATA_DIR`."""

STORE_PATH = Path(DATA_DIR) / STORE_FILE
"""Where the peer store lives, relative to the node's cwd."""

_DEFAULT_POLICY = BlockPolicy()

_new_tuple = tuple.__new__


class PeerStore(WriteBehind[Batch, Loaded]):
    """
    The peers a node knows, how they behaved, and whom it blocks.

    Make one with :meth:`open`, and :meth:`close` it when done. All methods must be
    called from the event loop thread that opened the store.

    """

    _name = "peer store"
    _logger = logger
    _contents = "peer stats"
    _thread_name = "trustp2p-peerstore"

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float],
        policy: BlockPolicy,
        flush_interval: float,
        shelf: MemoryShelf | None = None,
        max_peers: int | None,
    ) -> None:
        # Use open(): it also reads the database and starts the flushes.
        db = PeerDatabase(path) if path is not None else None
        super().__init__(db, clock=clock, flush_interval=flush_interval, shelf=shelf)
        self.policy = policy
        """The block policy opened with (read, don't set): ``policy.crossed(counts)``
        says whether :meth:`record_packages`' counts call for a block; its
        ``block_duration`` is :meth:`block`'s default. An attribute: read per package."""
        self._table = PeerTable(max_peers)
        self._good = GoodRanking()  # for get_peers answers

    @classmethod
    async def open(
        cls,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        policy: BlockPolicy = _DEFAULT_POLICY,
        flush_interval: float = 5.0,
        max_peers: int | None = 10_000,
        shelf: MemoryShelf | None = None,
    ) -> PeerStore:
        """
        Open the store at ``path``, creating the file and its directory (mode 0700).

        A corrupt file is moved aside and replaced; a file that can't be opened leaves
        the store in memory until it can be (see the module docstring). Neither raises.

        Args:
            path: The database file, usually ``cwd / STORE_PATH``; None keeps the store
                in memory only.
            clock: Wall-clock time in seconds, for ``first_seen``, blocks and so on.
            policy: The block policy (:attr:`policy`): how long a block lasts.
            flush_interval: Seconds between writes of package counts (and retries
                after a failed write). The async methods write their changes at once.
            max_peers: Peers kept; at a tenth more, the least useful are forgotten down
                to it (never-proven ones first, a network's crowd and self-announced
                URLs before the rest: ``_peer_eviction``). None: no limit.
            shelf: With ``path`` None, where the store takes back what it held at its
                last close, and leaves what it holds at this one
                (:class:`~trustp2p.storage.memory.MemoryShelf`).

        Raises:
            ValueError: If ``flush_interval`` or ``max_peers`` is out of range.

        """
        cls._check_flush_interval(flush_interval)
        if max_peers is not None and max_peers < 1:
            raise ValueError(f"max_peers must be at least 1 or None, not {max_peers}")
        store = cls(
            None if path is None else Path(path),
            clock=clock,
            policy=policy,
            flush_interval=flush_interval,
            shelf=shelf,
            max_peers=max_peers,
        )
        await store._start()
        return store

    async def close(self) -> None:
        """
        Write what is left, then close the database and stop the worker thread.

        If the last write fails, the changes since the last good one are lost and a
        WARNING says how many. Calling it again does nothing.
        """
        await super().close()

    async def flush(self) -> bool:
        """
        Write every change now, rather than at the next periodic flush.

        Returns:
            True if everything is written (always, for a store in memory); False if
            the write failed; it is retried at the next flush.

        """
        return await super().flush()

    async def add_urls(
        self,
        urls: Iterable[str],
        source: PeerSource,
        *,
        peer_id: str | None = None,
        teller: str | None = None,
    ) -> None:
        """
        Remember URLs to dial.

        A URL ``ws://host:port/p2p/<id>`` whose ``ws://host:port`` is that peer's takes
        its place (the pin wins), and that peer's ``ws://host:port`` is never added beside
        its pinned form. A URL already known is never given to the peer announcing it:
        only a successful connection (:meth:`record_connected`) moves it to another peer
        id, so that a peer can't claim other peers' URLs. A URL that a peer only claimed
        (announced as its own, never proven by our dial there) and that another source
        names (with no id, or another one: ``/p2p/<id>`` names the owner of its
        ``ws://host:port``) is no longer that peer's: a peer of its own, id unknown,
        dialled to see who answers. A bootstrap URL makes its peer a bootstrap peer. A
        peer keeps at most :data:`~trustp2p.protocol.urls.MAX_URLS_PER_PEER` URLs.

        Args:
            urls: URLs as validated by the caller (the store doesn't parse them).
            source: Where they come from.
            peer_id: The peer that announced these URLs as its own, after proving its
                id; new URLs are recorded as that peer's. None: each new URL is a peer
                of its own, id unknown.
            teller: The host of the server whose ``get_peers`` answer named these
                URLs: a full store forgets those its network group told past a share first.

        Raises:
            NodeStateError: If the store is closed.
            TypeError: If ``urls`` is a single ``str``.
            ValueError: If ``source`` is not a :class:`PeerSource` value.

        """
        self._check_open()
        if isinstance(urls, str):
            raise TypeError("urls must be an iterable of URLs, not a str")
        source = PeerSource(source)
        self._table.add_urls(urls, source, peer_id, self._clock(), teller)
        self._table.evict()
        await self._save()

    async def record_connected(
        self, *, peer_id: str, url: str | None, address: str | None, bootstrap: bool = False
    ) -> None:
        """
        Record a successful connection (after the peer proved ``peer_id``).

        Sets ``last_connected`` and ``last_seen``, counts a success (one per
        :data:`SUCCESS_SPACING` at most), and links ``url`` to ``peer_id``: a URL known
        without an id takes the id (merging the two records if the id was known too); a
        URL recorded for another id moves to this one. A plain peer (an address key)
        proves no id: the URL keeps a record of its own (all plain peers of an address
        share that key).

        Args:
            peer_id: The peer's id, or its address key in plain mode
                (:func:`~trustp2p.protocol.peers.peer_key`).
            url: The URL we dialled, or None for a peer that connected to us.
            address: The peer's IP address, if known.
            bootstrap: ``url`` is the application's (``peers``, ``connect()``): its peer
                is a bootstrap peer. Raises NodeStateError if the store is closed.
        """
        self._check_open()
        table = self._table
        peer = table.connected(peer_id, url, self._clock(), bootstrap)
        if address is not None:
            peer.address = address
        table.evict()
        await self._save()

    async def record_held(self, *, peer_id: str, url: str) -> None:
        """
        A connection we dialled at ``url`` (as stored) to ``peer_id`` (its key, as for
        :meth:`record_connected`) is still open: the URL worked now (its peer's
        ``last_seen`` moves, not its ``last_connected``), and a link held
        :data:`SUCCESS_SPACING` counts a success as a new connection would, so that a
        peer that stays earns what one that closes its link to be redialled does.
        Called for each such connection every minute or so; written at once only when
        a success was counted. A URL the store doesn't link to that peer is ignored.

        Raises:
            NodeStateError: If the store is closed.

        """
        self._check_open()
        if self._table.held(peer_id, url, self._clock()):
            await self._save()

    async def record_failure(self, url: str) -> None:
        """
        Count a failed dial of ``url`` against it, and the first of a row against its
        peer's score (an outage costs one failure however many redials it takes; a URL
        that keeps failing is forgotten: :func:`~._peer_queries.is_dead`). An unknown
        URL is ignored.

        Raises:
            NodeStateError: If the store is closed.

        """
        self._check_open()
        if failed_dial(self._table, url, self._clock()):
            await self._save()

    def record_packages(self, key: PeerKey, *, good: int = 0, invalid: int = 0) -> PackageCounts:
        """
        Count packages received from a peer, in memory; cheap enough to call per package.

        The counts are written by the next flush. A key the store doesn't know yet is
        added (as an inbound peer). Counting never blocks: ask :attr:`policy` whether
        the counts returned call for a block, and if they do, block the peer
        (:meth:`block`) and start its window afresh (:meth:`restart_window`).

        Args:
            key: The peer (:func:`~trustp2p.protocol.peers.peer_key`).
            good: Valid packages to add.
            invalid: Invalid packages to add.

        Returns:
            The peer's counts since its window started, these packages included.

        Raises:
            ValueError: If a count is negative.

        """
        if good < 0 or invalid < 0:
            raise ValueError(f"package counts can't be negative, not {good} and {invalid}")
        table = self._table
        peer = table.by_id.get(key)
        now = self._clock()
        if peer is None:
            peer = table.new_peer(key, PeerSource.INBOUND, now)
            if table.evict():
                self._good.changed()  # (an eviction: get_peers mustn't share it: review38)
        peer.good_packages += good
        peer.invalid_packages += invalid
        peer.window_good += good
        peer.window_invalid += invalid
        peer.last_seen = now
        table.dirty_peers.add(peer.key)
        # PackageCounts(...) without its Python-level __new__: this runs per package.
        return _new_tuple(PackageCounts, (peer.window_good, peer.window_invalid))

    def restart_window(self, key: PeerKey) -> None:
        """
        Start counting a peer's packages afresh, once its counts crossed the policy, so
        that the policy reports it again only if it keeps misbehaving; the counts are
        written soon. An unknown key is ignored.
        """
        if self._table.restart_window(key):
            self._wake.set()

    async def block(
        self,
        *,
        peer_id: str | None = None,
        address: str | None = None,
        reason: str,
        duration: float | None = None,
        log: bool = True,
    ) -> None:
        """
        Block a peer id, an IP address, or both, and write it down at once.

        A block that already lasts longer is kept as it is.

        Args:
            peer_id: The peer id to block.
            address: The IP address to block, as the drivers report it (``socket.host``);
                an IPv6 address blocks its /64, as the per-address limits count it
                (:func:`~trustp2p.protocol.limits.address_key`).
            reason: Why, for the record.
            duration: Seconds; by default the policy's ``block_duration``.
            log: Whether to log the block (INFO); a node logs its blocks itself, within
                its log budget.

        Raises:
            NodeStateError: If the store is closed.
            ValueError: If neither ``peer_id`` nor ``address`` is given, or ``duration``
                isn't positive.

        """
        self._check_open()
        if peer_id is None and address is None:
            raise ValueError("block() needs a peer_id, an address or both")
        now = self._clock()
        block = self.policy.block(reason, now, duration)
        if address is not None:
            address = address_key(address)
        for kind, key in ((PEER, peer_id), (ADDRESS, address)):
            if key is not None:
                self._table.add_block(kind, key, block)
        if log:
            keys = " and ".join(x for x in (peer_id, address) if x is not None)
            logger.info("= blocked %s for %g s: %s", keys, block.until - now, reason)
        await self._save()

    async def unblock(self, *, peer_id: str | None = None, address: str | None = None) -> int:
        """
        Lift the block of a peer id, of an IP address (an IPv6 address: of its /64, as
        :meth:`block` keeps it), or of both, and write it down at once. For an operator
        (``trustp2p unblock``); the peer's counts stay as they are.

        Returns:
            How many blocks in force were lifted: 0 if neither was blocked.

        Raises:
            NodeStateError: If the store is closed.
            ValueError: If neither ``peer_id`` nor ``address`` is given.

        """
        self._check_open()
        if peer_id is None and address is None:
            raise ValueError("unblock() needs a peer_id, an address or both")
        now, lifted = self._clock(), 0
        for kind, key in ((PEER, peer_id), (ADDRESS, address and address_key(address))):
            block = None if key is None else self._table.remove_block(kind, key)
            lifted += block is not None and block.active(now)
        await self._save()
        return lifted

    async def forget(self, url: str) -> bool:
        """Forget ``url`` (as stored) for an operator (``trustp2p peers --forget``), at
        once: its peer stays with its history, unless the URL was all the store knew of
        it. True if it was stored. Raises NodeStateError if the store is closed."""
        self._check_open()
        found = self._table.forget(url)
        if found:
            await self._save()
        return found

    def peer_id_of(self, url: str) -> str | None:
        """The peer key last met at ``url`` (an id, or an address key in plain mode)
        when we connected there, if ever: not one a peer only announced. SYNC."""
        return self._table.met_at(url)

    def knows_url(self, url: str) -> bool:
        """Whether the store holds ``url`` (exactly as given). SYNC, a dict lookup."""
        return url in self._table.by_url

    def verified_peer_id(self, url: str) -> str | None:
        """The peer id that proved itself when we dialled ``url``, if we ever connected
        there (not one a peer only announced). SYNC, a dict lookup."""
        peer_id = self._table.met_at(url)
        return None if peer_id is None or is_address_key(peer_id) else peer_id

    def proven(self, url: str) -> bool:
        """
        Whether ``url`` (exactly as stored) is proven: a bootstrap peer's, or one where
        we connected (the peer proved its id there; in plain mode, it answered). URLs
        only learned from peers are not: dials to them are bounded. SYNC, a dict
        lookup.
        """
        entry = self._table.by_url.get(url)
        if entry is None:
            return False
        return entry.last_connected is not None or entry.peer.source is PeerSource.BOOTSTRAP

    def is_blocked(self, *, peer_id: str | None = None, address: str | None = None) -> bool:
        """
        Whether ``peer_id`` or ``address`` is blocked now. Costs a dict lookup or two.

        Args:
            peer_id: A peer id.
            address: An IP address, as the drivers report it (in a blocked IPv6 /64,
                it is blocked).

        """
        return self.blocked_for(peer_id=peer_id, address=address) is not None

    def blocked_for(
        self, *, peer_id: str | None = None, address: str | None = None
    ) -> tuple[float, str] | None:
        """How many seconds the block on ``peer_id`` or ``address`` still lasts, and
        why; ``None`` if neither is blocked now (the longer block of the two if both)."""
        now = self._clock()
        block = active_block(self._table, now, peer_id, address)
        return None if block is None else (block.until - now, block.reason)

    async def candidates(
        self,
        limit: int,
        *,
        exclude_urls: Collection[str] = (),
        exclude_ids: Collection[str] = (),
    ) -> list[str]:
        """
        URLs to dial, best peer first, one per peer.

        Peers are ranked by :attr:`PeerRecord.score`, then bootstrap peers first, then
        the most recently connected. Of a peer's URLs, the one with the fewest failures
        since it last worked is chosen. Blocked peers, and URLs whose host is a blocked
        address, are left out.

        Args:
            limit: Most URLs returned.
            exclude_urls: URLs not to return (being dialled, or our own); another URL
                of the same peer may still be returned.
            exclude_ids: Peers not to return (connected already, or ourselves).

        """
        return self._ranked(limit, exclude_urls, exclude_ids, good=False, anchors=False)

    async def anchor_candidates(
        self,
        limit: int,
        *,
        exclude_urls: Collection[str] = (),
        exclude_ids: Collection[str] = (),
    ) -> list[str]:
        """
        Like :meth:`candidates`, but only peers worth keeping a connection to as an
        anchor against eclipsing: bootstrap peers, and peers we had connected to before
        this run (read from the database). Peers met in this run don't count: a peer
        that an attacker's list led us to can't become an anchor by reconnecting.
        """
        return self._ranked(limit, exclude_urls, exclude_ids, good=False, anchors=True)

    def is_anchor(self, peer_id: str, *, bootstrap: bool = False) -> bool:
        """
        Whether a connected peer anchors us: a bootstrap peer, or (unless ``bootstrap``)
        one we had connected to before this run. SYNC, a dict lookup."""
        return is_anchor(self._table, peer_id, bootstrap=bootstrap)

    async def good_urls(
        self,
        limit: int,
        *,
        exclude_urls: Collection[str] = (),
        exclude_ids: Collection[str] = (),
    ) -> list[str]:
        """
        URLs we believe good, to share with other peers: like :meth:`candidates`, but
        only peers we connected to successfully at least once, and not URLs that failed
        :data:`~trustp2p.storage._peer_queries.MAX_GOOD_URL_FAILURES` (3) times in a row
        since.

        Args:
            limit: Most URLs returned.
            exclude_urls: URLs not to return (e.g. the asker's own).
            exclude_ids: Peers not to return (e.g. the asker).

        """
        return self._ranked(limit, exclude_urls, exclude_ids, good=True, anchors=False)

    def untried(self, *, exclude_ids: Collection[str] = ()) -> list[Untried]:
        """The URLs nobody has proven, each teller's first few, for a feeler dial to
        try (:func:`~._peer_dials.untried_urls`; not of blocked peers, nor of the peers
        ``exclude_ids``). SYNC: a pass over the peers, at 10,000 about 8 ms on an idle
        machine, 70 ms at a load of 9 on 2 cores (more when every URL is its own teller)."""
        return untried_urls(self._table, self._clock(), exclude_ids)

    def size(self) -> int:
        """How many peers the store knows."""
        return len(self._table.peers)

    def active_blocks(self) -> int:
        """How many blocks (of peer ids and of addresses) are in force now."""
        return len(self._table.active_blocks(self._clock()))

    def blocks(self) -> list[tuple[str, str, Block]]:
        """The blocks in force now: (``"peer"`` or ``"address"``, the peer id or the
        address (an IPv6 /64 as ``2001:db8::/64``), the block)."""
        return self._table.active_blocks(self._clock())

    def score_of(self, peer_id: str) -> float | None:
        """The score of the peer with this id, if the store knows it."""
        peer = self._table.by_id.get(peer_id)
        return peer.score() if peer is not None else None

    async def peers(self) -> list[PeerRecord]:
        """Every peer the store knows, best score first, then most recently seen."""
        return records(self._table, self._clock())

    def _ranked(
        self,
        limit: int,
        exclude_urls: Collection[str],
        exclude_ids: Collection[str],
        *,
        good: bool,
        anchors: bool,
    ) -> list[str]:
        now, table = self._clock(), self._table
        peers = self._good.peers(table, now) if good and not anchors else None
        ranked = ranked_urls(
            table, now, exclude_urls, exclude_ids, good=good, anchors=anchors, peers=peers
        )
        return list(itertools.islice(ranked, limit))

    def _check_open(self) -> None:
        if self._closed:
            raise NodeStateError("the peer store is closed")

    # Persistence: the write-behind side hands the table's batches to the worker thread.

    async def _save(self) -> None:
        """Write a change now, unless writes are failing: then the next flush retries."""
        self._good.changed()
        if not self._failing:
            await self.flush()

    def _absorb(self, loaded: Loaded) -> None:
        self._table.absorb(loaded, self._clock())

    def _prune(self) -> None:
        self._good.changed()
        self._table.prune(self._clock())

    def _take_batch(self) -> Batch | None:
        return self._table.take_batch()

    def _discard_changes(self) -> None:
        self._table.discard_changes()

    def _restore(self, batch: Batch) -> None:
        self._table.restore(batch)

    def _snapshot(self) -> Loaded:
        return self._table.snapshot()

    def _unsaved(self) -> int:
        return self._table.unsaved()
