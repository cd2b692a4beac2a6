"""
Shares of the delivery backlog: the messages that wait for a topic's validator or
handlers, and which are dropped rather than their peer held (the node's queues are
:mod:`trustp2p.node.gossip_delivery`; this module only does the arithmetic).

Past the bound, a topic's share is the max-min fair level of the bound among the topics:
the level ``L`` where the topics' waiting bytes, each counted up to ``L``, add up to the
bound (:func:`over_level`). A live message that a peer relays (its origin is another) of
a topic over its share is *shed*: dropped unseen, and fetched later by catch-up, rather
than its peer held. A peer held stops every other topic, request and ping it carries: a
flood of a slow topic relayed by an honest peer held that peer for as long as the topic
took to drain (attacker43 F2: another topic's messages came 15-20 s late, and the hub
once dropped the victim for a pong that waited). Whatever its origin: shedding only the
origins over an even part of the topic's share still held the relay for the message of
another origin that crossed the bound, so a flood split over two identities, or beside
another identity's messages, held it as before (review81 F1: another topic 18-19 s late).
Nor are the origins within their part queued without holding: origins arriving one
after another, each within an even part of a count that grows, add up to the level
times the harmonic number of their count, and free identities would reach twice the
bound, where every peer is held. What is shed waits for the topic to drain: under a
flood that lasts, until the flood ends (review81 F3).

Within a topic, the messages waiting take turns by origin (:class:`OriginTurns`): each
origin's in the order they came, one origin's after another's. One queue for the topic
kept a small publisher behind a flood below the bound, which sheds nothing (review81 F4,
review85 F2: 0 of 24 delivered in 60 s, about 350 s of validation ahead of them, and
each twice: a message passed by its validator queued again behind the rest).

"""

from __future__ import annotations

__all__ = ["OriginTurns", "over_level", "shed_level"]

import bisect
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


def over_level(sizes: Mapping[str, int], key: str, bound: int) -> bool:
    """Whether ``key`` holds more than the max-min fair level of ``bound``: the level
    ``L`` where ``sizes``, each counted up to ``L``, add up to ``bound``."""
    mine = sizes.get(key, 0)
    return sum(min(size, mine) for size in sizes.values()) > bound


def shed_level(topics: Mapping[str, int], topic: str, bound: int) -> int:
    """
    The most bytes ``topic`` may wait for, the other topics' as they are, within its
    share of ``bound``: past more than ``bound`` waiting, a live message relayed by a
    peer is shed (see the module) if its topic, the message counted, holds more.

    The caller keeps it until a topic's bytes change: the messages shed meanwhile
    change none, and each cost a copy and a sort of every topic's bytes before
    (review81: 9-158 us a message past the bound).

    Returns:
        The largest ``m`` where ``m`` plus the other topics' bytes, each counted up to
        ``m``, add up to no more than ``bound``: ``topic`` holding more is over its
        max-min fair level (:func:`over_level`).

    """
    others = sorted(topics.values())
    if topic in topics:  # (the others only)
        del others[bisect.bisect_left(others, topics[topic])]
    left, count = bound, len(others) + 1
    for size in others:
        if size * count >= left:
            break
        left -= size
        count -= 1
    return left // count


class OriginTurns(Generic[T]):
    """
    A topic's messages waiting (see the module), taken one origin's after another's:
    each origin's items in the order they came (its stream's order holds), the origins
    in turn, one item each, in the order each came with items waiting.
    ``origin(item)`` says whose an item is.
    """

    __slots__ = ("_items", "_origin", "_turns", "_waiting")

    def __init__(self, origin: Callable[[T], Hashable]) -> None:
        self._origin = origin
        self._items: dict[Hashable, deque[T]] = {}  # origin -> its items, in order
        self._turns: deque[Hashable] = deque()  # the origins with items, next first
        self._waiting = 0

    def __len__(self) -> int:
        return self._waiting

    def __bool__(self) -> bool:
        return self._waiting > 0

    def append(self, item: T) -> None:
        """Queue ``item`` behind its origin's."""
        origin = self._origin(item)
        if (queue := self._items.get(origin)) is None:
            queue = self._items[origin] = deque()
            self._turns.append(origin)
        queue.append(item)
        self._waiting += 1

    def popleft(self) -> T:
        """The next origin's first item.

        Raises:
            IndexError: If none waits.

        """
        origin = self._turns.popleft()  # (IndexError when empty)
        queue = self._items[origin]
        item = queue.popleft()
        if queue:
            self._turns.append(origin)
        else:
            del self._items[origin]
        self._waiting -= 1
        return item
