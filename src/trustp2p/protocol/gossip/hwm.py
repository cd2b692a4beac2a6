"""
The marks a node answers ``gossip/hwm`` with, free of I/O: per topic, the highest
:data:`~.catchup.MAX_HWM_ORIGINS` of its streams' marks, read from the log for each
request while :data:`HWM_READ_RATE` streams a second allow, else as last read.

Found by an attacker: with 12,000 origins in a topic's log (made in 4 s by one peer),
each answer read and sorted them all, 6 ms of the event loop for an answer of 78 KB, at
one token of the asker's request budget: one peer id drew 170 MB for 172 KB of requests
and 14 s of CPU in 23 s; four saturated the node. Past the read rate (which honest
peers, asking once a connection and once a ``catchup_interval``, don't reach), an
answer gives what the log held at the last read: a peer may fetch less than there is
this round, and the rest the next. An answer's size is charged as a fetch's is.

"""

from __future__ import annotations

__all__ = [
    "HWM_READ_BURST",
    "HWM_READ_RATE",
    "HWM_STALE",
    "MIN_READ",
    "HwmMarks",
    "best_marks",
    "fit_marks",
]

import heapq
import time
from collections.abc import Callable, Mapping
from operator import itemgetter

from ..limits import TokenBucket
from ..shared_text import share
from .catchup import MAX_HWM_ORIGINS

HWM_READ_RATE = 100_000.0
"""Streams read a second, node-wide, to answer ``gossip/hwm`` requests, past
:data:`HWM_READ_BURST`; a read counts at least :data:`MIN_READ`. A read of 12,000
streams took 8 to 16 ms on the 2-core machine of BENCHMARKS.md: about a tenth of a core."""

HWM_READ_BURST = 200_000

MIN_READ = 1000

HWM_STALE = 1.0
"""Seconds after which a topic's marks are read again whatever the budget (found in
review: a peer asking about another topic a hundred times a second kept the budget
spent, and a topic's answers frozen at their last read)."""

_ENTRY_BYTES = 4  # the quotes, colon and comma of an origin's entry in the answer
_TOPIC_BYTES = 7  # the quotes, colon, braces and comma of a topic's


def best_marks(streams: Mapping[str, int]) -> dict[str, int]:
    """The highest :data:`~.catchup.MAX_HWM_ORIGINS` of a topic's ``streams``' marks (by
    stream key), by origin."""
    best = heapq.nlargest(MAX_HWM_ORIGINS, streams.items(), key=itemgetter(1))
    # The origin of each stream key, as split_stream_key gives it (its topic unused).
    return {share(stream.rpartition("\0")[2]): seq for stream, seq in best}


def fit_marks(
    marks: Mapping[str, Mapping[str, int]], max_bytes: int
) -> tuple[dict[str, Mapping[str, int]], int]:
    """
    ``marks`` (per topic, by origin, the highest first) cut to about ``max_bytes`` of
    an answer, the highest of each topic kept, in topic order; and their size.

    Found by a tester: a node with a smaller ``max_package_size`` than its peers' was
    sent answers over it, and closed each such connection with 1009, on every redial.
    """
    fitted: dict[str, Mapping[str, int]] = {}
    size = 0
    for topic, origins in marks.items():
        size += len(topic) + _TOPIC_BYTES
        entries = sum(_entry_size(origin, seq) for origin, seq in origins.items())
        if size + entries <= max_bytes:
            fitted[topic] = origins
            size += entries
            continue
        kept = fitted[topic] = {}
        for origin, seq in origins.items():
            entry = _entry_size(origin, seq)
            if size + entry > max_bytes:
                break
            kept[origin] = seq
            size += entry
    return fitted, size


def _entry_size(origin: str, seq: int) -> int:
    return len(origin) + len(str(seq)) + _ENTRY_BYTES


def _marks_size(marks: Mapping[str, int]) -> int:
    """The sum of the marks' :func:`_entry_size`, without a call per entry: the digits
    of n numbers are their text joined by commas, less the n - 1 commas."""
    if not marks:
        return 0
    digits = len(",".join(map(str, marks.values()))) - len(marks) + 1
    return sum(map(len, marks)) + digits + _ENTRY_BYTES * len(marks)


class HwmMarks:
    """
    Per topic, its :func:`best_marks`, read from ``high_water`` each time while the
    read budget allows, else as last read; call it with a topic.

    Args:
        high_water: Per topic, the high-water mark of each of its streams in the log
            (by stream key).
        rate: Streams read a second...
        burst: ...and at most this many at once.
        clock: Monotonic seconds.

    """

    def __init__(
        self,
        high_water: Callable[[str], Mapping[str, int]],
        *,
        rate: float = HWM_READ_RATE,
        burst: int = HWM_READ_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._high_water = high_water
        self._clock = clock
        self._reads = TokenBucket(rate, burst, clock())
        self._topics: dict[str, tuple[dict[str, int], int, float]] = {}  # marks, size, read

    def __call__(self, topic: str) -> dict[str, int]:
        """``topic``'s marks (not to be changed: they may answer later requests too)."""
        return self.read(topic)[0]

    def size(self, topic: str) -> int:
        """About how many bytes ``topic``'s marks took in the last answer."""
        kept = self._topics.get(topic)
        return 0 if kept is None else kept[1]

    def read(self, topic: str) -> tuple[dict[str, int], int]:
        """``topic``'s marks and their size, read from the log if the budget allows,
        they were never read or are :data:`HWM_STALE` old, else as last read."""
        now = self._clock()
        kept = self._topics.get(topic)
        if kept is not None and self._reads.level(now) <= 0 and now - kept[2] < HWM_STALE:
            return kept[0], kept[1]
        streams = self._high_water(topic)
        self._reads.spend(now, max(len(streams), MIN_READ))
        marks = best_marks(streams)
        size = _marks_size(marks)
        self._topics[topic] = (marks, size, now)
        return marks, size
