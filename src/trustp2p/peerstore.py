"""
The peer store: what a node remembers about its peers, across restarts.

It lives in ``<cwd>/data/peers.sqlite`` (:data:`STORE_PATH`), an SQLite database in WAL
mode with ``synchronous=NORMAL``: a committed write survives the process being killed
(``kill -9``); only a power cut may lose the last ones. The schema is versioned with
``PRAGMA user_version`` and upgraded by an ordered list of migrations.

**Memory first.** The store keeps every peer, URL and block in memory, loaded once at
:meth:`PeerStore.open`; the database is written behind it. Lookups made per package or per
accepted connection (:meth:`~PeerStore.count_packages`, :meth:`~PeerStore.is_blocked`) are
plain dict operations and never touch the disk. The async methods write their change at
once; package counts are written by a flush every ``flush_interval`` seconds and at
:meth:`~PeerStore.close`.

**Off the event loop.** ``sqlite3`` runs only on one worker thread owned by the store
(a single-thread executor), so a slow disk never stalls the loop. Call the store's methods
from the event loop thread that opened it; they are not thread-safe.

**Faults are not fatal.** Nothing here raises because of the disk:

- a write that fails (disk full, file-size limit, I/O error) logs one WARNING; the store
  keeps running on its in-memory state, retries at each flush, logs INFO when writes work
  again, and writes everything changed meanwhile;
- a database that is not one (random bytes, a garbled header, a truncated file) is moved
  aside to ``peers.sqlite.corrupt-<unix time>`` with a WARNING, and a new one is created;
  a garbage WAL or shared-memory file is ignored by SQLite itself;
- a database that can't be opened at all runs the store in memory, and it is opened (and
  merged with what was learned meanwhile) as soon as it can be.

"""

from __future__ import annotations

__all__ = [
    "DATA_DIR",
    "MAX_URLS_PER_PEER",
    "STORE_FILE",
    "STORE_PATH",
    "BlockPolicy",
    "PeerRecord",
    "PeerSource",
    "PeerStore",
]

import enum
import heapq
import itertools
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._sqlite import Database, WriteBehind
from .protocol.urls import split_peer_url

logger = logging.getLogger("trustp2p.peerstore")

DATA_DIR = "data"
"""The directory of the node's data, relative to its cwd."""

STORE_FILE = "peers.sqlite"

MAX_URLS_PER_PEER = 8
"""URLs kept per peer; a new one pushes out the oldest."""
"""The peer store's file name, in :data:`DATA_DIR`."""

STORE_PATH = Path(DATA_DIR) / STORE_FILE
"""Where the peer store lives, relative to the node's cwd."""

# Block kinds, as stored in the ``blocks`` table.
_PEER = "peer"
_ADDRESS = "address"

# A URL that failed this many times in a row since it last worked isn't offered to
# other peers by good_urls().
_MAX_GOOD_URL_FAILURES = 3

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema. ``key`` is a random id that survives merges (it is not the
    # peer id, which is unknown until we connect).
    (
        """CREATE TABLE peers (
            key TEXT PRIMARY KEY,
            peer_id TEXT,
            source TEXT NOT NULL,
            address TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            last_connected REAL,
            successes INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            good_packages INTEGER NOT NULL DEFAULT 0,
            invalid_packages INTEGER NOT NULL DEFAULT 0,
            window_good INTEGER NOT NULL DEFAULT 0,
            window_invalid INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX peers_peer_id ON peers (peer_id)",
        """CREATE TABLE urls (
            url TEXT PRIMARY KEY,
            peer TEXT NOT NULL,
            first_seen REAL NOT NULL,
            last_connected REAL,
            failures INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX urls_peer ON urls (peer)",
        """CREATE TABLE blocks (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            until REAL NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
    ),
)

_PEER_COLUMNS = (
    "key, peer_id, source, address, first_seen, last_seen, last_connected, successes, "
    "failures, good_packages, invalid_packages, window_good, window_invalid"
)
_URL_COLUMNS = "url, peer, first_seen, last_connected, failures"
_BLOCK_COLUMNS = "kind, key, until, reason"


class PeerSource(enum.StrEnum):
    """Where the store first heard of a peer."""

    BOOTSTRAP = "bootstrap"
    """Given on the command line (``--connect``) or in ``NodeOptions.peers``."""
    EXCHANGE = "exchange"
    """Learned from another peer (``get_peers``, or a hello on an outbound connection)."""
    INBOUND = "inbound"
    """The peer connected to us."""


@dataclass(frozen=True, slots=True)
class BlockPolicy:
    """
    When a peer's packages make it a peer to block.

    Args:
        invalid_ratio: The policy is exceeded when invalid packages outnumber good ones
            by more than this ratio (0.1: more than one invalid package per ten good).
        min_packages: ...once at least this many packages (good + invalid) were counted,
            so that one bad package from a new peer is not enough.
        block_duration: How long a block lasts, in seconds (1 h).

    Raises:
        ValueError: If a value is out of range.

    """

    invalid_ratio: float = 0.1
    min_packages: int = 10
    block_duration: float = 3600.0

    def __post_init__(self) -> None:
        if not (self.invalid_ratio >= 0 and math.isfinite(self.invalid_ratio)):
            raise ValueError(f"invalid_ratio must not be negative, not {self.invalid_ratio}")
        if self.min_packages < 1:
            raise ValueError(f"min_packages must be at least 1, not {self.min_packages}")
        if not (self.block_duration > 0 and math.isfinite(self.block_duration)):
            raise ValueError(
                f"block_duration must be a positive number of seconds, not {self.block_duration}"
            )

    def exceeded(self, good: int, invalid: int) -> bool:
        """
        Whether ``good`` and ``invalid`` package counts call for a block.

        True when ``good + invalid >= min_packages`` and ``invalid > invalid_ratio * good``
        (with no good package at all, any invalid one exceeds the ratio).
        """
        return good + invalid >= self.min_packages and invalid > self.invalid_ratio * good


def _score(successes: int, failures: int, good: int, invalid: int) -> float:
    return successes - 2.0 * failures + good / 100 - invalid


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """
    What the store knows about one peer, as :meth:`PeerStore.peers` lists it.

    Times are wall-clock Unix times in seconds.

    Attributes:
        peer_id: The peer's id, or None until we connected to one of its URLs (or it
            announced them after proving its id).
        urls: The URLs it can be dialled at, oldest first (then in alphabetical order);
            empty for a peer that only ever connected to us.
        source: Where we first heard of it; bootstrap wins over the others.
        address: The IP address of its last connection, if any.
        first_seen: When the store first heard of it.
        last_seen: When we last connected to it or counted a package of it (else
            ``first_seen``).
        last_connected: When we last connected to it successfully, if ever.
        successes: Successful connections.
        failures: Failed dials.
        good_packages: Valid packages counted.
        invalid_packages: Invalid packages counted.
        blocked_until: When its block by peer id ends, if it is blocked now.

    """

    peer_id: str | None
    urls: tuple[str, ...]
    source: PeerSource
    address: str | None
    first_seen: float
    last_seen: float
    last_connected: float | None
    successes: int
    failures: int
    good_packages: int
    invalid_packages: int
    blocked_until: float | None

    @property
    def score(self) -> float:
        """
        How much we like this peer; higher is better, 0 for a peer never tried.

        ``successes - 2 * failures + good_packages / 100 - invalid_packages``: a failed
        dial costs two successful ones, and an invalid package costs a hundred good ones
        (so at the default block ratio of 0.1, a peer's score is well below zero).
        """
        return _score(self.successes, self.failures, self.good_packages, self.invalid_packages)


@dataclass(slots=True, eq=False)
class _Url:
    url: str
    peer: _Peer
    first_seen: float
    last_connected: float | None = None
    failures: int = 0  # since it last worked


@dataclass(slots=True, eq=False)
class _Peer:
    key: str
    peer_id: str | None
    source: PeerSource
    first_seen: float
    last_seen: float
    address: str | None = None
    last_connected: float | None = None
    successes: int = 0
    failures: int = 0
    good_packages: int = 0
    invalid_packages: int = 0
    # Package counts the block policy looks at: since the policy was last exceeded.
    window_good: int = 0
    window_invalid: int = 0
    urls: dict[str, _Url] = field(default_factory=dict)

    def score(self) -> float:
        return _score(self.successes, self.failures, self.good_packages, self.invalid_packages)


@dataclass(slots=True)
class _Block:
    until: float
    reason: str


@dataclass(slots=True)
class _Batch:
    """One flush: the keys it covers, and their rows as they were when it was taken."""

    peer_keys: set[str]
    url_keys: set[str]
    block_keys: set[tuple[str, str]]
    peers: list[tuple[object, ...]] = field(default_factory=list)
    peer_deletes: list[tuple[str]] = field(default_factory=list)
    urls: list[tuple[object, ...]] = field(default_factory=list)
    url_deletes: list[tuple[str]] = field(default_factory=list)
    blocks: list[tuple[object, ...]] = field(default_factory=list)
    block_deletes: list[tuple[str, str]] = field(default_factory=list)


# Rows of the peers, urls and blocks tables, as read at open.
_Loaded = tuple[list[Any], list[Any], list[Any]]


class _Database(Database[_Batch, _Loaded]):
    """The SQLite side of the store. Its methods run on the store's worker thread only."""

    name = "peer store"
    logger = logger
    migrations = _MIGRATIONS

    def _read(self, conn: sqlite3.Connection, now: float) -> _Loaded:
        return (
            conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers").fetchall(),
            conn.execute(f"SELECT {_URL_COLUMNS} FROM urls").fetchall(),
            conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM blocks").fetchall(),
        )

    def _write(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        conn.executemany("DELETE FROM peers WHERE key = ?", batch.peer_deletes)
        conn.executemany(
            f"INSERT OR REPLACE INTO peers ({_PEER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch.peers,
        )
        conn.executemany("DELETE FROM urls WHERE url = ?", batch.url_deletes)
        conn.executemany(
            f"INSERT OR REPLACE INTO urls ({_URL_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            batch.urls,
        )
        conn.executemany("DELETE FROM blocks WHERE kind = ? AND key = ?", batch.block_deletes)
        conn.executemany(
            f"INSERT OR REPLACE INTO blocks ({_BLOCK_COLUMNS}) VALUES (?, ?, ?, ?)",
            batch.blocks,
        )


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _excluded_by_its_id(
    url: str, exclude_urls: Collection[str], exclude_ids: Collection[str]
) -> bool:
    """Whether ``url/p2p/<id>`` names an excluded peer or an excluded URL's address."""
    if "/p2p/" not in url:
        return False
    try:
        dial_url, peer_id = split_peer_url(url)
    except ValueError:
        return False
    return peer_id in exclude_ids or dial_url in exclude_urls


def _dial_rank(peer: _Peer) -> tuple[float, bool, float, float, str]:
    """Sort key: best score first; then bootstrap peers, recently connected, oldest."""
    return (
        -peer.score(),
        peer.source is not PeerSource.BOOTSTRAP,
        -(peer.last_connected or 0.0),
        peer.first_seen,
        peer.key,
    )


def _eviction_rank(peer: _Peer) -> tuple[bool, bool, bool, float, float]:
    """Sort key: the first ones are forgotten first when the store is full. Records
    without a URL (peers that only ever dialled us) can't be dialled: they go first, so
    that peers connecting with fresh keys can't push out the dial candidates."""
    return (
        bool(peer.urls),
        peer.successes > 0,
        peer.source is PeerSource.BOOTSTRAP,
        peer.score(),
        peer.last_seen,
    )


def _url_rank(entry: _Url) -> tuple[int, float, float, str]:
    """Sort key among a peer's URLs: fewest failures since it worked, then last to work."""
    return (entry.failures, -(entry.last_connected or 0.0), entry.first_seen, entry.url)


def _url_age(entry: _Url) -> tuple[float, str]:
    return (entry.first_seen, entry.url)


class PeerStore(WriteBehind[_Batch, _Loaded]):
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
        max_peers: int | None,
    ) -> None:
        # Use open(): it also reads the database and starts the flushes.
        db = _Database(path) if path is not None else None
        super().__init__(db, clock=clock, flush_interval=flush_interval)
        self._policy = policy
        self._min_packages = policy.min_packages
        self._invalid_ratio = policy.invalid_ratio
        self._max_peers = max_peers
        self._peers: dict[str, _Peer] = {}
        self._by_id: dict[str, _Peer] = {}
        self._by_url: dict[str, _Url] = {}
        # Peers we had connected to successfully before this run (keys): the only ones,
        # with bootstrap peers, that anchor a client (see anchor_candidates).
        self._known_before: set[str] = set()
        self._blocked_ids: dict[str, _Block] = {}
        self._blocked_addresses: dict[str, _Block] = {}
        self._blocks = {_PEER: self._blocked_ids, _ADDRESS: self._blocked_addresses}
        # What changed since the last flush. A key that is no longer in memory is
        # deleted from the database.
        self._dirty_peers: set[str] = set()
        self._dirty_urls: set[str] = set()
        self._dirty_blocks: set[tuple[str, str]] = set()

    @classmethod
    async def open(
        cls,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        policy: BlockPolicy = BlockPolicy(),
        flush_interval: float = 5.0,
        max_peers: int | None = 10_000,
    ) -> PeerStore:
        """
        Open the store at ``path``, creating the file and its directory (mode 0700).

        A corrupt file is moved aside and replaced; a file that can't be opened leaves
        the store in memory until it can be (see the module docstring). Neither raises.

        Args:
            path: The database file, usually ``cwd / STORE_PATH``; None keeps the store
                in memory only.
            clock: Wall-clock time in seconds, for ``first_seen``, blocks and so on.
            policy: When :meth:`count_packages` reports a peer to block.
            flush_interval: Seconds between writes of package counts (and retries
                after a failed write). The async methods write their changes at once.
            max_peers: Most peers kept; past it, the least useful ones are forgotten
                (never-connected peers learned from others first). None: no limit.

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
        self, urls: Iterable[str], source: PeerSource, *, peer_id: str | None = None
    ) -> None:
        """
        Remember URLs to dial.

        A URL already known keeps its peer: only a successful connection
        (:meth:`record_connected`) moves it to another peer id, so that a peer can't
        claim other peers' URLs. A bootstrap URL makes its peer a bootstrap peer.

        Args:
            urls: URLs as validated by the caller (the store doesn't parse them).
            source: Where they come from.
            peer_id: The peer that announced these URLs as its own, after proving its
                id; new URLs are recorded as that peer's. None: each new URL is a peer
                of its own, id unknown.

        Raises:
            RuntimeError: If the store is closed.
            TypeError: If ``urls`` is a single ``str``.
            ValueError: If ``source`` is not a :class:`PeerSource` value.

        """
        self._check_open()
        if isinstance(urls, str):
            raise TypeError("urls must be an iterable of URLs, not a str")
        source = PeerSource(source)
        now = self._clock()
        owner = None
        if peer_id is not None:
            owner = self._by_id.get(peer_id) or self._new_peer(peer_id, source, now)
        for url in urls:
            entry = self._by_url.get(url)
            if entry is None:
                peer = owner if owner is not None else self._new_peer(None, source, now)
                entry = self._attach(url, peer, now)
            peer = entry.peer
            if source is PeerSource.BOOTSTRAP and peer.source is not PeerSource.BOOTSTRAP:
                peer.source = PeerSource.BOOTSTRAP
                self._dirty_peers.add(peer.key)
        self._evict()
        await self._save()

    async def record_connected(self, *, peer_id: str, url: str | None, address: str | None) -> None:
        """
        Record a successful connection (after the peer proved ``peer_id``).

        Sets ``last_connected`` and ``last_seen``, counts a success, and links ``url``
        to ``peer_id``: a URL known without an id takes the id (merging the two records
        if the id was known too); a URL recorded for another id moves to this one.

        Args:
            peer_id: The peer's id.
            url: The URL we dialled, or None for a peer that connected to us.
            address: The peer's IP address, if known.

        Raises:
            RuntimeError: If the store is closed.

        """
        self._check_open()
        now = self._clock()
        if url is None:
            peer = self._by_id.get(peer_id) or self._new_peer(peer_id, PeerSource.INBOUND, now)
        else:
            entry = self._claim(url, peer_id, now)
            entry.last_connected = now
            entry.failures = 0
            self._dirty_urls.add(url)
            peer = entry.peer
        peer.successes += 1
        peer.last_connected = peer.last_seen = now
        if address is not None:
            peer.address = address
        self._dirty_peers.add(peer.key)
        self._evict()
        await self._save()

    async def record_failure(self, url: str) -> None:
        """
        Count a failed dial of ``url`` against it and its peer; an unknown URL is ignored.

        Raises:
            RuntimeError: If the store is closed.

        """
        self._check_open()
        entry = self._by_url.get(url)
        if entry is None:
            logger.debug("? failure of unknown URL %s ignored", url)
            return
        entry.failures += 1
        entry.peer.failures += 1
        self._dirty_urls.add(url)
        self._dirty_peers.add(entry.peer.key)
        await self._save()

    def count_packages(self, peer_id: str, *, good: int = 0, invalid: int = 0) -> bool:
        """
        Count packages received from a peer, in memory; cheap enough to call per package.

        The counts are written by the next flush. A peer id the store doesn't know yet
        is added (as an inbound peer).

        Args:
            peer_id: The peer, or any stable key for it (e.g. ``"address:<ip>"``).
            good: Valid packages to add.
            invalid: Invalid packages to add.

        Returns:
            True if these packages make the peer exceed the block policy: the caller
            should block it (:meth:`block`) and disconnect it. The policy then starts
            counting afresh, so it reports the peer again only if it keeps misbehaving.

        Raises:
            ValueError: If a count is negative.

        """
        if good < 0 or invalid < 0:
            raise ValueError(f"package counts can't be negative, not {good} and {invalid}")
        now = self._clock()
        peer = self._by_id.get(peer_id)
        if peer is None:
            peer = self._new_peer(peer_id, PeerSource.INBOUND, now)
            self._evict()
        peer.good_packages += good
        peer.invalid_packages += invalid
        peer.window_good = window_good = peer.window_good + good
        peer.window_invalid = window_invalid = peer.window_invalid + invalid
        peer.last_seen = now
        self._dirty_peers.add(peer.key)
        # BlockPolicy.exceeded(), inlined: this runs for every package.
        if (
            window_good + window_invalid < self._min_packages
            or window_invalid <= self._invalid_ratio * window_good
        ):
            return False
        logger.debug(
            "! peer %s exceeds the block policy: %d invalid of %d packages",
            peer_id,
            peer.window_invalid,
            peer.window_good + peer.window_invalid,
        )
        peer.window_good = peer.window_invalid = 0
        self._wake.set()  # write the counts soon
        return True

    async def block(
        self,
        *,
        peer_id: str | None = None,
        address: str | None = None,
        reason: str,
        duration: float | None = None,
    ) -> None:
        """
        Block a peer id, an IP address, or both, and write it down at once.

        A block that already lasts longer is kept as it is.

        Args:
            peer_id: The peer id to block.
            address: The IP address to block, as the drivers report it (``socket.host``).
            reason: Why, for the record.
            duration: Seconds; by default the policy's ``block_duration``.

        Raises:
            RuntimeError: If the store is closed.
            ValueError: If neither ``peer_id`` nor ``address`` is given, or ``duration``
                isn't positive.

        """
        self._check_open()
        if peer_id is None and address is None:
            raise ValueError("block() needs a peer_id, an address or both")
        if duration is None:
            duration = self._policy.block_duration
        elif not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"duration must be a positive number of seconds, not {duration}")
        until = self._clock() + duration
        for kind, key in ((_PEER, peer_id), (_ADDRESS, address)):
            if key is None:
                continue
            table = self._blocks[kind]
            current = table.get(key)
            if current is None or current.until < until:
                table[key] = _Block(until, reason)
                self._dirty_blocks.add((kind, key))
        logger.info(
            "= blocked %s for %g s: %s",
            " and ".join(x for x in (peer_id, address) if x is not None),
            duration,
            reason,
        )
        await self._save()

    def peer_id_of(self, url: str) -> str | None:
        """The peer id last met at ``url``, if the store knows one. SYNC, a dict lookup."""
        entry = self._by_url.get(url)
        return entry.peer.peer_id if entry is not None else None

    def verified_peer_id(self, url: str) -> str | None:
        """The peer id that proved itself when we dialled ``url``, if we ever connected
        there (not one a peer only announced). SYNC, a dict lookup."""
        entry = self._by_url.get(url)
        if entry is None or entry.last_connected is None:
            return None
        peer_id = entry.peer.peer_id
        return None if peer_id is None or peer_id.startswith("address:") else peer_id

    def is_blocked(self, *, peer_id: str | None = None, address: str | None = None) -> bool:
        """
        Whether ``peer_id`` or ``address`` is blocked now. Costs a dict lookup or two.

        Args:
            peer_id: A peer id.
            address: An IP address, as the drivers report it.

        """
        if peer_id is not None:
            block = self._blocked_ids.get(peer_id)
            if block is not None and block.until > self._clock():
                return True
        if address is not None:
            block = self._blocked_addresses.get(address)
            if block is not None and block.until > self._clock():
                return True
        return False

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
        return list(itertools.islice(self._ranked(exclude_urls, exclude_ids, False), limit))

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
        ranked = self._ranked(exclude_urls, exclude_ids, False, anchors=True)
        return list(itertools.islice(ranked, limit))

    def is_anchor(self, peer_id: str) -> bool:
        """
        Whether a connected peer anchors us: a bootstrap peer, or one we had connected
        to successfully before this run. SYNC, a dict lookup.
        """
        peer = self._by_id.get(peer_id)
        return peer is not None and (
            peer.source is PeerSource.BOOTSTRAP or peer.key in self._known_before
        )

    async def good_urls(
        self,
        limit: int = 100,
        *,
        exclude_urls: Collection[str] = (),
        exclude_ids: Collection[str] = (),
    ) -> list[str]:
        """
        URLs we believe good, to share with other peers: like :meth:`candidates`, but
        only peers we connected to successfully at least once, and not URLs that failed
        3 times in a row since.

        Args:
            limit: Most URLs returned (100).
            exclude_urls: URLs not to return (e.g. the asker's own).
            exclude_ids: Peers not to return (e.g. the asker).

        """
        return list(itertools.islice(self._ranked(exclude_urls, exclude_ids, True), limit))

    async def peers(self) -> list[PeerRecord]:
        """Every peer the store knows, best score first, then most recently seen."""
        now = self._clock()
        records = []
        for peer in self._peers.values():
            block = self._blocked_ids.get(peer.peer_id) if peer.peer_id is not None else None
            records.append(
                PeerRecord(
                    peer_id=peer.peer_id,
                    urls=tuple(entry.url for entry in sorted(peer.urls.values(), key=_url_age)),
                    source=peer.source,
                    address=peer.address,
                    first_seen=peer.first_seen,
                    last_seen=peer.last_seen,
                    last_connected=peer.last_connected,
                    successes=peer.successes,
                    failures=peer.failures,
                    good_packages=peer.good_packages,
                    invalid_packages=peer.invalid_packages,
                    blocked_until=block.until if block is not None and block.until > now else None,
                )
            )
        records.sort(key=lambda record: (-record.score, -record.last_seen))
        return records

    # In-memory bookkeeping.

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the peer store is closed")

    def _new_peer(self, peer_id: str | None, source: PeerSource, now: float) -> _Peer:
        peer = _Peer(secrets.token_hex(8), peer_id, source, now, now)
        self._peers[peer.key] = peer
        if peer_id is not None:
            self._by_id[peer_id] = peer
        self._dirty_peers.add(peer.key)
        return peer

    def _attach(self, url: str, peer: _Peer, now: float) -> _Url:
        if len(peer.urls) >= MAX_URLS_PER_PEER:
            # A peer announcing ever new URLs must not grow the store: forget its oldest.
            oldest = min(peer.urls.values(), key=_url_age)
            del peer.urls[oldest.url]
            del self._by_url[oldest.url]
            self._dirty_urls.add(oldest.url)
        entry = _Url(url, peer, now)
        peer.urls[url] = entry
        self._by_url[url] = entry
        self._dirty_urls.add(url)
        return entry

    def _claim(self, url: str, peer_id: str, now: float) -> _Url:
        """Link ``url`` to ``peer_id``, which answered there."""
        owner = self._by_id.get(peer_id)
        entry = self._by_url.get(url)
        if entry is None:
            # A URL nobody gave us: it must come from the configuration.
            if owner is None:
                owner = self._new_peer(peer_id, PeerSource.BOOTSTRAP, now)
            return self._attach(url, owner, now)
        current = entry.peer
        if current.peer_id == peer_id:
            return entry
        if current.peer_id is None:
            if owner is None:
                current.peer_id = peer_id
                self._by_id[peer_id] = current
                self._dirty_peers.add(current.key)
            else:
                self._merge(owner, current)
            return entry
        # Another key answers at this URL now (the host changed hands, or its key).
        if owner is None:
            owner = self._new_peer(peer_id, current.source, now)
        del current.urls[url]
        entry.peer = owner
        owner.urls[url] = entry
        self._dirty_urls.add(url)
        return entry

    def _merge(self, keeper: _Peer, other: _Peer) -> None:
        """
        Fold ``other`` into ``keeper``: a record of the same peer, either one without
        id that turned out to be it, or the stored copy of it (see _absorb).
        """
        keeper.successes += other.successes
        keeper.failures += other.failures
        keeper.good_packages += other.good_packages
        keeper.invalid_packages += other.invalid_packages
        keeper.window_good += other.window_good
        keeper.window_invalid += other.window_invalid
        keeper.first_seen = min(keeper.first_seen, other.first_seen)
        keeper.last_seen = max(keeper.last_seen, other.last_seen)
        if other.last_connected is not None:
            keeper.last_connected = max(keeper.last_connected or 0.0, other.last_connected)
        if keeper.address is None:
            keeper.address = other.address
        if other.source is PeerSource.BOOTSTRAP:
            keeper.source = PeerSource.BOOTSTRAP
        for url, entry in other.urls.items():
            self._dirty_urls.add(url)
            known = self._by_url.get(url)
            if known is not None and known is not entry:
                continue  # what memory knows of this URL wins
            entry.peer = keeper
            keeper.urls[url] = entry
            self._by_url[url] = entry
        other.urls = {}
        if self._peers.get(other.key) is other:
            del self._peers[other.key]
        if other.peer_id is not None and self._by_id.get(other.peer_id) is other:
            del self._by_id[other.peer_id]
        self._dirty_peers.add(other.key)  # no longer in memory: deleted at the next flush
        self._dirty_peers.add(keeper.key)

    def _evict(self) -> None:
        """Forget the least useful peers past ``max_peers``."""
        if self._max_peers is None or len(self._peers) <= self._max_peers:
            return
        excess = len(self._peers) - self._max_peers
        for peer in heapq.nsmallest(excess, self._peers.values(), key=_eviction_rank):
            del self._peers[peer.key]
            if peer.peer_id is not None:
                del self._by_id[peer.peer_id]
            for url in peer.urls:
                del self._by_url[url]
                self._dirty_urls.add(url)
            self._dirty_peers.add(peer.key)
        logger.debug("= peer store full: forgot %d peers", excess)

    def _prune(self) -> None:
        now = self._clock()
        for kind, table in self._blocks.items():
            expired = [key for key, block in table.items() if block.until <= now]
            for key in expired:
                del table[key]
                self._dirty_blocks.add((kind, key))

    def _ranked(
        self,
        exclude_urls: Collection[str],
        exclude_ids: Collection[str],
        good: bool,
        *,
        anchors: bool = False,
    ) -> Iterator[str]:
        now = self._clock()
        exclude_urls = set(exclude_urls)
        exclude_ids = set(exclude_ids)
        blocked_addresses = {
            address for address, block in self._blocked_addresses.items() if block.until > now
        }
        peers = [
            p
            for p in self._peers.values()
            if p.urls
            and (p.successes > 0 or not good)
            and (not anchors or p.source is PeerSource.BOOTSTRAP or p.key in self._known_before)
        ]
        peers.sort(key=_dial_rank)
        for peer in peers:
            if peer.peer_id is not None:
                if peer.peer_id in exclude_ids:
                    continue
                block = self._blocked_ids.get(peer.peer_id)
                if block is not None and block.until > now:
                    continue
            urls = [
                entry
                for entry in peer.urls.values()
                if entry.url not in exclude_urls
                and not (good and entry.failures >= _MAX_GOOD_URL_FAILURES)
                and not (blocked_addresses and _host(entry.url) in blocked_addresses)
                and not _excluded_by_its_id(entry.url, exclude_urls, exclude_ids)
            ]
            if urls:
                yield min(urls, key=_url_rank).url

    # Persistence. The loop side: snapshots of what changed go to the worker thread.

    async def _save(self) -> None:
        """Write a change now, unless writes are failing: then the next flush retries."""
        if not self._failing:
            await self.flush()

    def _absorb(self, loaded: _Loaded) -> None:
        """
        Take in the rows read from the database. At open, memory is empty; when the
        database could only be opened later, rows of peers met meanwhile are merged.
        """
        peer_rows, url_rows, block_rows = loaded
        now = self._clock()
        stored: dict[str, _Peer] = {}
        for row in peer_rows:
            try:
                peer = _Peer(
                    key=str(row[0]),
                    peer_id=None if row[1] is None else str(row[1]),
                    source=PeerSource(row[2]),
                    address=None if row[3] is None else str(row[3]),
                    first_seen=float(row[4]),
                    last_seen=float(row[5]),
                    last_connected=None if row[6] is None else float(row[6]),
                    successes=int(row[7]),
                    failures=int(row[8]),
                    good_packages=int(row[9]),
                    invalid_packages=int(row[10]),
                    window_good=int(row[11]),
                    window_invalid=int(row[12]),
                )
            except (TypeError, ValueError):
                logger.warning("! dropped a malformed peer store row: %r", row)
                self._dirty_peers.add(str(row[0]))
                continue
            stored[peer.key] = peer
        for url, key, first_seen, last_connected, failures in url_rows:
            owner = stored.get(key)
            if owner is None:
                self._dirty_urls.add(url)  # an orphan: deleted at the next flush
                continue
            owner.urls[url] = _Url(url, owner, first_seen, last_connected, failures)
        for peer in stored.values():
            met_before = peer.successes > 0
            survivor = self._adopt(peer)
            if met_before:
                self._known_before.add(survivor.key)
        for kind, key, until, reason in block_rows:
            table = self._blocks.get(kind)
            if table is None or until <= now:
                self._dirty_blocks.add((kind, key))
                continue
            current = table.get(key)
            if current is None or current.until < until:
                table[key] = _Block(until, reason)
        self._evict()

    def _adopt(self, peer: _Peer) -> _Peer:
        """Take in one stored peer (with its URLs), merging it with what memory knows;
        return the record that holds it now."""
        target = self._by_id.get(peer.peer_id) if peer.peer_id is not None else None
        if target is None:
            for url in peer.urls:
                known = self._by_url.get(url)
                if known is not None and known.peer.peer_id in (None, peer.peer_id):
                    target = known.peer
                    break
        if target is None:
            self._peers[peer.key] = peer
            if peer.peer_id is not None:
                self._by_id[peer.peer_id] = peer
            for url, entry in list(peer.urls.items()):
                if url in self._by_url:
                    # Memory knows it as another peer's: memory wins.
                    del peer.urls[url]
                    self._dirty_urls.add(url)
                else:
                    self._by_url[url] = entry
            return peer
        if target.peer_id is None and peer.peer_id is not None:
            target.peer_id = peer.peer_id
            self._by_id[peer.peer_id] = target
        self._merge(target, peer)
        return target

    def _take_batch(self) -> _Batch | None:
        if not (self._dirty_peers or self._dirty_urls or self._dirty_blocks):
            return None
        batch = _Batch(self._dirty_peers, self._dirty_urls, self._dirty_blocks)
        self._dirty_peers, self._dirty_urls, self._dirty_blocks = set(), set(), set()
        for key in batch.peer_keys:
            peer = self._peers.get(key)
            if peer is None:
                batch.peer_deletes.append((key,))
            else:
                batch.peers.append(
                    (
                        peer.key,
                        peer.peer_id,
                        peer.source.value,
                        peer.address,
                        peer.first_seen,
                        peer.last_seen,
                        peer.last_connected,
                        peer.successes,
                        peer.failures,
                        peer.good_packages,
                        peer.invalid_packages,
                        peer.window_good,
                        peer.window_invalid,
                    )
                )
        for url in batch.url_keys:
            entry = self._by_url.get(url)
            if entry is None:
                batch.url_deletes.append((url,))
            else:
                batch.urls.append(
                    (url, entry.peer.key, entry.first_seen, entry.last_connected, entry.failures)
                )
        for kind, key in batch.block_keys:
            block = self._blocks.get(kind, {}).get(key)
            if block is None:
                batch.block_deletes.append((kind, key))
            else:
                batch.blocks.append((kind, key, block.until, block.reason))
        return batch

    def _discard_changes(self) -> None:
        self._dirty_peers.clear()
        self._dirty_urls.clear()
        self._dirty_blocks.clear()

    def _restore(self, batch: _Batch) -> None:
        self._dirty_peers |= batch.peer_keys
        self._dirty_urls |= batch.url_keys
        self._dirty_blocks |= batch.block_keys

    def _unsaved(self) -> int:
        return len(self._dirty_peers) + len(self._dirty_urls) + len(self._dirty_blocks)
