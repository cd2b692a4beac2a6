"""
Whose messages a full topic of the message log drops (:class:`Shares`): a topic is
shared among the *sources* that delivered its messages (the address groups of the peers
they came from), then within a source among its origins.

Origins are free (a key each): shared among origins alone, 200 throwaway origins from
one address cut an honest origin's history in a hub's log to 1/201 of it (an
attacker's test: 181 and 205 of 450 honest messages lost to a new subscriber). Shared
first by source, one address's origins, however many, hold one source's share.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["LOADED", "Shares", "Sizes"]

from collections.abc import Iterable

LOADED = ""
"""The source of the messages read from the database at start (their sources aren't
stored), and of those a caller gave none for."""


class Sizes:
    """How many messages each key holds, grouped by count: the largest in O(1)."""

    __slots__ = ("_by_size", "_most")

    def __init__(self, counts: dict[str, int]) -> None:
        # Each group a dict, not a set: the same key is the largest in every run.
        self._by_size: dict[int, dict[str, None]] = {}
        for key, size in counts.items():
            self._by_size.setdefault(size, {})[key] = None
        self._most = max(self._by_size, default=0)

    def move(self, key: str, before: int, after: int) -> None:
        """``key`` had ``before`` messages and has ``after`` (one more or one fewer)."""
        by_size = self._by_size
        if before:
            group = by_size[before]
            if next(reversed(group)) == key:  # the usual: largest() named it
                group.popitem()  # unlike del, lets go of the slot: no scan grows
            else:
                del group[key]
            if not group:
                del by_size[before]
        if after:
            by_size.setdefault(after, {})[key] = None
        if after > self._most:
            self._most = after
        elif self._most not in by_size:  # the one with the most moved down
            self._most = after or max(by_size, default=0)

    def largest(self) -> str:
        """A key with the most messages (the last to get there); there is one."""
        return next(reversed(self._by_size[self._most]))


class Shares:
    """
    A topic's messages by source. An origin counts for the source that delivered the
    first of its messages the topic keeps, until the topic keeps none of them (the
    topic's numbers of the origin hold its source, and say how many it keeps).

    ``sources`` counts each source's messages and ``breadth`` its origins; the
    :class:`Sizes` that name the largest are made when the topic first fills up.
    """

    __slots__ = ("_inner", "_outer", "breadth", "sources")

    def __init__(self) -> None:
        self.sources: dict[str, int] = {}  # source -> messages kept
        self.breadth: dict[str, int] = {}  # source -> origins kept
        self._outer: Sizes | None = None  # the sources by count, once full
        self._inner: dict[str, Sizes] = {}  # per source, its origins by count, once full

    @property
    def full(self) -> bool:
        """Whether the topic filled up once (:meth:`fill` was called)."""
        return self._outer is not None

    def add(self, origin: str, source: str, held: int) -> None:
        """One message more of ``origin``, of ``source``: ``held`` now."""
        if held == 1:
            self.breadth[source] = self.breadth.get(source, 0) + 1
        count = self.sources[source] = self.sources.get(source, 0) + 1
        if self._outer is not None:
            self._outer.move(source, count - 1, count)
            inner = self._inner.get(source)
            if inner is None:
                inner = self._inner[source] = Sizes({})
            inner.move(origin, held - 1, held)

    def remove(self, origin: str, source: str, held: int) -> None:
        """One message of ``origin``, of ``source``, less: ``held`` left."""
        count = self.sources[source] - 1
        if count:
            self.sources[source] = count
            if not held:
                self.breadth[source] -= 1
        else:
            del self.sources[source], self.breadth[source]
        if self._outer is not None:
            self._outer.move(source, count + 1, count)
            self._inner[source].move(origin, held + 1, held)
            if not count:
                del self._inner[source]

    def over_share(self, source: str, held: int, max_messages: int) -> bool:
        """
        Whether an origin of ``source`` holding ``held`` messages is over its share:
        its source more than ``max_messages`` over the number of sources, and the
        origin more than that over the number of the source's origins (with one
        source, more than ``max_messages`` over the number of origins).
        """
        sources = len(self.sources)
        if self.sources[source] * sources <= max_messages:
            return False
        return held * self.breadth[source] * sources > max_messages

    def fill(self, origins: Iterable[tuple[str, str, int]]) -> None:
        """Make the sizes, from each origin's ``(origin, source, held)``."""
        by_source: dict[str, dict[str, int]] = {}
        for origin, source, held in origins:
            by_source.setdefault(source, {})[origin] = held
        self._outer = Sizes(self.sources)
        self._inner = {source: Sizes(held) for source, held in by_source.items()}

    def largest(self) -> str:
        """The origin with the most messages of the source with the most (once
        :meth:`fill` was called)."""
        assert self._outer is not None  # made by fill()
        return self._inner[self._outer.largest()].largest()
