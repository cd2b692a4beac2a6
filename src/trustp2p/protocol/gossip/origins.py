"""
The origins gone lately, free of I/O: for a while after an origin's connection to us
closed, a gap in its streams still waits for its own word, as while it is connected.

Found in review (review84 H1): a hub whose link to a slow publisher dropped for 10 s
took the word of the peers behind it (who lacked the publisher's missing messages as
it did), gave them up and said so to those peers; another hub that kept its link got
them 13 s later. An origin redials: its word is waited for :data:`ORIGIN_GRACE` seconds.
"""

from __future__ import annotations

__all__ = ["MAX_GONE", "ORIGIN_GRACE", "OriginsGone"]

from collections import OrderedDict
from collections.abc import Callable

ORIGIN_GRACE = 60.0
"""Seconds an origin gone is still waited for (two default ``gap_timeout``\\ s)."""

MAX_GONE = 4096
"""Most origins remembered as gone; the oldest are forgotten first."""


class OriginsGone:
    """The peer ids whose connection closed lately, each with when."""

    __slots__ = ("_clock", "_gone", "grace", "limit")

    def __init__(
        self, clock: Callable[[], float], grace: float = ORIGIN_GRACE, limit: int = MAX_GONE
    ) -> None:
        self._clock = clock
        self._gone: OrderedDict[str, float] = OrderedDict()
        self.grace = grace
        self.limit = limit

    def gone(self, peer_id: str | None) -> None:
        """``peer_id``'s connection closed now (None: a plain peer's, unknown)."""
        if peer_id is None:
            return
        self._gone[peer_id] = self._clock()
        self._gone.move_to_end(peer_id)
        while len(self._gone) > self.limit:
            self._gone.popitem(last=False)

    def lately(self, peer_id: str) -> bool:
        """Whether ``peer_id``'s connection closed less than :attr:`grace` ago."""
        closed = self._gone.get(peer_id)
        return closed is not None and self._clock() - closed < self.grace
