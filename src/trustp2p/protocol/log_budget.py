"""
How many log lines each kind of event may make: a flood of bad connections must not
become a flood of log lines, which would be a denial of service of its own (on the
disk, and on the operator who reads them). No I/O but the logging call it wraps.

"""

from __future__ import annotations

__all__ = ["LogBudget"]

import logging
import time
from collections.abc import Callable
from typing import Any

_Logger = logging.Logger | logging.LoggerAdapter[Any]


class LogBudget:
    """
    At most ``lines`` lines for each kind of event in a ``window`` of seconds (the first
    ``lines`` of the window); the events past that are logged at DEBUG only and counted,
    and the next line of that kind let through says how many there were. If none comes,
    :meth:`summarise` says it, once their window ended (its owner calls it at
    :meth:`next_summary`, and when it stops).

    The kinds are a few fixed strings ("handshake failed", "refused"...), chosen by the
    caller: the table holds one entry per kind.
    """

    def __init__(
        self, lines: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if lines < 1 or window <= 0:
            raise ValueError(f"need lines >= 1 and window > 0, not {lines} and {window:g}")
        self.lines = lines
        self.window = window
        self._clock = clock
        self._kinds: dict[str, list[float]] = {}  # kind: [window start, lines, unlogged]
        # Where the events of a kind that went to DEBUG would have been logged, and the
        # first character of their lines (README, "Configuration and logs").
        self._where: dict[str, tuple[_Logger, int, str]] = {}

    def now(self) -> float:
        """The budget's clock."""
        return self._clock()

    def allow(self, kind: str) -> int | None:
        """
        Whether an event of ``kind`` may be logged now: ``None`` if not (log it at DEBUG),
        else how many of its kind were not logged since the last line (0 usually).
        """
        now = self._clock()
        entry = self._kinds.get(kind)
        if entry is None:
            entry = self._kinds[kind] = [now, 0, 0]
        elif now - entry[0] >= self.window:
            entry[0], entry[1] = now, 0
        if entry[1] >= self.lines:
            entry[2] += 1
            return None
        entry[1] += 1
        unlogged, entry[2] = int(entry[2]), 0
        return unlogged

    def log(
        self,
        logger: _Logger,
        level: int,
        kind: str,
        message: str,
        *args: object,
        stacklevel: int = 1,
        exc_info: bool = False,
    ) -> None:
        """Log ``message % args`` at ``level`` within the budget of ``kind``, else at
        DEBUG; a line let through after some weren't says how many. The record names
        the caller's line (``stacklevel`` as :meth:`logging.Logger.log`'s, counted from
        the caller of this method); ``exc_info`` adds the exception being handled."""
        unlogged = self.allow(kind)
        stacklevel += 1
        info = True if exc_info else None  # (False would be kept in the record)
        if unlogged is None:
            # The summary is of every peer's events: not in one peer's adapter.
            plain = logger.logger if isinstance(logger, logging.LoggerAdapter) else logger
            mark = message[0] if message[:1] in ("=", "!", "x") else "!"
            self._where[kind] = (plain, level, mark)
            logger.debug(message, *args, exc_info=info, stacklevel=stacklevel)
        elif unlogged:
            message += " (and %d more since, at DEBUG)"
            logger.log(level, message, *args, unlogged, exc_info=info, stacklevel=stacklevel)
        else:
            logger.log(level, message, *args, exc_info=info, stacklevel=stacklevel)

    def next_summary(self) -> float | None:
        """When (on the budget's clock) the first window with events left unlogged by
        :meth:`log` ends; ``None`` if there are none."""
        kinds = self._kinds
        ends = [kinds[kind][0] + self.window for kind in self._where if kinds[kind][2]]
        return min(ends) if ends else None

    def summarise(self, *, every: bool = False) -> None:
        """
        For each kind whose window ended with events :meth:`log` left unlogged, log how
        many, at the level they missed; the count starts over. ``every``: each kind with
        such events, whether its window ended or not (its owner stops).
        """
        now = self._clock()
        for kind, entry in self._kinds.items():
            if not entry[2] or kind not in self._where:
                continue  # (counted by allow() alone: its caller logs)
            if not every and now - entry[0] < self.window:
                continue
            logger, level, mark = self._where[kind]
            logger.log(
                level,
                "%s %d more %r events in the last %.3g s, logged at DEBUG only",
                mark,
                entry[2],
                kind,
                now - entry[0],
            )
            entry[2] = 0
