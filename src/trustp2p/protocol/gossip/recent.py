"""
The recent messages a router announces (``ihave``) and serves (``iwant``): those of the
last ``history`` heartbeats, one window each, with at most :data:`MAX_CACHE_BYTES` of
payload held. No I/O.

"""

from __future__ import annotations

__all__ = ["MAX_CACHE_BYTES", "RecentMessages", "worth_announcing"]

import itertools
from collections.abc import Hashable

from .message import GossipMessage

MAX_CACHE_BYTES = 32 * 2**20
"""Most payload of the recent messages held to announce and serve: past it, the oldest
is let go (neither announced nor served any more; catch-up serves it from the message
log). It kept the first that came, and refused the newest: a sender of about 11 MB/s
kept every other message, the node's own too, out (found in review)."""


def worth_announcing(message: GossipMessage, now: float, seen_ttl: float) -> bool:
    """
    Whether a message catch-up brought (not pushed) is worth announcing (``ihave``) at
    ``now`` (seconds since 1970): one younger than ``seen_ttl``, that peers which had it
    remember seeing, so that only those which lack it ask (review: a partition healed
    over one link reached the nodes beyond it only at their next catch-up round). An
    older one isn't: peers whose seen-cache forgot it would ask for what their logs
    hold (a new user's test: a joining node pushed its whole catch-up back, 45 MB).
    Nor one stamped more than ``seen_ttl`` ahead of ``now``: a publisher whose clock
    runs ahead would have its messages "fresh" for that much longer, for ever at the
    largest timestamp (found in review).
    """
    return abs(now * 1000 - message.timestamp) < seen_ttl * 1000


class RecentMessages:
    """
    The ids of the messages of the last ``history`` windows, and the payload of the
    newest of them, within ``max_bytes``.

    Args:
        history: Windows kept (one a heartbeat).
        max_bytes: Most payload held; :data:`MAX_CACHE_BYTES` by default.

    Attributes:
        size: The payload held, in bytes (:func:`~trustp2p.protocol.jsontext.text_size`).

    """

    __slots__ = ("_held", "_max_bytes", "_window", "_windows", "size")

    def __init__(self, history: int, max_bytes: int | None = None) -> None:
        self._windows: list[list[str]] = [[] for _ in range(history)]
        self._window = 0  # the number of the newest window
        # Held, in the order they came, with the window each is in (one let go may come
        # again in a later window: the earlier window's end doesn't let it go) and the
        # peer (or group of peers) that sent it (None: this node's own).
        self._held: dict[str, tuple[GossipMessage, int, Hashable]] = {}
        self._max_bytes = MAX_CACHE_BYTES if max_bytes is None else max_bytes
        self.size = 0

    def add(self, message: GossipMessage, sender: Hashable = None) -> None:
        """Hold ``message``, sent by ``sender`` (a peer, or its group), in the newest
        window (again: nothing), letting go of the oldest held past the bound; one larger
        than the bound is not held."""
        if message.id in self._held:
            return
        self._windows[0].append(message.id)  # (its id goes with the window, held or not)
        if message.data_size > self._max_bytes:
            return
        self._held[message.id] = (message, self._window, sender)
        self.size += message.data_size
        while self.size > self._max_bytes:
            self._let_go(next(iter(self._held)))

    def replace(self, message: GossipMessage) -> None:
        """Hold ``message`` in place of the one of its id, if that is held (in its
        window): a copy of it with fewer hops."""
        held = self._held.get(message.id)
        if held is not None:
            self._held[message.id] = (message, held[1], held[2])

    def get(self, message_id: str) -> GossipMessage | None:
        held = self._held.get(message_id)
        return None if held is None else held[0]

    def ids(self, topic: str, windows: int | None = None) -> list[str]:
        """The ids of ``topic``'s messages held, the newest window first (of the newest
        ``windows`` only, if given)."""
        held, newest = self._held, self._window
        return [
            i for age, window in enumerate(self._windows[:windows])
            for i in window
            if (h := held.get(i)) is not None and h[1] == newest - age and h[0].topic == topic
        ]  # fmt: skip

    def announceable(self, topic: str) -> list[str]:
        """The ids of ``topic``'s messages that are still held after the next
        :meth:`roll` (all windows but the oldest), the newest first: those an ``ihave``
        made now may name, as the ``iwant`` it draws comes after the heartbeat's roll.
        Found by an attacker (a43 F3): the oldest window announced, then dropped in the
        same heartbeat, made 11-33 % of announcements ask for what was gone, and honest
        relays' asks time out (a broken promise each, :data:`.lazy.BROKEN_FOR`)."""
        return self.ids(topic, len(self._windows) - 1)

    def fair(self, ids: list[str], limit: int) -> list[str]:
        """
        ``limit`` of ``ids`` at most, taken in turn from each peer that sent them (each
        peer's in their order; this node's own as one more peer): a peer that sent
        more than ``limit`` can't keep the others' out of an announcement.

        Found by an attacker (attacker39 O1): the first 500 (``max_ihave``) of a
        window's ids were announced to a peer refused a mesh seat, and no more; a
        connection that relayed 700 valid messages a second kept an honest publisher's
        out of them, and the refused peer's p50 went from 29 ms to 4-6 s.
        """
        if len(ids) <= limit:
            return ids
        held = self._held
        by_sender: dict[Hashable, list[str]] = {}
        for message_id in ids:
            h = held.get(message_id)
            by_sender.setdefault(None if h is None else h[2], []).append(message_id)
        turns = itertools.chain.from_iterable(itertools.zip_longest(*by_sender.values()))
        return list(itertools.islice((i for i in turns if i is not None), limit))

    def roll(self) -> list[str]:
        """A heartbeat: a new window; returns the ids of the oldest window, gone now
        (but those that came again in a later one)."""
        oldest = self._window - len(self._windows) + 1
        self._window += 1
        self._windows.insert(0, [])
        gone = []
        for message_id in self._windows.pop():
            held = self._held.get(message_id)
            if held is None or held[1] == oldest:
                self._let_go(message_id)
                gone.append(message_id)
        return gone

    def _let_go(self, message_id: str) -> None:
        held = self._held.pop(message_id, None)
        if held is not None:
            self.size -= held[0].data_size
