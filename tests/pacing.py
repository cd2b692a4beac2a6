"""
Tests whose sleeps are the test: real time against a deadline of the code under test.

On a loaded machine a sleep of 0.6 deadline can take longer than the deadline (the
process wasn't scheduled), and the scenario then tests something else than it says: a
peer that fell silent, not one that kept to its pace. :func:`paced` runs such a scenario
again when, and only when, one of its steps overshot, so that a failure is reported
whenever the test kept its own pace.

"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Pace:
    """The sleeps of one run of a scenario, and whether each kept within ``limit``."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.longest = 0.0

    async def sleep(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(delay)
        self.longest = max(self.longest, loop.time() - start)

    @property
    def kept(self) -> bool:
        return self.longest <= self.limit


async def paced(scenario: Callable[[Pace], Awaitable[T]], *, limit: float, attempts: int = 3) -> T:
    """Run ``scenario(pace)``; if it fails after one of its ``pace.sleep()`` calls took
    longer than ``limit`` seconds, run it again (``attempts`` times in all)."""
    for attempt in range(1, attempts + 1):
        pace = Pace(limit)
        try:
            return await scenario(pace)
        except Exception:
            if pace.kept or attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
