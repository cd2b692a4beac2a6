"""
The origins gone lately, free of I/O: for a while after an origin's connection to us
closed, a gap in its streams still waits for its own word, as while it is connected.

Found in review (review84 H1): a hub whose link to a slow publisher dropped for 10 s
took the word of the peers behind it (who lacked the publisher's missing messages as
it did), gave them up and said so to those peers; another hub that kept its link got
them 13 s later. An origin redials: its word is waited for :data:`ORIGIN_GRACE` times
``gap_timeout`` (a gap of an origin gone for good is given up that much later; review87
G1: a fixed 60 s outlasted ten times a short ``gap_timeout``).
"""

from __future__ import annotations

__all__ = ["MAX_GONE", "ORIGIN_GRACE", "OriginsGone"]

from collections import OrderedDict
from collections.abc import Callable

ORIGIN_GRACE = 2.0
"""How long an origin gone is still waited for, in ``gap_timeout``\\ s (60 s by default)."""

MAX_GONE = 4096
"""Most origins remembered as gone; the oldest are forgotten first."""


class OriginsGone:
    """The peer ids whose connection closed lately, each with when: lately is less than
    :data:`ORIGIN_GRACE` times ``gap_timeout`` ago (:attr:`grace`, in seconds)."""

    __slots__ = ("_clock", "_gone", "grace", "limit")

    def __init__(
        self, clock: Callable[[], float], gap_timeout: float, limit: int = MAX_GONE
    ) -> None:
        self._clock = clock
        self._gone: OrderedDict[str, float] = OrderedDict()
        self.grace = ORIGIN_GRACE * gap_timeout
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
