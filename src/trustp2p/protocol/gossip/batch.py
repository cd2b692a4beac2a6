"""
Merging the router's subscription talks: while held, each peer's ``gossip/subscriptions``,
``gossip/graft`` and ``gossip/prune`` talks are merged into one of each (per 1,000 topics)
and sent on release, in the order each kind first came. A node that subscribes to 1,000
topics one call at a time then sends each peer one talk, not 1,000: its peers charge
every talk to its request budget (100/s by default), and 1,000 stalled the link 18 s.

Merging keeps the meaning: a topic subscribed and unsubscribed (grafted and pruned) in
one batch is sent as the last of the two only, or not at all when the two cancel out.
No I/O: the router gives it a ``talk`` callable, and the node holds and releases it
around what one event loop iteration does.

"""

from __future__ import annotations

__all__ = ["GRAFT", "MAX_TOPICS_PER_TALK", "PRUNE", "SUBSCRIPTIONS", "ControlBatch"]

from collections.abc import Callable, Hashable
from typing import Any

# The router's subscription talks (TALK packages):
SUBSCRIPTIONS = "gossip/subscriptions"  # {"subscribe": [topic], "unsubscribe": [topic]}
GRAFT = "gossip/graft"  # {"topics": [topic]}
PRUNE = "gossip/prune"  # {"topics": [topic]}

MAX_TOPICS_PER_TALK = 1000
"""Most topics in one control talk (each list of ``gossip/subscriptions``, and
``gossip/graft`` or ``gossip/prune``); a longer list is a protocol error."""

_OPPOSITE = {GRAFT: PRUNE, PRUNE: GRAFT}

Talk = Callable[[Hashable, str, dict[str, Any]], None]
_Topics = dict[str, None]  # an ordered set


class ControlBatch:
    """A peer's subscription talks, merged while :attr:`holding`."""

    def __init__(self, talk: Talk) -> None:
        self._talk = talk
        self.holding = False
        # peer -> its talks, in the order each kind first came: (event, lists by key)
        self._pending: dict[Hashable, list[tuple[str, dict[str, _Topics]]]] = {}

    def hold(self) -> None:
        """Merge the talks from now until :meth:`release`."""
        self.holding = True

    def release(self) -> None:
        """Send what was merged, and stop holding."""
        self.holding = False
        pending, self._pending = self._pending, {}
        for peer, talks in pending.items():
            for event, lists in talks:
                if any(lists.values()):  # else everything cancelled out
                    self._talk(peer, event, {key: list(t) for key, t in lists.items()})

    def forget(self, peer: Hashable) -> None:
        """The peer is gone: what it was to be told is dropped."""
        self._pending.pop(peer, None)

    def talk(self, peer: Hashable, event: str, body: dict[str, Any]) -> None:
        """Send a talk, or merge it if held and one of the kinds merged."""
        if not self.holding or event not in (SUBSCRIPTIONS, GRAFT, PRUNE):
            self._talk(peer, event, body)
            return
        talks = self._pending.setdefault(peer, [])
        if event == SUBSCRIPTIONS:
            for key, other in (("subscribe", "unsubscribe"), ("unsubscribe", "subscribe")):
                for topic in body.get(key, ()):
                    if not _cancel(talks, event, other, topic):
                        _add(talks, event, key, topic)
        else:
            for topic in body["topics"]:
                _cancel(talks, _OPPOSITE[event], "topics", topic)  # the last word goes
                _add(talks, event, "topics", topic)


def _cancel(talks: list[tuple[str, dict[str, _Topics]]], event: str, key: str, topic: str) -> bool:
    """Take ``topic`` out of ``key`` of the talks of ``event``; whether it was there."""
    for kind, lists in talks:
        if kind == event and topic in lists[key]:
            del lists[key][topic]
            return True
    return False


def _add(talks: list[tuple[str, dict[str, _Topics]]], event: str, key: str, topic: str) -> None:
    """Add ``topic`` to ``key`` of a talk of ``event`` with room, or of a new one."""
    room = None
    for kind, lists in talks:
        if kind == event:
            if topic in lists[key]:
                return
            if room is None and len(lists[key]) < MAX_TOPICS_PER_TALK:
                room = lists
    if room is None:
        keys = ("subscribe", "unsubscribe") if event == SUBSCRIPTIONS else ("topics",)
        room = {k: {} for k in keys}
        talks.append((event, room))
    room[key][topic] = None
