"""
Our wall clock against our peers': the median of the offsets their version talks show.

Gossip ages every message by the wall clock: a node whose clock is ahead of its
peers' by more than ``log_max_age`` drops all their messages as too old, and one
behind has all its own dropped by them, while its ``publish()`` succeeds (found by a
tester: a hub whose clock had stepped two days ahead relayed nothing, and its log
blamed the messages). A trustp2p peer's version talk carries its wall clock
(:data:`TIME_KEY`, as Bitcoin's ``version`` message does, for the same check): each
gives one offset, and once :data:`LEAST_CLOCKS` networks have, their median says
whether ours is off. One offset is kept per key (the node passes a peer's network
group), so a peer's own addresses can't outvote the others. No I/O here.

"""

from __future__ import annotations

__all__ = [
    "CLOCK_OFF",
    "LEAST_CLOCKS",
    "MAX_TIME",
    "MOST_CLOCKS",
    "TIME_KEY",
    "ClockVerdict",
    "PeerClocks",
    "peer_time",
    "with_time",
]

import statistics
from dataclasses import dataclass

from .gossip.streams import CLOCK_SKEW
from .package import Body

TIME_KEY = "time"
"""The version body's key for the sender's wall clock, in milliseconds since 1970
(trustp2p's addition: the original ignores keys it doesn't know)."""

CLOCK_OFF = CLOCK_SKEW
"""Seconds the median of the peers' offsets may reach before our clock is called off:
:data:`~trustp2p.protocol.gossip.streams.CLOCK_SKEW`, past which the gossip rules that
allow for skew (the delivery marks forgotten, an origin numbering again) misjudge."""

LEAST_CLOCKS = 5
"""Offsets, of as many networks, needed before a median is taken (Bitcoin's too)."""

MOST_CLOCKS = 64
"""Offsets kept at most: the latest key's, the oldest forgotten first."""


MAX_TIME = 2**53
"""The largest ``time`` (ms) taken, either side of 1970: JSON numbers are exact up
to it, and a longer one (JSON allows any) is no clock."""


def with_time(body: Body, now: float) -> Body:
    """``body`` (a version body) with :data:`TIME_KEY` set to ``now`` (seconds)."""
    return {**body, TIME_KEY: int(now * 1000)}


def peer_time(body: Body) -> float | None:
    """The wall clock a version body carries, in seconds; None if it carries none (the
    original's) or one that isn't a finite number."""
    value = body.get(TIME_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not -MAX_TIME <= value <= MAX_TIME:  # (also NaN and infinities)
        return None  # (a 400-digit int overflowed a float conversion: found in review)
    return value / 1000


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    """Our clock was found off, or back in line with the peers' (``off``)."""

    offset: float
    """The median of the peers' clocks minus ours, in seconds: positive if ours is
    behind theirs."""
    peers: int
    """How many offsets (networks) the median is of."""
    off: bool
    """Whether ``offset`` is beyond the bound."""


class PeerClocks:
    """
    The offsets of the peers' clocks from ours, one per key, and whether their median
    is beyond ``bound``: :meth:`add` returns a :class:`ClockVerdict` when that
    changes (found off, back in line), None otherwise.
    """

    __slots__ = ("_bound", "_least", "_most", "_off", "_samples")

    def __init__(
        self, *, bound: float = CLOCK_OFF, least: int = LEAST_CLOCKS, most: int = MOST_CLOCKS
    ) -> None:
        self._bound = bound
        self._least = least
        self._most = most
        self._off = False
        self._samples: dict[str, float] = {}

    @property
    def offset(self) -> float | None:
        """The median offset (see :attr:`ClockVerdict.offset`); None while fewer than
        ``least`` keys gave one."""
        if len(self._samples) < self._least:
            return None
        return statistics.median(self._samples.values())

    @property
    def peers(self) -> int:
        """How many offsets are kept."""
        return len(self._samples)

    def add(self, key: str, offset: float) -> ClockVerdict | None:
        """One peer's offset (its clock minus ours, seconds), for ``key``: it replaces
        that key's last one."""
        samples = self._samples
        samples.pop(key, None)
        samples[key] = offset
        if len(samples) > self._most:
            del samples[next(iter(samples))]
        median = self.offset
        if median is None:
            return None
        off = abs(median) > self._bound
        if off == self._off:
            return None
        self._off = off
        return ClockVerdict(median, len(samples), off)
