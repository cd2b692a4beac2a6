"""
What a router remembers of the messages it didn't take as they came, for their copies:
those shed (dropped unseen, the node's handlers of the topic behind), and those not sent
on for their hops. Both bounded by count, so that a flood of ids can't grow them. No I/O.

"""

from __future__ import annotations

__all__ = ["HOP_LIMITED_KEPT", "SHED_FOR", "SHED_KEPT", "Copies"]

import dataclasses

from .message import GossipMessage
from .recent import RecentMessages
from .seen import SeenIds

HOP_LIMITED_KEPT = 4096
"""Ids of messages not sent on for their hops that a router remembers, the newest: a
copy that comes with fewer hops sends one on (:meth:`Copies.fewer_hops`)."""

SHED_KEPT = 4096
"""Ids of messages shed that a router remembers, the newest (see :data:`SHED_FOR`)."""

SHED_FOR = 10.0
"""Seconds during which the copies of a message shed are dropped as they come, as those
of a message seen are: by id, before their signature is checked or their sender's share
of ``gossip_node_rate`` spent, and not asked for (``iwant``) when announced. Not seen:
catch-up still fetches it. Each copy was checked and shed again, and each of their
senders was owed a catch-up round (review81 F2). Copies come within a few heartbeats (a
relay announces what it holds for ``history`` heartbeats); a copy after this is checked
and, if its topic is still over its share, shed again."""


class Copies:
    """
    The ids shed lately and those not sent on for their hops.

    Args:
        seen: The router's ids seen: ``id in copies`` is true of those too.

    """

    __slots__ = ("_hop_limited", "_seen", "_shed")

    def __init__(self, seen: SeenIds) -> None:
        self._seen = seen
        self._shed = SeenIds(SHED_KEPT, SHED_FOR)
        self._hop_limited: dict[str, None] = {}

    def __contains__(self, message_id: object) -> bool:
        """Whether a copy of ``message_id`` is not wanted: seen, or shed lately."""
        return message_id in self._seen or message_id in self._shed

    def shed(self, message_id: str, now: float) -> None:
        """The message was shed at ``now``: its copies are dropped until :data:`SHED_FOR`
        after it (or until :data:`SHED_KEPT` newer ones were shed)."""
        self._shed.add(message_id, now)

    def expire(self, now: float) -> None:
        self._shed.expire(now)

    def hop_limited(self, message_id: str) -> None:
        """The message was not sent on for its hops: a copy with fewer may send it on."""
        self._hop_limited[message_id] = None
        while len(self._hop_limited) > HOP_LIMITED_KEPT:
            del self._hop_limited[next(iter(self._hop_limited))]

    def fewer_hops(
        self, message_id: str, hops: object, max_hops: int, recent: RecentMessages
    ) -> GossipMessage | None:
        """
        A copy of a message came with ``hops`` (not signed: any value).

        Returns:
            The message with those hops, to send on now (held in ``recent`` in place of
            the other), if it was not sent on for its hops, is held still and these are
            few enough; once. None otherwise.

        """
        if message_id not in self._hop_limited or type(hops) is not int:
            return None
        message = recent.get(message_id)
        if message is None or not 0 <= hops or hops + 1 >= max_hops:
            return None
        del self._hop_limited[message_id]
        fewer = dataclasses.replace(message, hops=hops)
        recent.replace(fewer)
        return fewer
