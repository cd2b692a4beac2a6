"""
Our wall clock against our peers': the median of the offsets their version talks show.

Gossip ages every message by the wall clock: a node whose clock is ahead of its
peers' by more than ``log_max_age`` drops all their messages as too old (a hub relays
none of them), and one behind has all its own dropped by them, while its ``publish()``
succeeds (found by a tester: a hub whose clock had stepped two days ahead relayed
nothing, and its log blamed the messages). A trustp2p peer's version talk carries its
wall clock (:data:`TIME_KEY`, in seconds, as Bitcoin's ``version`` message does, for
the same check).

Each offset is kept against our monotonic clock, so that a step of our wall clock
(an NTP correction, a restored snapshot) shows at the next :meth:`PeerClocks.check`,
and for as long as a connection of its key is open. One is kept per key (the node
passes a peer's network group on the internet): a peer's own addresses can't outvote
the others. Once :data:`LEAST_CLOCKS` keys gave one, their median says whether ours is
off; with fewer, only if all of them put it more than ``alone`` seconds off, the same
way (a client of one server is told its clock is days off), or all of them put it more
than ``ahead`` seconds ahead (past ``CLOCK_SKEW``, its peers drop what it publishes as
from the future: found by a tester, a client of four servers, ten minutes ahead, lost
all its 460 messages and said nothing). No I/O here.

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
    "clock_key",
    "peer_time",
    "with_time",
]

import statistics
from collections.abc import Hashable
from dataclasses import dataclass

from .gossip.streams import CLOCK_SKEW
from .hosts import address_key, is_public, netgroup
from .package import Body

TIME_KEY = "time"
"""The version body's key for the sender's wall clock, in whole seconds since 1970
(trustp2p's addition: the original ignores keys it doesn't know)."""

CLOCK_OFF = CLOCK_SKEW
"""Seconds the median of the peers' offsets may reach before our clock is called off:
:data:`~trustp2p.protocol.gossip.streams.CLOCK_SKEW`, past which the gossip rules that
allow for skew (the delivery marks forgotten, an origin numbering again) misjudge. It
is back in line once within half of it (flapping around the bound says nothing)."""

LEAST_CLOCKS = 5
"""Offsets, of as many keys, needed before their median alone decides."""

MOST_CLOCKS = 64
"""Offsets kept at most: the latest key's, the oldest forgotten first."""

MAX_TIME = 2**53
"""The largest ``time`` taken, either side of 1970 (JSON numbers are exact up to it;
a 400-digit one overflowed a float conversion: found in review)."""


def with_time(body: Body, now: float) -> Body:
    """``body`` (a version body) with :data:`TIME_KEY` set to ``now``, in seconds to
    the millisecond (whole seconds, as first sent, read 0-1 s low: every node of one
    host said it was 1.0 s ahead of its peers, found by a tester)."""
    return {**body, TIME_KEY: round(now, 3)}


def peer_time(body: Body) -> float | None:
    """The wall clock a version body carries, in seconds; None if it carries none (the
    original's) or one that isn't a number within :data:`MAX_TIME`."""
    value = body.get(TIME_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not -MAX_TIME <= value <= MAX_TIME:  # (also NaN and infinities)
        return None
    return float(value)


def clock_key(host: str) -> str:
    """Whose word on the time a peer at ``host`` gives: its network group on the
    internet (an IPv4 /16, an IPv6 /32), its address on a private network or a link (a
    LAN's, a container network's peers are apart: found in review, 40 peers of one
    /16 counted once)."""
    return netgroup(host) if is_public(host) else address_key(host)


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    """Our clock was found off, or back in line with the peers' (``off``)."""

    offset: float
    """The median of the peers' clocks minus ours, in seconds: positive if ours is
    behind theirs."""
    peers: int
    """How many offsets (keys) the median is of."""
    off: bool
    """Whether our clock is off."""


class PeerClocks:
    """
    The offsets of the peers' clocks from ours, one per key, each kept while a
    connection of its key is open; :meth:`check` returns a :class:`ClockVerdict` when
    our clock is found off, or back in line, None otherwise.

    Args:
        bound: Seconds the median may reach (:data:`CLOCK_OFF`).
        alone: Seconds that all of fewer than ``least`` offsets must exceed, the same
            way, for our clock to be off (None: fewer never decide).
        ahead: Seconds that our clock must be ahead of all of fewer than ``least``
            offsets for it to be off (None: ``alone`` decides alone).
        least: Offsets whose median alone decides.
        most: Offsets kept at most.

    """

    __slots__ = (
        "_ahead",
        "_alone",
        "_bound",
        "_keys",
        "_least",
        "_most",
        "_off",
        "_open",
        "_samples",
    )

    def __init__(
        self,
        *,
        bound: float = CLOCK_OFF,
        alone: float | None = None,
        ahead: float | None = None,
        least: int = LEAST_CLOCKS,
        most: int = MOST_CLOCKS,
    ) -> None:
        self._bound = bound
        self._alone = alone
        self._ahead = ahead
        self._least = least
        self._most = most
        self._off = False
        self._samples: dict[str, float] = {}  # key -> its clock less our monotonic one
        self._keys: dict[Hashable, str] = {}  # connection -> its key
        self._open: dict[str, int] = {}  # key -> its connections open

    @property
    def peers(self) -> int:
        """How many offsets are kept."""
        return len(self._samples)

    def add(self, conn: Hashable, key: str, their_time: float, monotonic: float) -> None:
        """Connection ``conn`` of ``key`` said its clock read ``their_time`` (seconds
        since 1970) when ours read ``monotonic``: it replaces ``key``'s offset."""
        self.remove(conn)
        samples = self._samples
        samples.pop(key, None)
        samples[key] = their_time - monotonic
        self._keys[conn] = key
        self._open[key] = self._open.get(key, 0) + 1
        if len(samples) > self._most:
            oldest = next(iter(samples))
            del samples[oldest], self._open[oldest]
            for gone in [c for c, k in self._keys.items() if k == oldest]:
                del self._keys[gone]

    def remove(self, conn: Hashable) -> None:
        """``conn`` closed: its key's offset goes with the last of its connections."""
        key = self._keys.pop(conn, None)
        if key is None:
            return
        left = self._open[key] - 1
        if left:
            self._open[key] = left
        else:
            del self._open[key], self._samples[key]

    def offset(self, wall: float, monotonic: float) -> float | None:
        """The median of the peers' clocks minus ours (``wall`` now, seconds since
        1970; ``monotonic`` at the same moment); None without an offset."""
        if not self._samples:
            return None
        return statistics.median(self._samples.values()) + monotonic - wall

    def check(self, wall: float, monotonic: float) -> ClockVerdict | None:
        """Whether our clock (``wall`` now, ``monotonic`` at the same moment) was found
        off, or back in line, since the last verdict."""
        median = self.offset(wall, monotonic)
        if median is None:
            return None
        count = len(self._samples)
        if self._off:
            off = abs(median) > self._bound / 2
        elif count >= self._least:
            off = abs(median) > self._bound
        else:
            off = self._all_beyond(monotonic - wall)
        if off == self._off:
            return None
        self._off = off
        return ClockVerdict(median, count, off)

    def _all_beyond(self, shift: float) -> bool:
        """Whether all the offsets put our clock past ``alone`` the same way, or past
        ``ahead`` ahead."""
        offsets = [sample + shift for sample in self._samples.values()]
        alone, ahead = self._alone, self._ahead
        if alone is not None and (
            all(o > alone for o in offsets) or all(o < -alone for o in offsets)
        ):
            return True
        return ahead is not None and all(o < -ahead for o in offsets)
