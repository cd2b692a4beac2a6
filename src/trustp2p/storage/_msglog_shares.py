"""
Whose messages a full topic of the message log drops (:class:`Shares`): a topic is
shared among the *sources* that delivered its messages (the address groups of the peers
they came from), within a source among its sub-sources (the sources the relay that
delivered them counted them for, as it says: see :func:`source_nodes`), and within the
last of those among its origins.

Origins are free (a key each): shared among origins alone, 200 throwaway origins from
one address cut an honest origin's history in a hub's log to 1/201 of it (an
attacker's test: 181 and 205 of 450 honest messages lost to a new subscriber). Shared
first by source, one address's origins, however many, hold one source's share. Behind
an honest hub, though, every message has the hub's address (attacker36 F2: 49 of 450
kept at the next node): the hub's own attribution, nested under its share, carries the
division on, and a peer that lies about it only divides its own share.

A topic makes its :class:`Shares` and :class:`Loads` when it first needs them, from what
it keeps (see :class:`~._msglog_records.Topic`): most topics never fill.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = [
    "LOADED",
    "MAX_NAMED",
    "SOURCE_SEPARATOR",
    "SUB_LEVELS",
    "Loads",
    "Shares",
    "Sizes",
    "source_nodes",
]

import functools
import heapq
from collections.abc import Iterable

LOADED = ""
"""The source of the messages a caller gave none for, and of those a log of schema 2
or older held (sources are stored from schema 3 on)."""

SOURCE_SEPARATOR = " "
"""Between a source's levels in its text (no address group, peer id or token has one)."""

SUB_LEVELS = 3
"""Levels of sub-sources under a top source: a source's text is its top, then up to
this many sub-sources; those missing are ``""`` (one sub-source, as before they were)."""

MAX_NAMED = 1024
"""Most sub-sources a topic keeps right under any one level of a source (see
:meth:`Shares.admit`): a peer names them freely, and each costs memory; the topic's
messages bound them in all (one at least each)."""

Node = tuple[str, ...]  # a level of a source: its path from the top, e.g. ("R", "a")


@functools.lru_cache(maxsize=4096)
def source_nodes(source: str) -> tuple[Node, ...]:
    """
    The levels of ``source`` (``top`` or ``top SOURCE_SEPARATOR sub ...``), top first: one
    for the top and one for each of :data:`SUB_LEVELS` sub-sources (``""`` where it
    names none, and any past them left out), each the path to it. A source of schema
    3 (an address group alone) has one sub-source, ``""``.
    """
    parts = source.split(SOURCE_SEPARATOR)[: SUB_LEVELS + 1]
    parts += [""] * (SUB_LEVELS + 1 - len(parts))
    return tuple(tuple(parts[: level + 1]) for level in range(SUB_LEVELS + 1))


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
    A topic's messages by source, sub-source and origin. An origin counts for the
    source that delivered the first of its messages the topic keeps, until the topic
    keeps none of them (the topic's numbers of the origin hold its source, and say how
    many it keeps).

    ``counts`` counts the messages under each level of a source (see
    :func:`source_nodes`) and ``breadth`` the levels (or, under a whole source, the
    origins) right under each, ``()`` the topic; the :class:`Sizes` that name the
    largest are made when the topic first fills up.
    """

    __slots__ = ("_named", "_sizes", "breadth", "counts")

    def __init__(self) -> None:
        self.counts: dict[Node, int] = {}  # level -> messages kept under it
        self.breadth: dict[Node, int] = {}  # level -> levels (origins) kept right under it
        self._sizes: dict[Node, Sizes] | None = None  # what is right under each, once full
        self._named: dict[tuple[str, ...], int] = {}  # (top, deeper) -> sub-sources named

    def admit(self, source: str) -> str:
        """
        The source a new origin of ``source`` counts for: ``source``, unless it names a
        sub-source new to the topic past :data:`MAX_NAMED` right under its level
        (counted per level, so that one sub-source's own made-up ones never crowd out
        its siblings', nor theirs: review49 R1, review51 R2); then the levels above
        that one (its
        ``""`` sub-source). A peer's made-up sub-sources cost the topic's memory, not
        the share of another.
        """
        nodes = source_nodes(source)
        for node in nodes[1:]:
            if node[-1] and node not in self.counts:
                if self._named.get(node[:-1], 0) >= MAX_NAMED:
                    return SOURCE_SEPARATOR.join(node[:-1])
        return source

    @property
    def full(self) -> bool:
        """Whether the topic filled up once (:meth:`fill` was called)."""
        return self._sizes is not None

    def add(self, origin: str, source: str, held: int) -> None:
        """One message more of ``origin``, of ``source``: ``held`` now."""
        self._change(origin, source, 1, held - 1)

    def take(self, origin: str, source: str, held: int) -> None:
        """``origin``, new to the shares, holds ``held`` messages, of ``source`` (as
        ``held`` calls of :meth:`add` would leave it)."""
        self._change(origin, source, held, 0)

    def remove(self, origin: str, source: str, held: int) -> None:
        """One message of ``origin``, of ``source``, less: ``held`` left."""
        self._change(origin, source, -1, held + 1)

    def move(self, origin: str, before: str, after: str, held: int) -> None:
        """``origin``'s ``held`` messages count for ``after``, no longer ``before``."""
        self._change(origin, before, -held, held)
        self._change(origin, after, held, 0)

    def _change(self, origin: str, source: str, by: int, held: int) -> None:
        """``origin`` of ``source`` held ``held`` messages and holds ``by`` more:
        each level is counted from the origin up."""
        nodes = source_nodes(source)
        counts, breadth, sizes = self.counts, self.breadth, self._sizes
        key, before, after = origin, held, held + by
        for level in range(len(nodes), -1, -1):
            parent = nodes[level - 1] if level else ()
            if not before:
                breadth[parent] = breadth.get(parent, 0) + 1
            elif not after:
                if breadth[parent] > 1:
                    breadth[parent] -= 1
                else:
                    del breadth[parent]
            if sizes is not None:
                under = sizes.get(parent)
                if under is None:
                    under = sizes[parent] = Sizes({})
                under.move(key, before, after)
                if not after and parent not in breadth:
                    del sizes[parent]
            if level:
                key = parent[-1]
                before = counts.get(parent, 0)
                after = before + by
                if after:
                    counts[parent] = after
                else:
                    del counts[parent]
                if key and level > 1 and not (before and after):  # a named one, new or gone
                    self._name(nodes[level - 2], 1 if after else -1)  # its parent's

    def _name(self, kind: Node, by: int) -> None:
        """One sub-source more (``by`` 1) or less (-1) named right under ``kind``."""
        named = self._named
        count = named.get(kind, 0) + by
        if count:
            named[kind] = count
        else:
            del named[kind]

    def over_share(self, source: str, held: int, max_messages: int) -> bool:
        """
        Whether an origin of ``source`` holding ``held`` messages is over its share:
        each level of its source more than its share (``max_messages`` over the number
        of top sources, a sub-source that over the number of sub-sources under its
        top, and so on), and the origin more than its source's share over the number
        of its origins. With one source of one sub-source: more than ``max_messages``
        over the number of origins.
        """
        counts, breadth = self.counts, self.breadth
        parent: Node = ()
        ways = 1  # how many ways the topic is shared down to this level
        for node in source_nodes(source):
            ways *= breadth[parent]
            if counts[node] * ways <= max_messages:
                return False
            parent = node
        return held * breadth[parent] * ways > max_messages

    def fill(self, origins: Iterable[tuple[str, str, int]]) -> None:
        """Make the sizes, from each origin's ``(origin, source, held)``."""
        under: dict[Node, dict[str, int]] = {}
        for node, count in self.counts.items():
            under.setdefault(node[:-1], {})[node[-1]] = count
        for origin, source, held in origins:
            under.setdefault(source_nodes(source)[-1], {})[origin] = held
        self._sizes = {node: Sizes(counts) for node, counts in under.items()}

    def largest(self) -> str:
        """The origin with the most messages of the source with the most, taking the
        level with the most at each level (once :meth:`fill` was called)."""
        sizes = self._sizes
        assert sizes is not None  # made by fill()
        node: Node = ()
        for _ in range(SUB_LEVELS + 1):
            node = (*node, sizes[node].largest())
        return sizes[node].largest()


class Loads:
    """
    A topic's payload (``text_size(data)``) by source, sub-source and origin, and which to
    drop from when the log holds too much (:meth:`heaviest`): shared as
    :class:`Shares` shares the number of messages.

    ``under`` has the payload right under each level of a source (see
    :func:`source_nodes`), ``()`` the topic's: of each level under it, or under a whole
    source, of each origin. The heaviest are found with heaps of ``(-payload, key)``
    per level (some entries stale, made again when mostly stale), made when the topic
    is first too heavy.
    """

    __slots__ = ("_heaps", "total", "under")

    def __init__(self) -> None:
        self.total = 0
        self.under: dict[Node, dict[str, int]] = {}  # level -> what is right under it
        self._heaps: dict[Node, list[tuple[int, str]]] | None = None

    def add(self, origin: str, source: str, size: int) -> None:
        """A message of ``size`` more of ``origin``, of ``source``."""
        self._change(origin, source, size, last=False)

    def remove(self, origin: str, source: str, size: int, *, last: bool) -> None:
        """A message of ``size`` less of ``origin`` (its ``last`` kept), of ``source``."""
        self._change(origin, source, -size, last=last)

    def move(self, origin: str, before: str, after: str) -> None:
        """``origin``'s payload counts for ``after``, no longer ``before``."""
        weight = self.under[source_nodes(before)[-1]][origin]
        self._change(origin, before, -weight, last=True)
        self._change(origin, after, weight, last=False)

    def _change(self, origin: str, source: str, by: int, *, last: bool) -> None:
        """``origin`` of ``source`` holds ``by`` more payload (nothing, if ``last``):
        each level is counted from the origin up."""
        nodes = source_nodes(source)
        under, heaps = self.under, self._heaps
        self.total += by
        key, gone = origin, last
        for level in range(len(nodes), -1, -1):
            parent = nodes[level - 1] if level else ()
            weights = under.get(parent)
            if weights is None:
                weights = under[parent] = {}
            if gone:
                del weights[key]
            else:
                weight = weights[key] = weights.get(key, 0) + by
                if heaps is not None:
                    self._pushed(parent, key, weight)
            gone = not weights
            if gone:
                del under[parent]
                if heaps is not None:
                    heaps.pop(parent, None)
            key = parent[-1] if level else key

    def _pushed(self, node: Node, key: str, weight: int) -> None:
        heaps = self._heaps
        assert heaps is not None  # made by heaviest()
        heap, weights = heaps.get(node), self.under[node]
        if heap is None or len(heap) > 2 * len(weights) + 16:  # mostly stale: made again
            heaps[node] = _heap(weights)
        else:
            heapq.heappush(heap, (-weight, key))

    def heaviest(self, origin: str, source: str) -> str | None:
        """
        What to drop to make the topic lighter, its oldest message being ``origin``'s,
        of ``source``: None for that message, if the origin holds more than its share
        (each level of its source at least its share of the payload, shared as
        :meth:`Shares.over_share` shares the number, and the origin more than its
        source's over the number of its origins; with one source of one sub-source,
        more than the payload over the number of origins); else the origin holding the
        most of the source holding the most, taking the level holding the most at each
        level. Call it on a topic with messages.
        """
        under, total = self.under, self.total
        parent: Node = ()
        ways = 1
        for node in source_nodes(source):
            weights = under[parent]
            ways *= len(weights)
            if weights[node[-1]] * ways < total:
                break
            parent = node
        else:
            weights = under[parent]
            if weights[origin] * len(weights) * ways > total:
                return None
        if self._heaps is None:
            self._heaps = {node: _heap(weights) for node, weights in under.items()}
        node = ()
        for _ in range(SUB_LEVELS + 1):
            node = (*node, self._heaviest_under(node))
        return self._heaviest_under(node)

    def _heaviest_under(self, node: Node) -> str:
        assert self._heaps is not None
        weights = self.under[node]
        heap = self._heaps.get(node)
        if heap is None:
            heap = self._heaps[node] = _heap(weights)
        while weights.get(heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)  # stale
        return heap[0][1]


def _heap(weights: dict[str, int]) -> list[tuple[int, str]]:
    heap = [(-weight, key) for key, weight in weights.items()]
    heapq.heapify(heap)
    return heap
