"""
When to say that the event loop was blocked: a handler or thread that calls blocking
code (``time.sleep``, a sync HTTP or database call) stops every connection of the node,
and its peers drop it for its missing pongs, while the node itself sees nothing wrong
(tester39 F4). A watchdog wakes every :attr:`LoopLag.interval` seconds and asks this
rule how late it woke. No I/O: the clock is given.

"""

from __future__ import annotations

__all__ = ["LOOP_LAG_INTERVAL", "MIN_LOOP_LAG_INTERVAL", "LoopLag"]

import time
from collections.abc import Callable

LOOP_LAG_INTERVAL = 1.0
"""Seconds between two wakes of the watchdog, at most: one timer a second."""

MIN_LOOP_LAG_INTERVAL = 0.05
"""Seconds between two wakes, at least, however small the threshold (review58: a
``loop_block_warning`` of 0.001 woke every node's loop 4,000 times a second)."""


class LoopLag:
    """
    How late the watchdog woke, and whether that is worth a warning.

    Args:
        threshold: Seconds the loop must have been blocked (past the wake that was due)
            for :meth:`woke` to report it. Must be positive.
        clock: The loop's clock (seconds, monotonic).

    Raises:
        ValueError: If ``threshold`` isn't a positive number.

    """

    def __init__(self, threshold: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, not {threshold!r}")
        self.threshold = threshold
        # A wake every quarter of the threshold: a block is measured within a quarter
        # (within MIN_LOOP_LAG_INTERVAL for thresholds under 0.2 s).
        self.interval = min(LOOP_LAG_INTERVAL, max(MIN_LOOP_LAG_INTERVAL, threshold / 4))
        self._clock = clock
        self._due: float | None = None

    def sleep(self) -> float:
        """Seconds the watchdog should sleep now; :meth:`woke` measures against the end."""
        self._due = self._clock() + self.interval
        return self.interval

    def woke(self) -> float | None:
        """
        The watchdog woke: how many seconds the loop was blocked if that is at least
        ``threshold``, else ``None``. ``None`` too without a :meth:`sleep` before it.
        """
        due, self._due = self._due, None
        if due is None:
            return None
        late = self._clock() - due
        return late if late >= self.threshold else None
