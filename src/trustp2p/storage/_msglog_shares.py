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

__all__ = ["LOADED", "Loads", "Shares", "Sizes"]

import heapq
from collections.abc import Iterable

LOADED = ""
"""The source of the messages a caller gave none for, and of those a log of schema 2
or older held (sources are stored from schema 3 on)."""


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
        """``key`` had ``before`` messages and has ``after`` (O(1) for one more or one
        fewer, the usual change)."""
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
            one_less = before - after == 1 and after
            self._most = after if one_less else max(by_size, default=0)

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

    def move(self, origin: str, before: str, after: str, held: int) -> None:
        """``origin``'s ``held`` messages count for ``after``, no longer ``before``."""
        count = self.sources[before] - held
        if count:
            self.sources[before] = count
            self.breadth[before] -= 1
        else:
            del self.sources[before], self.breadth[before]
        moved = self.sources[after] = self.sources.get(after, 0) + held
        self.breadth[after] = self.breadth.get(after, 0) + 1
        if self._outer is not None:
            self._outer.move(before, count + held, count)
            self._outer.move(after, moved - held, moved)
            self._inner[before].move(origin, held, 0)
            if not count:
                del self._inner[before]
            inner = self._inner.get(after)
            if inner is None:
                inner = self._inner[after] = Sizes({})
            inner.move(origin, 0, held)

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


class Loads:
    """
    A topic's payload (``text_size(data)``) by source and, within each source, by origin,
    and which to drop from when the log holds too much (:meth:`heaviest`): shared as
    :class:`Shares` shares the number of messages.

    The heaviest are found with heaps of ``(-payload, key)`` (some entries stale, made
    again when mostly stale), made when the topic is first too heavy.
    """

    __slots__ = ("_inner", "_outer", "by_source", "sources", "total")

    def __init__(self) -> None:
        self.total = 0
        self.sources: dict[str, int] = {}  # source -> payload kept
        self.by_source: dict[str, dict[str, int]] = {}  # source -> origin -> payload kept
        self._outer: list[tuple[int, str]] | None = None
        self._inner: dict[str, list[tuple[int, str]]] = {}

    def add(self, origin: str, source: str, size: int) -> None:
        """A message of ``size`` more of ``origin``, of ``source``."""
        origins = self.by_source.get(source)
        if origins is None:
            origins = self.by_source[source] = {}
        weight = origins[origin] = origins.get(origin, 0) + size
        load = self.sources[source] = self.sources.get(source, 0) + size
        self.total += size
        if self._outer is not None:
            self._pushed(origin, source, weight, load)

    def remove(self, origin: str, source: str, size: int, *, last: bool) -> None:
        """A message of ``size`` less of ``origin`` (its ``last`` kept), of ``source``."""
        self.total -= size
        origins = self.by_source[source]
        if last:
            del origins[origin]
            weight = 0
        else:
            weight = origins[origin] = origins[origin] - size
        load = self.sources[source] - size
        if origins:
            self.sources[source] = load
        else:
            del self.sources[source], self.by_source[source]
            self._inner.pop(source, None)
            return
        if self._outer is not None:
            self._pushed(origin, source, weight, load)

    def move(self, origin: str, before: str, after: str) -> None:
        """``origin``'s payload counts for ``after``, no longer ``before``."""
        origins = self.by_source[before]
        weight = origins.pop(origin)
        load = self.sources[before] - weight
        if origins:
            self.sources[before] = load
            if self._outer is not None:
                heapq.heappush(self._outer, (-load, before))
        else:
            del self.sources[before], self.by_source[before]
            self._inner.pop(before, None)
        moved = self.by_source.get(after)
        if moved is None:
            moved = self.by_source[after] = {}
        moved[origin] = weight
        load = self.sources[after] = self.sources.get(after, 0) + weight
        if self._outer is not None:
            self._pushed(origin, after, weight, load)

    def _pushed(self, origin: str, source: str, weight: int, load: int) -> None:
        outer = self._outer
        assert outer is not None  # made by heaviest()
        if len(outer) > 2 * len(self.sources) + 64:  # mostly stale: made again
            self._outer = _heap(self.sources)
        else:
            heapq.heappush(outer, (-load, source))
        inner = self._inner.get(source)
        if inner is None or len(inner) > 2 * len(self.by_source[source]) + 64:
            self._inner[source] = _heap(self.by_source[source])
        elif weight:
            heapq.heappush(inner, (-weight, origin))

    def heaviest(self, origin: str, source: str) -> str | None:
        """
        What to drop to make the topic lighter, its oldest message being ``origin``'s,
        of ``source``: None for that message, if the origin holds more than its share
        (its source at least the payload over the number of sources, the origin more
        than that over the number of its source's origins; with one source, more than
        the payload over the number of origins); else the origin holding the most of
        the source holding the most. Call it on a topic with messages.
        """
        sources, total = len(self.sources), self.total
        origins = self.by_source[source]
        if self.sources[source] * sources >= total:
            if origins[origin] * len(origins) * sources > total:
                return None
        if self._outer is None:
            self._outer = _heap(self.sources)
            self._inner = {key: _heap(kept) for key, kept in self.by_source.items()}
        outer = self._outer
        while self.sources.get(outer[0][1]) != -outer[0][0]:
            heapq.heappop(outer)  # stale
        heaviest = outer[0][1]
        inner, kept = self._inner[heaviest], self.by_source[heaviest]
        while kept.get(inner[0][1]) != -inner[0][0]:
            heapq.heappop(inner)  # stale
        return inner[0][1]


def _heap(weights: dict[str, int]) -> list[tuple[int, str]]:
    heap = [(-weight, key) for key, weight in weights.items()]
    heapq.heapify(heap)
    return heap
