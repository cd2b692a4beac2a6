"""
The peer store's records: what it keeps per peer and per URL in memory, the schema of
``peers.sqlite``, and the rows that go between the two. The SQLite side
(:class:`PeerDatabase`) runs on the store's worker thread only.

Private to :mod:`trustp2p.storage`: users see :class:`PeerSource` and :class:`PeerRecord`
through :mod:`trustp2p.storage.peerstore`.

"""

from __future__ import annotations

__all__ = [
    "ADDRESS",
    "PEER",
    "Batch",
    "Loaded",
    "Peer",
    "PeerDatabase",
    "PeerRecord",
    "PeerSource",
    "Url",
    "peer_from_row",
    "peer_row",
    "url_age",
    "url_row",
]

import enum
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..protocol.scoring import peer_score
from .writebehind import Database

# The store's messages read as if they came from the store's module.
logger = logging.getLogger("trustp2p.storage.peerstore")

# Block kinds, as stored in the ``blocks`` table.
PEER = "peer"
ADDRESS = "address"

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
    # 2: when the last success was counted: SUCCESS_SPACING runs from it (review39:
    # taken from last_connected at each start, a node restarted often credited none).
    ("ALTER TABLE peers ADD COLUMN counted_at REAL",),
    # 3: before 2, the spacing ran from last_connected (review41: left empty, the first
    # connection after the upgrade counted again within the hour). Its own step: stores
    # at 2 already get it too (review42).
    ("UPDATE peers SET counted_at = last_connected WHERE counted_at IS NULL AND successes > 0",),
    # 4: who told us a URL (attacker39 E1: see Url.teller), so that a restart ranks the
    # URLs on disk by their teller too. Rows from before have none.
    ("ALTER TABLE urls ADD COLUMN teller TEXT",),
)

_PEER_COLUMNS = (
    "key, peer_id, source, address, first_seen, last_seen, last_connected, successes, "
    "failures, good_packages, invalid_packages, window_good, window_invalid, counted_at"
)
_URL_COLUMNS = "url, peer, first_seen, last_connected, failures, teller"
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
class PeerRecord:
    """
    What the store knows about one peer, as :meth:`PeerStore.peers` lists it.

    Times are wall-clock Unix times in seconds.

    Attributes:
        peer_id: The peer's key: its id, or ``address:<ip>`` for a peer known only by
            its address (:mod:`trustp2p.protocol.peers`); None until we connected to one
            of its URLs (or it announced them after proving its id).
        urls: The URLs it can be dialled at, oldest first (then in alphabetical order);
            empty for a peer that only ever connected to us.
        source: Where we first heard of it; bootstrap wins over the others.
        address: The IP address of its last connection, if any.
        first_seen: When the store first heard of it.
        last_seen: When we last connected to it or counted a package of it (else
            ``first_seen``).
        last_connected: When we last connected to it successfully, if ever.
        successes: Successful connections we made, and hours they stayed open (one an
            hour at most).
        failures: Outages: failed dials, the first of each row.
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
        """How much we like this peer; higher is better, 0 for a peer never tried
        (:func:`~trustp2p.protocol.scoring.peer_score`)."""
        return peer_score(self.successes, self.failures, self.invalid_packages)


@dataclass(slots=True, eq=False)
class Url:
    """A URL to dial, and how dialling it went."""

    url: str
    peer: Peer
    first_seen: float
    last_connected: float | None = None
    failures: int = 0  # since it last worked
    # Its host's network group, worked out once (see _peer_eviction): "" until then,
    # None for none (loopback).
    group: str | None = ""
    # Who told us: the network group of the first server whose get_peers answer named
    # it, "+" before it once a server of another group named it too; None: no server's
    # answer did (or not since the store kept tellers), or a local one (see
    # _peer_eviction). One text per answer, shared.
    teller: str | None = None


@dataclass(slots=True, eq=False)
class Peer:
    """One peer, as memory knows it."""

    key: str  # the row's key: random, kept across merges
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
    # Package counts the block policy looks at: since the policy was last crossed.
    window_good: int = 0
    window_invalid: int = 0
    urls: dict[str, Url] = field(default_factory=dict)
    # When the last success was counted: SUCCESS_SPACING runs from it (review38).
    counted_at: float | None = None

    def score(self) -> float:
        return peer_score(self.successes, self.failures, self.invalid_packages)


def url_age(entry: Url) -> tuple[float, str]:
    """Sort key: oldest first, then in alphabetical order."""
    return (entry.first_seen, entry.url)


def url_row(entry: Url) -> tuple[object, ...]:
    """The ``urls`` row of ``entry``, in the order of the table's columns."""
    return (
        entry.url,
        entry.peer.key,
        entry.first_seen,
        entry.last_connected,
        entry.failures,
        entry.teller,
    )


def peer_row(peer: Peer) -> tuple[object, ...]:
    """The ``peers`` row of ``peer``, in the order of the table's columns."""
    return (
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
        peer.counted_at,
    )


def peer_from_row(row: Any) -> Peer:
    """
    The peer of a ``peers`` row, without its URLs.

    Raises:
        TypeError: If a column holds a value of the wrong type.
        ValueError: If a column holds a value of the wrong type.

    """
    return Peer(
        key=str(row[0]),
        peer_id=None if row[1] is None else str(row[1]),
        source=PeerSource(row[2]),
        address=None if row[3] is None else str(row[3]),
        first_seen=float(row[4]),
        last_seen=float(row[5]),
        last_connected=None if row[6] is None else float(row[6]),
        counted_at=None if row[13] is None else float(row[13]),
        successes=int(row[7]),
        failures=int(row[8]),
        good_packages=int(row[9]),
        invalid_packages=int(row[10]),
        window_good=int(row[11]),
        window_invalid=int(row[12]),
    )


@dataclass(slots=True)
class Batch:
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


Loaded = tuple[list[Any], list[Any], list[Any]]
"""Rows of the peers, urls and blocks tables, as read at open."""


class PeerDatabase(Database[Batch, Loaded]):
    """The SQLite side of the store. Its methods run on the store's worker thread only."""

    name = "peer store"
    logger = logger
    migrations = _MIGRATIONS
    # A small database written every few seconds: its WAL is checkpointed at 512 KiB
    # and cut back to 1 MiB at most (SQLite's defaults, 1,000 pages and no limit, kept
    # 4 MB of WAL beside a 36 KB store; found by a tester).
    pragmas = ("PRAGMA wal_autocheckpoint = 128", f"PRAGMA journal_size_limit = {2**20}")

    def _read(self, conn: sqlite3.Connection, now: float) -> Loaded:
        return (
            conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers").fetchall(),
            conn.execute(f"SELECT {_URL_COLUMNS} FROM urls").fetchall(),
            conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM blocks").fetchall(),
        )

    def _write(self, conn: sqlite3.Connection, batch: Batch) -> None:
        conn.executemany("DELETE FROM peers WHERE key = ?", batch.peer_deletes)
        conn.executemany(
            f"INSERT OR REPLACE INTO peers ({_PEER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch.peers,
        )
        conn.executemany("DELETE FROM urls WHERE url = ?", batch.url_deletes)
        conn.executemany(
            f"INSERT OR REPLACE INTO urls ({_URL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            batch.urls,
        )
        conn.executemany("DELETE FROM blocks WHERE kind = ? AND key = ?", batch.block_deletes)
        conn.executemany(
            f"INSERT OR REPLACE INTO blocks ({_BLOCK_COLUMNS}) VALUES (?, ?, ?, ?)",
            batch.blocks,
        )
