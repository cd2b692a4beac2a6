"""
The message log's delivery marks: which to forget when there are too many, or when they
are too old (:func:`forget_marks`).

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["forget_marks", "stale_marks"]

import math
from collections.abc import Container, Mapping


def forget_marks(
    delivered: dict[str, int],
    marked: dict[str, float],
    moves: dict[str, int],
    kept: Container[str],
    max_idle: int,
    cutoff: float,
    young: float,
    now: float,
) -> tuple[list[str], int]:
    """
    Forget the marks :func:`stale_marks` names: take them out of ``delivered``,
    ``marked`` (when each last moved) and ``moves`` (how often).

    Returns:
        The origins forgotten, and the latest time one of their marks had moved (at
        ``now`` at most), in milliseconds rounded up; 0 if none was forgotten.

    """
    moved = 0
    forgotten = stale_marks(marked, moves, kept, max_idle, cutoff, young)
    for origin in forgotten:
        del delivered[origin]
        moves.pop(origin, None)
        moved = max(moved, math.ceil(min(marked.pop(origin), now) * 1000))
    return forgotten, moved


def stale_marks(
    marked: dict[str, float],
    moves: Mapping[str, int],
    kept: Container[str],
    max_idle: int,
    cutoff: float,
    young: float = math.inf,
) -> list[str]:
    """
    The delivery marks to forget: of the origins not ``kept`` (no message left), those
    that last moved before ``cutoff``, and past ``max_idle`` of them (a tenth more: each
    new origin would be over the bound again, and scan), those that moved the fewest
    times first (``moves``: the messages delivered or passed over; a flood's throwaway
    origins have one or two), then the least recently moved; none that moved at
    ``young`` or later. Found by an attacker: a flood of one-message origins pushed out
    the marks of publishers with a history, whose messages were then held to the time
    of the marks forgotten (less ``trustp2p.protocol.gossip.streams.CLOCK_SKEW``), and
    dropped if their clock lagged; and by the next, a flood of two-message origins did
    so when the rank was "more than one" (or the seq, which an origin picks), and a
    publisher's messages recorded before came back through ``CLOCK_SKEW``.
    """
    idle = [
        (moves.get(origin, 0), when, origin)
        for origin, when in marked.items()
        if origin not in kept
    ]
    excess = len(idle) - max_idle
    if excess > 0:
        excess += max_idle // 10
        idle.sort()
    return [
        origin
        for i, (_, when, origin) in enumerate(idle)
        if (i < excess and when < young) or when < cutoff
    ]
