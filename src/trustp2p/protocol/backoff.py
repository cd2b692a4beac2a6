"""Reconnection delays, as a generator (cf. websockets' ``client.backoff``). No I/O."""

from __future__ import annotations

__all__ = ["backoff"]

import random
from collections.abc import Callable, Iterator


def backoff(
    initial: float = 1.0,
    maximum: float = 60.0,
    factor: float = 2.0,
    jitter: float = 0.25,
    *,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """
    Yield delays before each reconnection attempt, in seconds.

    The delay starts at ``initial`` and is multiplied by ``factor`` after each attempt,
    up to ``maximum``. Each delay is then shortened by a random fraction of up to
    ``jitter``, so that peers dropped together don't all come back together.

    Args:
        initial: First delay, in seconds.
        maximum: Largest delay, in seconds.
        factor: Growth factor, at least 1.
        jitter: Largest random fraction taken off a delay, in [0, 1).
        rng: Returns a float in [0, 1); for tests.

    """
    # Check now, not at the first next(): misuse raises right away.
    if not 0 < initial <= maximum:
        raise ValueError(f"need 0 < initial <= maximum, not {initial} and {maximum}")
    if factor < 1:
        raise ValueError(f"factor must be at least 1, not {factor}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), not {jitter}")
    return _delays(initial, maximum, factor, jitter, rng)


def _delays(
    delay: float, maximum: float, factor: float, jitter: float, rng: Callable[[], float]
) -> Iterator[float]:
    while True:
        yield delay * (1 - jitter * rng())
        delay = min(delay * factor, maximum)
