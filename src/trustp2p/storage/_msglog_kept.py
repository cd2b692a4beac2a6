"""
The message log's messages in memory (:class:`KeptMessages`): indexed per origin and per
topic, held within ``max_messages`` per topic and ``max_bytes`` in all, and what changed
since the last flush.

Private to :mod:`trustp2p.storage`: :class:`~trustp2p.storage.msglog.MessageLog` keeps
one, and says what the limits mean.

"""

from __future__ import annotations

__all__ = ["KeptMessages"]

import itertools
import sys
from collections.abc import Iterable, Iterator

from ._msglog_records import Entry, Loaded, LoggedMessage, Origin, Topic, entry_position, take
from ._msglog_shares import LOADED


class KeptMessages:
    """
    The kept messages, with what changed since the last flush: messages to insert (by
    position) and positions to delete.

    Args:
        max_messages: Most messages per topic (``sys.maxsize``: no limit).
        max_bytes: Most payload in all topics (``sys.maxsize``: no limit).

    """

    __slots__ = (
        "deletes",
        "max_bytes",
        "max_messages",
        "origins",
        "pending",
        "size",
        "topics",
        "weight",
    )

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.origins: dict[str, Origin] = {}
        self.topics: dict[str, Topic] = {}
        self.size = self.weight = 0  # messages, and their payload, in all topics
        self.pending: dict[int, Entry] = {}
        self.deletes: list[int] = []

    def take_in(self, loaded: Loaded, meanwhile: KeptMessages) -> int:
        """Take in, while empty, the messages the database holds (their deletes too),
        then those kept ``meanwhile`` after them, renumbered; return the next position."""
        later = sorted(meanwhile.entries(), key=entry_position)
        self.deletes = loaded.deletes
        # An origin counts for the source of its newest row: the rows logged after a
        # claim (MessageLog.claim) carry it (found in review: the oldest row's, a
        # relay's, undid the claim at a restart).
        newest = {(e[0].topic, e[0].origin): loaded.sources.get(e[2]) for e in loaded.entries}
        for entry in loaded.entries:
            source = newest[entry[0].topic, entry[0].origin] or LOADED
            if self.insert(entry, new=False, source=source) is None:  # a duplicate row
                self.deletes.append(entry[2])
        position = loaded.last_position + 1
        for entry in later:
            source = meanwhile.source_of(entry)
            if self.insert((entry[0], entry[1], position), source=source) is not None:
                position += 1
        return position

    def source_of(self, entry: Entry) -> str:
        """The source a kept message counts for (its origin's in its topic)."""
        message = entry[0]
        return self.topics[message.topic].origins[message.origin].source

    def high_water(self, topic: str | None) -> dict[str, int]:
        """See :meth:`~trustp2p.storage.msglog.MessageLog.high_water`."""
        if topic is None:
            return {origin: logged.high() for origin, logged in self.origins.items()}
        kept = self.topics.get(topic)
        if kept is None:
            return {}
        return {origin: seqs.high() for origin, seqs in kept.origins.items()}

    def range(
        self, origin: str, first: int, last: int, limit: int, max_bytes: int
    ) -> list[LoggedMessage]:
        """See :meth:`~trustp2p.storage.msglog.MessageLog.range`."""
        logged = self.origins.get(origin)
        if logged is None:
            return []
        entries = itertools.islice(logged.values(), logged.index(first), None)
        return take((entry[0] for entry in entries), last, limit, max_bytes)

    def pick(
        self, origin: str, seqs: Iterable[int], limit: int, max_bytes: int
    ) -> list[LoggedMessage]:
        """See :meth:`~trustp2p.storage.msglog.MessageLog.pick`."""
        logged = self.origins.get(origin)
        if logged is None:
            return []
        entries = (entry for entry in map(logged.get, seqs) if entry is not None)
        return take((entry[0] for entry in entries), sys.maxsize, limit, max_bytes)

    def insert(self, entry: Entry, *, new: bool = True, source: str = LOADED) -> Topic | None:
        """Keep ``entry`` (to be written if ``new``), delivered by ``source``, and drop
        one of its topic's messages past ``max_messages`` (see :meth:`_evict`)."""
        message = entry[0]
        origin, seq = message.origin, message.seq
        logged = self.origins.get(origin)
        if logged is None:
            logged = self.origins[origin] = Origin()
        elif logged.get(seq) is not None:
            return None
        logged.add(entry)
        topic = self.topics.get(message.topic)
        if topic is None:
            topic = self.topics[message.topic] = Topic(message.topic)
        kept = topic.add(entry, source)
        self.size += 1
        if new:
            self.pending[entry[2]] = entry
        if kept > self.max_messages:
            self._evict(topic)
        self.weight += message.data_size
        while self.weight > self.max_bytes:
            self._lighten()
        return topic

    def _lighten(self) -> None:
        """Drop a message of the topic holding the most payload, by its share rule."""
        topic = max(self.topics.values(), key=lambda kept: kept.weight)
        heaviest = topic.heaviest()
        if heaviest is None:
            self.drop(topic)  # (an empty topic is let go of at the next prune)
        else:
            self._drop_number(topic, *heaviest)

    def _evict(self, topic: Topic) -> None:
        """Make room in a full ``topic``: drop its oldest message if its origin has more
        than its share, else the lowest-numbered of the origin with the most of the
        source with the most. A topic is shared among the sources that delivered its
        messages (address groups), within a source among its sub-sources (whose the
        relay said they are), then among origins (see
        :class:`~._msglog_shares.Shares`). Then a flood, from one origin or many new
        ones, can't push out the messages of an origin within its share, nor one
        address's many origins those of another address."""
        oldest = topic.oldest()
        assert oldest is not None  # a full topic
        if topic.over_share(oldest[0].origin, self.max_messages):
            topic.entries.popleft()
            self._forget(topic, oldest)
            return
        self._drop_number(topic, *topic.largest())

    def _drop_number(self, topic: Topic, origin: str, seq: int) -> None:
        entry = self.origins[origin].get(seq)
        assert entry is not None  # each kept number has its entry
        topic.drop(entry)
        self._forget(topic, entry)

    def drop(self, topic: Topic) -> None:
        """Drop the oldest message of ``topic``; the caller forgets the topic if empty."""
        entry = topic.oldest()
        assert entry is not None  # called on a topic with messages
        topic.entries.popleft()
        self._forget(topic, entry)

    def _forget(self, topic: Topic, entry: Entry) -> None:
        message, _, position = entry
        origin, seq = message.origin, message.seq
        logged = self.origins[origin]
        if len(logged) > 1:
            logged.remove(seq)
        else:
            del self.origins[origin]
        weight = message.data_size
        topic.remove(origin, seq, weight)
        self.size -= 1
        self.weight -= weight
        if self.pending.pop(position, None) is None:
            self.deletes.append(position)

    def expire(self, cutoff: float) -> None:
        """Drop the messages received before ``cutoff`` in every topic, and the topics
        left empty."""
        for name, topic in list(self.topics.items()):
            while (oldest := topic.oldest()) is not None and oldest[1] < cutoff:
                self.drop(topic)
            if not topic:
                del self.topics[name]

    def kept(self, entry: Entry) -> bool:
        logged = self.origins.get(entry[0].origin)
        return logged is not None and logged.get(entry[0].seq) is entry

    def entries(self) -> Iterator[Entry]:
        for topic in self.topics.values():
            yield from topic.kept()
