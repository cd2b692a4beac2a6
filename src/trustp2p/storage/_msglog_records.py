"""
The message log's records: the messages as they travel and as the log keeps them, the
indexes it keeps them in (per origin and per topic), and the schema of
``gossip.sqlite`` with its SQLite side (:class:`MessageDatabase`), which runs on the
log's worker thread only.

Private to :mod:`trustp2p.storage`: users see :class:`LoggedMessage` through
:mod:`trustp2p.storage.msglog`.

"""

from __future__ import annotations

__all__ = [
    "Batch",
    "Entry",
    "Loaded",
    "LoggedMessage",
    "MessageDatabase",
    "Origin",
    "Seqs",
    "Topic",
    "entry_position",
    "take",
]

import bisect
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ..protocol.jsontext import text_size
from ._msglog_shares import LOADED, Loads, Shares
from .writebehind import Database

# The log's messages read as if they came from the log's module.
logger = logging.getLogger("trustp2p.storage.msglog")

_WAL_SIZE_LIMIT = 4 * 1024 * 1024
"""Bytes the WAL file is cut back to after a checkpoint: a big batch grows it."""

_COMPACT_AFTER = 64
"""Removed items at the head of a :class:`Seqs` or :class:`Origin` list before it is
compacted (then only once they are half of it), so that dropping the oldest stays O(1)
amortised."""

# At open, a topic's rows are read up to this many times max_messages: more than it
# keeps, so that its rule picks which (the limit may be lower than in the last run), but
# bounded (a log written with no limit may hold any number).
_LOAD_FACTOR = 4

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema. ``position`` numbers messages in the order they were logged,
    # which is the order they are dropped in (per topic). ``received`` is this node's
    # clock when it logged the message.
    (
        """CREATE TABLE messages (
            position INTEGER PRIMARY KEY,
            topic TEXT NOT NULL,
            origin TEXT NOT NULL,
            seq INTEGER NOT NULL,
            timestamp REAL NOT NULL,
            data TEXT NOT NULL,
            key TEXT NOT NULL,
            signature TEXT NOT NULL,
            id TEXT NOT NULL,
            received REAL NOT NULL
        )""",
        """CREATE TABLE delivered (
            origin TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            marked REAL NOT NULL
        )""",
        """CREATE TABLE sequences (
            origin TEXT PRIMARY KEY,
            last INTEGER NOT NULL
        )""",
    ),
    # 2: how often each delivered mark moved, which ranks them when there are too many
    # (a mark's seq, which its origin picks, can't: found in review).
    ("ALTER TABLE delivered ADD COLUMN moves INTEGER NOT NULL DEFAULT 1",),
    # 3: the source a message counts for (see _msglog_shares): without it, what a
    # restart read shared one source, and its history went oldest first (review).
    ("ALTER TABLE messages ADD COLUMN source TEXT NOT NULL DEFAULT ''",),
)

_MESSAGE_COLUMNS = (
    "position, topic, origin, seq, timestamp, data, key, signature, id, received, source"
)


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """
    One signed gossip message, exactly as it travels: relays never change these fields.

    The log stores them as given; checking the signature and the id is the caller's job.

    Attributes:
        topic: The topic it was published on.
        origin: The peer id of the node that published it.
        seq: The origin's sequence number, from 1; ``(origin, seq)`` identifies it.
        timestamp: The origin's wall-clock time when it published it, in seconds.
        data: The payload, as JSON text, verbatim.
        key: The origin's Ed25519 public key, base64.
        signature: The origin's signature, base64.
        id: The message id (a hash of origin, seq and payload).
        data_size: What :attr:`data` weighs in the log's bounds
            (:func:`~trustp2p.protocol.jsontext.text_size`), computed once.

    """

    topic: str
    origin: str
    seq: int
    timestamp: float
    data: str
    key: str
    signature: str
    id: str
    data_size: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_size", text_size(self.data))


# A kept message: the message, when it was received (this node's clock), its position.
Entry = tuple[LoggedMessage, float, int]

T = TypeVar("T")


class _Numbered(Generic[T]):
    """
    Items with distinct sequence numbers, in ascending order of them; a subclass says
    how an item gives its number (:meth:`seq`).

    Adding past the highest number and removing the lowest are O(1) (the usual case: an
    origin's messages arrive about in order, and the oldest are dropped first); other
    changes cost a bisection and a move of part of the list.

    None is the empty tuple, one item a tuple of one, more a list: a simulated node
    keeps two of these for each origin, most with one message (a list of one took 40
    bytes more than the tuple: 14 MiB of 1,000 nodes').
    """

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[T] | tuple[T, ...] = ()
        self._head = 0  # _items[:_head] were removed already

    @staticmethod
    def seq(item: T) -> int:
        """The sequence number of ``item``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._items) - self._head

    def _list(self) -> list[T]:
        """The items as a list, to change them."""
        items = self._items
        if isinstance(items, tuple):
            items = self._items = list(items)
        return items

    def add(self, item: T) -> None:
        """Add an item whose number isn't here yet."""
        items = self._items
        if not items:
            self._items = (item,)
        elif self.seq(item) > self.seq(items[-1]):
            self._list().append(item)
        else:
            bisect.insort(self._list(), item, lo=self._head, key=self.seq)

    def remove(self, seq: int) -> None:
        """Remove the item numbered ``seq``, which is here."""
        head = self._head
        if len(self._items) - head == 1:
            self._items, self._head = (), 0  # (the usual case: the only one)
            return
        items = self._list()
        if self.seq(items[head]) != seq:
            del items[bisect.bisect_left(items, seq, head, key=self.seq)]
            return
        items[head] = items[-1]  # let go of it now (the slots before the head aren't read)
        head += 1
        if head >= _COMPACT_AFTER and 2 * head >= len(items):
            del items[:head]
            head = 0
        self._head = head

    def get(self, seq: int) -> T | None:
        """The item numbered ``seq``, or None."""
        items = self._items
        if not items or seq > self.seq(items[-1]):
            return None  # the usual question: a new message
        i = self.index(seq)
        return items[i] if i < len(items) and self.seq(items[i]) == seq else None

    def first(self) -> int:
        return self.seq(self._items[self._head])

    def last(self) -> int:
        return self.seq(self._items[-1])

    def high(self) -> int:
        """The highest S such that every number from the first up to S is here."""
        items, head, seq = self._items, self._head, self.seq
        first, last = seq(items[head]), seq(items[-1])
        if last - first == len(items) - 1 - head:
            return last  # no gap: the usual case
        # The numbers are distinct and sorted, so seq(items[head + k]) - first == k
        # holds for k up to the first gap and never after it: bisect on k.
        low, high = 0, len(items) - 1 - head  # holds at low, not at high
        while high - low > 1:
            middle = (low + high) // 2
            if seq(items[head + middle]) - first == middle:
                low = middle
            else:
                high = middle
        return first + low

    def index(self, seq: int) -> int:
        """Where the first item numbered >= ``seq`` is in :meth:`values`."""
        return bisect.bisect_left(self._items, seq, self._head, key=self.seq)

    def values(self) -> Sequence[T]:
        """The underlying sequence; valid from ``index(...)`` on, until the next change."""
        return self._items


class Seqs(_Numbered[int]):
    """Distinct sequence numbers in ascending order, an origin's in a topic, and the
    source its messages there count for (see :class:`~._msglog_shares.Shares`)."""

    __slots__ = ("source",)

    def __init__(self, source: str = LOADED) -> None:
        super().__init__()
        self.source = source

    @staticmethod
    def seq(item: int) -> int:
        return item

    def high(self) -> int:
        # Without a call of seq() per item: peers ask each topic's marks every catch-up
        # round, an origin at a time (a tenth of a simulation's CPU went on them).
        items, head = self._items, self._head
        last = items[-1]
        if last - items[head] == len(items) - 1 - head:
            return last  # no gap: the usual case
        return super().high()


class Origin(_Numbered[Entry]):
    """
    An origin's kept messages, in all topics, in ``seq`` order: one list (a dict by
    ``seq`` beside it took 220 bytes more per origin, and a simulated node keeps about
    one message from each of hundreds of origins).
    """

    __slots__ = ()

    @staticmethod
    def seq(item: Entry) -> int:
        return item[0].seq


class Topic:
    """
    A topic's kept messages, in the order they were logged, and their numbers by origin.

    A message dropped before older ones (of the origin with the most messages) stays in
    ``entries`` until it reaches the front or the entries are compacted: its position
    is in ``dropped`` meanwhile. ``len()`` counts the rest. ``weight`` is the payload
    (:func:`~trustp2p.protocol.jsontext.text_size`) of the messages kept.

    ``shares`` has the messages by source, sub-source and origin, and ``loads`` the
    payload: what a full topic, or one holding too much payload, drops by. Both are
    None until first needed (:meth:`over_share`, :meth:`largest`, :meth:`heaviest`),
    then made in one pass from the origins kept, in the order they came, and kept up
    from then on. Their sources are admitted then (an origin's ``source`` is the one
    it came with until then), as :meth:`~._msglog_shares.Shares.admit` would have as
    they came, but for the sub-sources of origins no longer kept (expired, or moved
    by a claim), which count no more towards :data:`~._msglog_shares.MAX_NAMED`. Most
    topics never fill: a simulated node holding 100 messages, each by a path of its
    own, held about 4 levels and 3 dicts per message for nothing.
    """

    __slots__ = ("dropped", "entries", "loads", "name", "origins", "shares", "weight")

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: deque[Entry] = deque()
        self.origins: dict[str, Seqs] = {}
        self.dropped: set[int] = set()
        self.weight = 0
        self.shares: Shares | None = None  # whose messages a full topic drops
        self.loads: Loads | None = None  # whose a topic holding too much payload drops

    def add(self, entry: Entry, source: str = LOADED) -> int:
        """Keep ``entry``, the newest, delivered by ``source`` (an address group, and
        any sub-sources: see :func:`~._msglog_shares.source_nodes`); return how many
        are kept now."""
        entries = self.entries
        entries.append(entry)
        message = entry[0]
        origin = message.origin
        shares, size = self.shares, message.data_size
        seqs = self.origins.get(origin)
        if seqs is None:
            source = source if shares is None else shares.admit(source)
            seqs = self.origins[origin] = Seqs(source)
        seqs.add(message.seq)
        self.weight += size
        if shares is not None:
            shares.add(origin, seqs.source, len(seqs))
        if self.loads is not None:
            self.loads.add(origin, seqs.source, size)
        return len(entries) - len(self.dropped)

    def remove(self, origin: str, seq: int, weight: int) -> None:
        """Forget the number (and the ``weight``) of a message dropped (:meth:`oldest`
        or :meth:`drop`)."""
        seqs = self.origins[origin]
        size = len(seqs)
        if size > 1:
            seqs.remove(seq)
        else:
            del self.origins[origin]
        self.weight -= weight
        if self.shares is not None:
            self.shares.remove(origin, seqs.source, size - 1)
        if self.loads is not None:
            self.loads.remove(origin, seqs.source, weight, last=size == 1)

    def heaviest(self) -> tuple[str, int] | None:
        """
        What to drop to make the topic lighter: None for its oldest message, if its
        origin holds more than its share of the payload; else the origin holding the
        most of the source holding the most, and its lowest number (see
        :meth:`~._msglog_shares.Loads.heaviest`). Call it on a topic with messages.
        """
        oldest = self.oldest()
        assert oldest is not None  # a topic with messages
        origin = oldest[0].origin
        picked = self._weighed().heaviest(origin, self.origins[origin].source)
        return None if picked is None else (picked, self.origins[picked].first())

    def move(self, origin: str, source: str) -> None:
        """Count ``origin``'s messages here for ``source`` from now on."""
        seqs = self.origins[origin]
        if seqs.source != source:
            if self.shares is not None:
                self.shares.move(origin, seqs.source, source, len(seqs))
            if self.loads is not None:
                self.loads.move(origin, seqs.source, source)
            seqs.source = source

    def over_share(self, origin: str, max_messages: int) -> bool:
        """Whether ``origin`` has more than its share of ``max_messages`` (see
        :meth:`~._msglog_shares.Shares.over_share`)."""
        seqs = self.origins[origin]
        return self._shared().over_share(seqs.source, len(seqs), max_messages)

    def largest(self) -> tuple[str, int]:
        """The origin with the most messages of the source with the most, and its
        lowest number."""
        shares = self._shared()
        if not shares.full:
            shares.fill((o, seqs.source, len(seqs)) for o, seqs in self.origins.items())
        origin = shares.largest()
        return origin, self.origins[origin].first()

    def _shared(self) -> Shares:
        """The shares, made from the origins kept if not yet (see the class)."""
        shares = self.shares
        if shares is None:
            shares = self.shares = Shares()
            for origin, seqs in self.origins.items():  # in the order they came
                seqs.source = shares.admit(seqs.source)
                shares.take(origin, seqs.source, len(seqs))
        return shares

    def _weighed(self) -> Loads:
        """The loads, made from the messages kept if not yet (see the class)."""
        loads = self.loads
        if loads is None:
            self._shared()  # the sources admitted
            payload = dict.fromkeys(self.origins, 0)
            for entry in self.kept():
                payload[entry[0].origin] += entry[0].data_size
            loads = self.loads = Loads()
            for origin, seqs in self.origins.items():
                loads.add(origin, seqs.source, payload[origin])
        return loads

    def __len__(self) -> int:
        return len(self.entries) - len(self.dropped)

    def oldest(self) -> Entry | None:
        """The oldest message kept (None if none), letting go of dropped ones before it."""
        entries, dropped = self.entries, self.dropped
        while entries:
            entry = entries[0]
            if entry[2] not in dropped:
                return entry
            entries.popleft()
            dropped.remove(entry[2])
        return None

    def drop(self, entry: Entry) -> None:
        """Count ``entry`` out, wherever it is; compact once half the entries are out."""
        dropped = self.dropped
        dropped.add(entry[2])
        if len(dropped) >= _COMPACT_AFTER and 2 * len(dropped) >= len(self.entries):
            self.entries = deque(e for e in self.entries if e[2] not in dropped)
            dropped.clear()

    def kept(self) -> Iterator[Entry]:
        """The messages kept, oldest first."""
        dropped = self.dropped
        return (entry for entry in self.entries if entry[2] not in dropped)


def take(
    messages: Iterable[LoggedMessage], last: int, limit: int, max_bytes: int
) -> list[LoggedMessage]:
    """
    The first of ``messages`` (in ``seq`` order) up to ``seq`` ``last``: at most
    ``limit`` of them and ``max_bytes`` of payload (``text_size``), the first always,
    so that a range always moves on.
    """
    found: list[LoggedMessage] = []
    size = 0
    for message in messages:
        if message.seq > last or len(found) >= limit:
            break
        size += message.data_size
        if size > max_bytes and found:
            break
        found.append(message)
    return found


def entry_position(entry: Entry) -> int:
    """An entry's position in the log: the order it was logged in."""
    return entry[2]


@dataclass(slots=True)
class Batch:
    """One flush: what it writes, taken from the log when the flush started."""

    inserts: dict[int, Entry]
    deletes: list[int]
    delivered_keys: set[str]
    sequence_keys: set[str]
    sources: dict[int, str] = field(default_factory=dict)  # by position, if not LOADED
    delivered: list[tuple[str, int, float, int]] = field(default_factory=list)
    delivered_deletes: list[tuple[str]] = field(default_factory=list)
    sequences: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class Loaded:
    """What open() read: kept messages in position order, and the other tables."""

    entries: list[Entry]
    deletes: list[int]  # positions of the rows past the limits, or malformed
    last_position: int  # the highest in the table, loaded or not
    delivered: list[tuple[str, int, float, int]]  # origin, seq, marked, moves
    sequences: list[tuple[str, int]]
    sources: dict[int, str] = field(default_factory=dict)  # by position, if not LOADED


class MessageDatabase(Database[Batch, Loaded]):
    """The SQLite side of the log. Its methods run on the log's worker thread only."""

    name = "message log"
    logger = logger
    migrations = _MIGRATIONS
    # A big batch grows the WAL; cut it back after each checkpoint.
    pragmas = (f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}",)

    def __init__(self, path: Path, max_messages: int, max_age: float, max_bytes: int) -> None:
        super().__init__(path)
        self._max_messages = max_messages
        self._max_age = max_age
        self._max_bytes = max_bytes

    def _read(self, conn: sqlite3.Connection, now: float) -> Loaded:
        """
        Read the messages received at most ``max_age`` seconds before ``now``, the last
        ``_LOAD_FACTOR`` times ``max_messages`` of each topic and ``max_bytes`` of
        payload in all (the log then keeps what its limits allow by its rules: a limit
        lowered since the last run keeps each origin's share), and the other tables.
        """
        cutoff = now - self._max_age
        max_messages = self._max_messages * _LOAD_FACTOR
        max_bytes, weight = self._max_bytes * _LOAD_FACTOR, 0
        (last_position,) = conn.execute("SELECT max(position) FROM messages").fetchone()
        loaded = Loaded([], [], last_position or 0, [], [])
        # Newest first, to count each topic's messages up to the limit. (A window
        # function would do it in SQL, but is 3 to 5 times slower than this scan.)
        counts: dict[str, int] = {}
        query = f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY position DESC"
        for row in conn.execute(query):
            try:
                message = LoggedMessage(
                    topic=str(row[1]),
                    origin=str(row[2]),
                    seq=int(row[3]),
                    timestamp=float(row[4]),
                    data=str(row[5]),
                    key=str(row[6]),
                    signature=str(row[7]),
                    id=str(row[8]),
                )
                received, source = float(row[9]), str(row[10])
            except (TypeError, ValueError):
                logger.warning("! dropped malformed message log row %d", row[0])
                loaded.deletes.append(row[0])
                continue
            count, size = counts.get(message.topic, 0), message.data_size
            if count >= max_messages or received < cutoff or weight + size > max_bytes:
                loaded.deletes.append(row[0])
                continue
            counts[message.topic] = count + 1
            weight += size
            loaded.entries.append((message, received, row[0]))
            if source:
                loaded.sources[row[0]] = source
        loaded.entries.reverse()
        marks = conn.execute("SELECT origin, seq, marked, moves FROM delivered")
        for origin, seq, marked, moves in marks:
            try:
                loaded.delivered.append((str(origin), int(seq), float(marked), int(moves)))
            except (TypeError, ValueError, OverflowError):
                logger.warning("! dropped a malformed delivered mark: %r", (origin, seq))
        for origin, last in conn.execute("SELECT origin, last FROM sequences"):
            try:
                loaded.sequences.append((str(origin), int(last)))
            except (TypeError, ValueError):
                logger.warning("! dropped a malformed sequence counter: %r", (origin, last))
        return loaded

    def _write(self, conn: sqlite3.Connection, batch: Batch) -> None:
        # Deletes first, so that the inserts reuse the freed pages. A position is
        # never in both: a message dropped while its insert is in flight gets a
        # delete, and a failed insert is retried only for the messages still kept.
        conn.executemany("DELETE FROM messages WHERE position = ?", ((p,) for p in batch.deletes))
        # Rows are built here, on the worker thread: messages are immutable, and
        # the loop doesn't touch a batch while it is written.
        conn.executemany(
            f"INSERT OR REPLACE INTO messages ({_MESSAGE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    position,
                    m.topic,
                    m.origin,
                    m.seq,
                    m.timestamp,
                    m.data,
                    m.key,
                    m.signature,
                    m.id,
                    received,
                    batch.sources.get(position, LOADED),
                )
                for m, received, position in batch.inserts.values()
            ),
        )
        conn.executemany("DELETE FROM delivered WHERE origin = ?", batch.delivered_deletes)
        conn.executemany(
            "INSERT OR REPLACE INTO delivered (origin, seq, marked, moves) VALUES (?, ?, ?, ?)",
            batch.delivered,
        )
        conn.executemany(
            "INSERT OR REPLACE INTO sequences (origin, last) VALUES (?, ?)", batch.sequences
        )
