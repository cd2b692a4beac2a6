"""
Merging the router's subscription talks: while held, a topic's ``gossip/subscriptions``,
``gossip/graft`` or ``gossip/prune`` entry joins the peer's last pending talk of that
kind, and the talks go out on release. A node that subscribes to 1,000 topics one call
at a time then sends each peer one talk (and one graft), not 1,000: its peers charge
every talk to its request budget (100/s by default), and 1,000 stalled the link 18 s.

Merging keeps each topic's entries in the order they were made, which is what a peer
acts on: an entry joins an earlier talk only when no talk queued after that one names
its topic; else it starts a new talk. A talk holds at most :data:`MAX_TOPICS_PER_TALK`
topics in a list and about ``max_bytes`` of them as JSON, so that it stays within the
peers' package size limit. No I/O: the router gives it a ``talk`` callable, and holds
and releases it around what one event loop iteration does.

"""

from __future__ import annotations

__all__ = [
    "GRAFT",
    "MAX_TOPICS_PER_TALK",
    "PRUNE",
    "SUBSCRIPTIONS",
    "ControlBatch",
    "topic_chunks",
]

import json
from collections.abc import Callable, Hashable, Iterator
from typing import Any

# The router's subscription talks (TALK packages):
SUBSCRIPTIONS = "gossip/subscriptions"  # {"subscribe": [topic], "unsubscribe": [topic]}
GRAFT = "gossip/graft"  # {"topics": [topic]}
PRUNE = "gossip/prune"  # {"topics": [topic]}

MAX_TOPICS_PER_TALK = 1000
"""Most topics in one control talk (each list of ``gossip/subscriptions``, and
``gossip/graft`` or ``gossip/prune``); a longer list is a protocol error."""

DEFAULT_TALK_BYTES = 64 * 1024
"""The topics of one merged talk, as JSON, at most (a quarter of the smallest common
``max_package_size``, 1 MiB by default, with room to spare)."""

Talk = Callable[[Hashable, str, dict[str, Any]], None]


def _size(topic: str) -> int:
    """Bytes ``topic`` takes in a talk's JSON list, its quotes and comma included."""
    if topic.isascii() and topic.isprintable() and '"' not in topic and "\\" not in topic:
        return len(topic) + 3  # as it is
    return len(json.dumps(topic, ensure_ascii=False).encode()) + 1


def topic_chunks(topics: list[str], max_bytes: int = DEFAULT_TALK_BYTES) -> Iterator[list[str]]:
    """``topics`` in lists a talk can carry: at most :data:`MAX_TOPICS_PER_TALK` of them
    and ``max_bytes`` as JSON (always one topic at least)."""
    chunk: list[str] = []
    size = 0
    for topic in topics:
        cost = _size(topic)
        if chunk and (len(chunk) >= MAX_TOPICS_PER_TALK or size + cost > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(topic)
        size += cost
    if chunk:
        yield chunk


class _Pending:
    """One talk waiting for the release: its lists, and their size as JSON."""

    __slots__ = ("event", "lists", "names", "size")

    def __init__(self, event: str) -> None:
        self.event = event
        keys = ("subscribe", "unsubscribe") if event == SUBSCRIPTIONS else ("topics",)
        self.lists: dict[str, list[str]] = {key: [] for key in keys}
        self.names: set[str] = set()  # every topic it holds
        self.size = 0

    def has_room(self, key: str, cost: int, max_bytes: int) -> bool:
        count = len(self.lists[key])
        return count < MAX_TOPICS_PER_TALK and (count == 0 or self.size + cost <= max_bytes)


class ControlBatch:
    """A peer's subscription talks, merged while :attr:`holding`."""

    def __init__(self, talk: Talk, *, max_bytes: int = DEFAULT_TALK_BYTES) -> None:
        self._talk = talk
        self.max_bytes = max_bytes
        self.holding = False
        self._pending: dict[Hashable, list[_Pending]] = {}  # peer -> its talks, in order
        self._bounds: dict[Hashable, int] = {}  # peers that take less than max_bytes

    def bound(self, peer: Hashable) -> int:
        """The most bytes of topics in one talk to ``peer``."""
        return self._bounds.get(peer, self.max_bytes)

    def limit(self, peer: Hashable, max_bytes: int | None) -> None:
        """``peer`` takes talks of at most ``max_bytes`` of topics (None: no less than
        :attr:`max_bytes`; found in review: a peer that takes 1 KiB packages was sent
        merged talks of 64 KiB, and closed the connection with 1009)."""
        if max_bytes is not None and max_bytes < self.max_bytes:
            self._bounds[peer] = max_bytes

    def hold(self) -> None:
        """Merge the talks from now until :meth:`release`."""
        self.holding = True

    def release(self) -> None:
        """Send what was merged, in order, and stop holding."""
        self.holding = False
        pending, self._pending = self._pending, {}
        for peer, talks in pending.items():
            for talk in talks:
                self._talk(peer, talk.event, talk.lists)

    def forget(self, peer: Hashable) -> None:
        """The peer is gone: what it was to be told is dropped."""
        self._pending.pop(peer, None)
        self._bounds.pop(peer, None)

    def talk(self, peer: Hashable, event: str, body: dict[str, Any]) -> None:
        """Send a talk, or queue its topics if held and it is one of the kinds merged."""
        if not self.holding or event not in (SUBSCRIPTIONS, GRAFT, PRUNE):
            self._talk(peer, event, body)
            return
        talks = self._pending.setdefault(peer, [])
        for key in ("subscribe", "unsubscribe") if event == SUBSCRIPTIONS else ("topics",):
            for topic in body.get(key, ()):
                self._queue(talks, event, key, topic, self.bound(peer))

    def _queue(
        self, talks: list[_Pending], event: str, key: str, topic: str, max_bytes: int
    ) -> None:
        """Add ``topic`` to the last talk of ``event`` if nothing after it (nor itself)
        names the topic and it has room; else to a new talk at the end."""
        cost = _size(topic)
        target = None
        for talk in reversed(talks):
            if topic in talk.names:
                break
            if talk.event == event:
                target = talk if talk.has_room(key, cost, max_bytes) else None
                break
        if target is None:
            target = _Pending(event)
            talks.append(target)
        target.lists[key].append(topic)
        target.names.add(topic)
        target.size += cost
