"""
The message log: the recent gossip messages a node keeps, per topic, for catch-up.

It lives in ``<cwd>/data/gossip.sqlite`` (:data:`LOG_PATH`), SQLite in WAL mode with
``synchronous=NORMAL``, like the peer store: a committed write survives ``kill -9``; only
a power cut may lose the last ones. The schema is versioned with ``PRAGMA user_version``.

Besides the messages, the log keeps what the node delivered to its threads (per origin,
the highest sequence number delivered), so that a restarted node delivers each message
exactly once, and the node's own sequence counter, so that a restart continues it.

**Memory first.** The kept messages are loaded once at :meth:`MessageLog.open`; every
call made per message (:meth:`~MessageLog.add`, :meth:`~MessageLog.has`,
:meth:`~MessageLog.high_water`, :meth:`~MessageLog.range`, :meth:`~MessageLog.delivered`,
:meth:`~MessageLog.mark_delivered`, :meth:`~MessageLog.next_seq`) is a dict or list
operation that never touches the disk. Changes are written behind, in one transaction
every ``flush_interval`` seconds, sooner when many messages are waiting or someone waits
in :meth:`~MessageLog.written`, and at :meth:`~MessageLog.close`.

**Bounded.** Each topic keeps at most ``max_messages`` messages, the oldest received
dropped first unless an origin holds more than its share (see :meth:`~MessageLog.add`),
and none received more than ``max_age`` seconds ago; all topics keep ``max_bytes`` of
payload at most, the topic holding the most giving way. *Received* is the
time this node logged a message (its ``clock``), not the origin's timestamp: the origin's
clock may be wrong, and a message that arrives late (after a partition) should still be
kept for a while for the nodes that missed it too. The count and the payload are enforced at
each :meth:`~MessageLog.add` (and at open: a database from a run with higher limits is
not read whole); the age on each add (for that topic) and at each flush (for all
topics). What is dropped from memory is deleted from the disk at the next flush.

**Off the event loop.** ``sqlite3`` runs only on one worker thread owned by the log (a
single-thread executor). Call the log's methods from the event loop thread that opened
it; they are not thread-safe.

**Faults are not fatal.** Nothing here raises because of the disk:

- a write that fails (disk full, file-size limit, I/O error) logs one WARNING; the log
  keeps running in memory, retries at each flush, logs INFO when writes work again, and
  writes everything still kept that changed meanwhile;
- a database that is not one (random bytes, a garbled header, a truncated file) is moved
  aside to ``gossip.sqlite.corrupt-<unix time>`` with a WARNING, and a new one is
  created; a garbage WAL or shared-memory file is ignored by SQLite itself;
- a database that can't be opened at all runs the log in memory, and it is opened (and
  merged with what was logged meanwhile) as soon as it can be.

"""

from __future__ import annotations

__all__ = [
    "LOADED",
    "LOG_FILE",
    "LOG_PATH",
    "MARK_GRACE",
    "RANGE_LIMIT",
    "RANGE_MAX_BYTES",
    "SOURCE_SEPARATOR",
    "SUB_LEVELS",
    "LoggedMessage",
    "MessageLog",
]

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import DATA_DIR
from ._msglog_kept import KeptMessages
from ._msglog_marks import forget_marks
from ._msglog_records import (
    Batch,
    Loaded,
    LoggedMessage,
    MessageDatabase,
    entry_position,
)
from ._msglog_shares import LOADED, SOURCE_SEPARATOR, SUB_LEVELS
from .memory import MemoryShelf
from .writebehind import WriteBehind

logger = logging.getLogger(__name__)

LOG_FILE = "gossip.sqlite"
"""The message log's file name, in :data:`~trustp2p.storage.DATA_DIR`."""

LOG_PATH = Path(DATA_DIR) / LOG_FILE
"""Where the message log lives, relative to the node's cwd."""

RANGE_LIMIT = 100
"""Most messages :meth:`MessageLog.range` returns by default."""

RANGE_MAX_BYTES = 512 * 1024
"""Most payload :meth:`MessageLog.range` returns by default, in characters of JSON text."""

# Write soon (rather than at the next periodic flush) once this many messages wait: it
# keeps transactions short and the loss on a crash small during a burst.
_WRITE_SOON = 1000

# Delivery marks of origins with no message kept: at most this many times max_messages,
# the least recently moved forgotten first.
_IDLE_MARKS_FACTOR = 10

MARK_GRACE = 60.0
"""Seconds a delivery mark that moved is kept whatever their count, so that
:attr:`MessageLog.forgotten_before` stays that far behind now: found in review, after a
flood of new origins the flood's own marks put it a second behind, and honest messages of
origins without a mark, a few seconds late, were dropped. A node verifies ~3,000 messages
a second: 180,000 marks more at most."""

_FORGOTTEN = ""  # forgotten_before's key (ms) among the counters: no stream key is empty


class MessageLog(WriteBehind[Batch, Loaded]):
    """
    The recent gossip messages of a node, per topic, with its delivery marks and its
    sequence counter.

    Make one with :meth:`open`, and :meth:`close` it when done. All methods must be
    called from the event loop thread that opened the log.

    """

    _name = "message log"
    _logger = logger
    _contents = "messages"
    _thread_name = "trustp2p-msglog"

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float],
        flush_interval: float,
        shelf: MemoryShelf | None = None,
        max_messages: int | None,
        max_age: float | None,
        max_bytes: int | None,
    ) -> None:
        # Use open(): it also reads the database and starts the flushes.
        self._max_bytes = sys.maxsize if max_bytes is None else max_bytes
        self._max_messages = sys.maxsize if max_messages is None else max_messages
        self._max_idle_marks = (
            sys.maxsize if max_messages is None else _IDLE_MARKS_FACTOR * max_messages
        )
        self._max_age = math.inf if max_age is None else max_age
        limits = (self._max_messages, self._max_age, self._max_bytes)
        db = None if path is None else MessageDatabase(path, *limits)
        super().__init__(db, clock=clock, flush_interval=flush_interval, shelf=shelf)
        self._messages = KeptMessages(self._max_messages, self._max_bytes)
        self._next_position = 1
        self._delivered: dict[str, int] = {}
        self._marked: dict[str, float] = {}  # when each delivered mark last moved
        self._moves: dict[str, int] = {}  # how often it moved (kept on disk), for _prune
        self._marks_pruned = -math.inf  # when _prune() last looked at every mark
        self._young_over = False  # too many marks then, all moved within MARK_GRACE
        self._sequences: dict[str, int] = {}
        # What changed since the last flush besides the messages (self._messages keeps
        # those): origins whose mark or counter changed (deleted if gone).
        self._dirty_delivered: set[str] = set()
        self._dirty_sequences: set[str] = set()

    @classmethod
    async def open(
        cls,
        path: Path | None,
        *,
        max_messages: int | None = 10_000,
        max_age: float | None = 86_400.0,
        max_bytes: int | None = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 1.0,
        shelf: MemoryShelf | None = None,
    ) -> MessageLog:
        """
        Open the log at ``path``, creating the file and its directory (mode 0700), and
        load the messages it keeps (within the limits), the delivery marks and the
        sequence counters.

        A corrupt file is moved aside and replaced; a file that can't be opened leaves
        the log in memory until it can be (see the module docstring). Neither raises.

        Args:
            path: The database file, usually ``cwd / LOG_PATH``; None keeps the log in
                memory only.
            max_messages: Most messages kept per topic (10 000); past it, the oldest
                received is dropped. It also bounds the delivery marks of origins with
                no message kept, to 10 times as many: the least recently moved ones are
                forgotten first. None: no limit.
            max_age: Seconds a message is kept after it was received (a day); older
                ones are dropped, and so are the delivery marks of origins that have no
                message left and no mark newer than this. None: no limit.
            max_bytes: Most payload kept in all topics (64 MiB), by ``text_size()``
                (in memory and in UTF-8); past it, the topic holding the most drops
                a message by its share rule (see :meth:`add`). None: no limit.
            clock: Wall-clock time in seconds; the time a message is received.
            flush_interval: Seconds between writes (and retries after a failed write);
                1000 waiting messages start a write sooner.
            shelf: With ``path`` None, where the log takes back what it held at its
                last close, and leaves what it holds at this one
                (:class:`~trustp2p.storage.memory.MemoryShelf`).

        Raises:
            ValueError: If a limit or ``flush_interval`` is out of range.

        """
        cls._check_flush_interval(flush_interval)
        for name, limit in (("max_messages", max_messages), ("max_bytes", max_bytes)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 or None, not {limit}")
        if max_age is not None and not (max_age > 0 and math.isfinite(max_age)):
            raise ValueError(f"max_age must be a positive number of seconds or None, not {max_age}")
        log = cls(
            None if path is None else Path(path),
            clock=clock,
            flush_interval=flush_interval,
            shelf=shelf,
            max_messages=max_messages,
            max_age=max_age,
            max_bytes=max_bytes,
        )
        await log._start()
        return log

    def add(self, message: LoggedMessage, source: str = LOADED) -> bool:
        """
        Log a message (in memory; it is written by the next flush). Cheap enough to call
        per message.

        The message is stored as given: verify it first. Past ``max_messages`` in its
        topic, one message is dropped, the topic's oldest or, if its origin is within
        its share, the lowest-numbered of the origin with the most of the source with
        the most (possibly this one). A topic is shared among the sources of its
        messages, then each source's share among its sub-sources, and the last
        sub-source's among its origins: origins are free keys,
        and one address's many origins would otherwise push out the history of
        everyone else's (an attacker's test). The topic's messages received more than
        ``max_age`` seconds ago are dropped too. Past
        ``max_bytes`` in all topics, the topic holding the most payload drops messages
        until under it: its oldest if its origin holds more than its share of the
        topic's payload, else the lowest-numbered of the origin holding the most (one
        bigger than ``max_bytes`` alone is kept by none).

        A message dropped from the log can be added again: True doesn't mean this node
        never saw the message; compare ``message.seq`` with :meth:`delivered` for that.

        Args:
            message: A verified message.
            source: Who delivered it: the node gives the address group of the peer it
                came from (:func:`~trustp2p.protocol.hosts.share_group`), its own
                messages one of their own; then, separated by
                :data:`SOURCE_SEPARATOR`, up to :data:`SUB_LEVELS` sub-sources, whose
                the relay that sent it said it is (its ``via``): the source's share is
                shared among them before its origins. An origin's messages in a topic
                count for the source of the first of them kept (or of a
                :meth:`claim`); it is stored with them.

        Returns:
            True if it was added; False if a message with its ``(origin, seq)`` is
            logged already (whatever its topic or payload).

        """
        received = self._clock()
        position = self._next_position
        entry = (message, received, position)
        topic = self._messages.insert(entry, source=source)
        if topic is None:
            return False
        self._next_position = position + 1
        cutoff = received - self._max_age
        if topic and topic.entries[0][1] < cutoff:  # kept or dropped: a look is enough, usually
            while (oldest := topic.oldest()) is not None and oldest[1] < cutoff:
                self._messages.drop(topic)
        if len(self._messages.pending) >= _WRITE_SOON and not self.failing:
            self._wake.set()  # (failing: the flush task's retries, no sooner: a tester)
        return True

    def claim(self, origin: str, topic: str, source: str) -> None:
        """
        Count ``origin``'s messages in ``topic`` for ``source`` from now on (see
        :meth:`add`): the node calls it when the origin's own connection delivers one
        of them, so that a peer that relayed them first, or served them to catch-up,
        doesn't hold them in its share (found in review: a flood's relay, a moment
        faster, took an honest origin's history with it). Nothing if none is kept.
        """
        kept = self._messages.topics.get(topic)
        if kept is not None and origin in kept.origins:
            # Not written again: the messages logged from now on carry it, and a restart
            # takes an origin's source from its newest row (an origin connected from two
            # addresses in turn would have rewritten all its rows at each turn).
            kept.move(origin, source)

    def has(self, origin: str, seq: int) -> bool:
        """Whether the message ``(origin, seq)`` is logged, in any topic."""
        logged = self._messages.origins.get(origin)
        return logged is not None and logged.get(seq) is not None

    def high_water(self, topic: str | None = None) -> dict[str, int]:
        """
        The contiguous high-water mark of each origin: the highest S such that every
        sequence number from the first one kept (:meth:`first_seq`) up to S is logged.

        Costs O(log n) per origin at most (O(1) for an origin without gaps).

        Args:
            topic: Only count this topic's messages (origins without any message in it
                are left out); None: all topics.

        Returns:
            ``{origin: S}`` for every origin with a message kept.

        """
        return self._messages.high_water(topic)

    def get(self, origin: str, seq: int) -> LoggedMessage | None:
        """The logged message ``(origin, seq)``, in any topic; None if it isn't."""
        logged = self._messages.origins.get(origin)
        entry = None if logged is None else logged.get(seq)
        return None if entry is None else entry[0]

    def first_seq(self, origin: str) -> int | None:
        """
        The lowest sequence number kept for ``origin`` (in any topic); the ones before
        it were dropped, or never received. None if nothing of it is kept.
        """
        logged = self._messages.origins.get(origin)
        return None if logged is None else logged.first()

    def last_seq(self, origin: str) -> int | None:
        """The highest sequence number kept for ``origin``; None if nothing is kept."""
        logged = self._messages.origins.get(origin)
        return None if logged is None else logged.last()

    def range(
        self,
        origin: str,
        first: int,
        last: int,
        *,
        limit: int = RANGE_LIMIT,
        max_bytes: int = RANGE_MAX_BYTES,
    ) -> list[LoggedMessage]:
        """
        The kept messages of ``origin`` with ``first <= seq <= last``, in ``seq`` order
        (in all topics), from memory. Missing numbers are skipped.

        Args:
            origin: The origin's peer id.
            first: The lowest sequence number wanted.
            last: The highest sequence number wanted.
            limit: Most messages returned (100).
            max_bytes: Most payload returned, each counted by
                :func:`~trustp2p.protocol.jsontext.text_size`, 512 KiB. The first message is
                returned even if it alone is bigger, so that a range always moves on.

        Returns:
            The messages, possibly fewer than asked for: ask again from the last seq
            returned + 1.

        """
        return self._messages.range(origin, first, last, limit, max_bytes)

    def pick(
        self,
        origin: str,
        seqs: Iterable[int],
        *,
        limit: int = RANGE_LIMIT,
        max_bytes: int = RANGE_MAX_BYTES,
    ) -> list[LoggedMessage]:
        """
        The kept messages of ``origin`` numbered ``seqs`` (ascending), as :meth:`range`
        returns them: missing numbers skipped, at most ``limit`` messages and
        ``max_bytes`` of payload (the first always).
        """
        return self._messages.pick(origin, seqs, limit, max_bytes)

    def logged_order(self, topic: str) -> Iterator[tuple[int, LoggedMessage]]:
        """
        The kept messages of ``topic``, each with its position: the log numbers messages
        in the order this node logged them (across restarts too), and lists them so.

        An origin's messages may be logged out of ``seq`` order (one fetched to fill a
        gap comes after those held behind it); sort them by ``seq`` for that. Don't
        change the log before the iteration ends.
        """
        kept = self._messages.topics.get(topic)
        return iter(()) if kept is None else ((entry[2], entry[0]) for entry in kept.kept())

    def delivered(self, origin: str) -> int:
        """The highest sequence number of ``origin`` delivered to this node's threads, or 0."""
        return self._delivered.get(origin, 0)

    def marked(self, origin: str) -> float | None:
        """When ``origin``'s delivery mark last moved (the log's clock), or None."""
        return self._marked.get(origin) if origin in self._delivered else None

    def mark_delivered(self, origin: str, seq: int) -> None:
        """
        Record that ``(origin, seq)`` was delivered to this node's threads (written by
        the next flush). A mark never goes down: a lower ``seq`` is ignored.

        A mark is forgotten (at a flush) once its origin has no message left in the log
        and the mark hasn't moved for ``max_age`` seconds, or when there are more than
        10 times ``max_messages`` such marks, so that the marks stay bounded too. Then the
        origin is one this node never heard of: check the origin's timestamp to refuse
        a message older than ``max_age``, or than :attr:`forgotten_before`.
        """
        if seq > self._delivered.get(origin, 0):
            self._delivered[origin] = seq
            self._marked[origin] = self._clock()
            self._moves[origin] = self._moves.get(origin, 0) + 1
            self._dirty_delivered.add(origin)

    @property
    def forgotten_before(self) -> float:
        """Wall-clock seconds: every mark forgotten so far had last moved by then (0.0:
        none was). A message of an origin without a mark, timestamped before it, may be
        one this node delivered: found by an attacker, who flooded 125,000 origins to
        push an honest origin's mark out, then replayed its messages, delivered again."""
        return self._sequences.get(_FORGOTTEN, 0) / 1000

    def next_seq(self, origin: str) -> int:
        """
        The next sequence number for a message this node publishes as ``origin``: one
        more than the last one returned, and recorded (written by the next flush).

        It also counts the numbers the log knows were used: a message of ``origin`` in
        the log, or a delivery mark. This covers a crash between returning a number and
        writing it, if a peer sends the message back before the next publish. To be
        sure a number is never used twice, ``await written()`` before sending the
        message, as ``publish()`` does (tester31 F1: a publisher killed within a second
        of sending, restarted, numbered its next messages as the last ones, and its peers
        dropped them).
        """
        last = self.last_used(origin) + 1
        self._sequences[origin] = last
        self._dirty_sequences.add(origin)
        return last

    def last_used(self, origin: str) -> int:
        """The highest number of ``origin`` the log knows was used (0 for none): one
        :meth:`next_seq` returned, a message kept, or a delivery mark."""
        last = max(self._sequences.get(origin, 0), self._delivered.get(origin, 0))
        logged = self._messages.origins.get(origin)
        return last if logged is None else max(last, logged.last())

    def seq_used(self, origin: str, seq: int) -> bool:
        """``origin``'s (a stream key's) numbers up to ``seq`` were used (peers keep
        them): :meth:`next_seq` returns one past it from now on. True if that moved it."""
        if seq <= self.last_used(origin):
            return False
        self._sequences[origin] = seq
        self._dirty_sequences.add(origin)
        return True

    def __len__(self) -> int:
        """How many messages are kept, in all topics."""
        return self._messages.size

    # Limits and marks.

    def _prune(self) -> None:
        """Drop what is past ``max_age``: messages in every topic, and idle marks."""
        now = self._clock()
        cutoff = now - self._max_age
        self._messages.expire(cutoff)
        kept = self._messages.origins
        # Marks are looked at once a second, or when too many: a flush follows each message
        # delivered, and a scan each time made a flood of origins cost its size squared.
        over = len(self._marked) - len(kept) > self._max_idle_marks
        if now - self._marks_pruned < 1.0 and (not over or self._young_over):
            return
        self._marks_pruned = now
        before = self._sequences.get(_FORGOTTEN, 0)
        # By age only when their number is unbounded: an origin quiet for max_age whose
        # mark went had its next message held behind a phantom gap for gap_timeout, and
        # said "skipped" though every earlier one was delivered (a tester).
        unbounded = self._max_idle_marks == sys.maxsize
        limits = (cutoff if unbounded else -math.inf, now - MARK_GRACE)
        marks = (self._delivered, self._marked, self._moves)
        forgotten, moved = forget_marks(*marks, kept, self._max_idle_marks, *limits, now)
        self._dirty_delivered.update(forgotten)
        self._young_over = len(self._marked) - len(kept) > self._max_idle_marks
        if moved > before:
            self._sequences[_FORGOTTEN] = moved
            self._dirty_sequences.add(_FORGOTTEN)

    # Persistence. The loop side: what changed goes to the worker thread in a batch.

    def _absorb(self, loaded: Loaded) -> None:
        """
        Take in what the database holds. At open, memory is empty; when the database
        could only be opened later, the messages logged meanwhile come after the stored
        ones (they were received later), renumbered, and the higher mark or counter wins.
        """
        messages = KeptMessages(self._max_messages, self._max_bytes)
        self._next_position = messages.take_in(loaded, self._messages)
        self._messages = messages
        self._prune()
        for origin, seq, marked, moves in loaded.delivered:
            if seq > self._delivered.get(origin, 0):
                self._delivered[origin] = seq
            self._marked[origin] = max(marked, self._marked.get(origin, marked))
            self._moves[origin] = max(moves, self._moves.get(origin, 0))
        for origin, last in loaded.sequences:
            if last > self._sequences.get(origin, 0):
                self._sequences[origin] = last

    def _take_batch(self) -> Batch | None:
        messages = self._messages
        if not (
            messages.pending or messages.deletes or self._dirty_delivered or self._dirty_sequences
        ):
            return None
        batch = Batch(
            messages.pending, messages.deletes, self._dirty_delivered, self._dirty_sequences
        )
        messages.pending, messages.deletes = {}, []
        self._dirty_delivered, self._dirty_sequences = set(), set()
        for origin in batch.delivered_keys:
            seq = self._delivered.get(origin)
            if seq is None:
                batch.delivered_deletes.append((origin,))
            else:
                batch.delivered.append((origin, seq, self._marked[origin], self._moves[origin]))
        for origin in batch.sequence_keys:
            batch.sequences.append((origin, self._sequences[origin]))
        source_of = messages.source_of
        batch.sources = {position: source_of(entry) for position, entry in batch.inserts.items()}
        return batch

    def _discard_changes(self) -> None:
        self._messages.pending.clear()
        self._messages.deletes.clear()
        self._dirty_delivered.clear()
        self._dirty_sequences.clear()

    def _restore(self, batch: Batch) -> None:
        # Messages dropped meanwhile are not written again (their delete is pending).
        messages = self._messages
        pending = {p: entry for p, entry in batch.inserts.items() if messages.kept(entry)}
        pending.update(messages.pending)
        messages.pending = pending
        messages.deletes = batch.deletes + messages.deletes
        self._dirty_delivered |= batch.delivered_keys
        self._dirty_sequences |= batch.sequence_keys

    def _snapshot(self) -> Loaded:
        delivered = [(o, s, self._marked[o], self._moves[o]) for o, s in self._delivered.items()]
        entries = sorted(self._messages.entries(), key=entry_position)
        return Loaded(
            entries=entries,
            deletes=[],
            last_position=self._next_position - 1,
            delivered=delivered,
            sequences=list(self._sequences.items()),
            sources={entry[2]: self._messages.source_of(entry) for entry in entries},
        )

    def _unsaved(self) -> int:
        return (
            len(self._messages.pending)
            + len(self._messages.deletes)
            + len(self._dirty_delivered)
            + len(self._dirty_sequences)
        )
