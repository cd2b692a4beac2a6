"""
Reconnection delays, free of I/O: the generator of growing delays (cf. websockets'
``client.backoff``), the delays of one persistent URL (:class:`Reconnect`), and the
retry delay of a managed one (:func:`retry_delay`).

"""

from __future__ import annotations

__all__ = ["Reconnect", "backoff", "retry_delay", "served"]

import math
import random
from collections.abc import Callable, Iterator

from .close import CloseCode


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


def retry_delay(failures: int, initial: float, maximum: float, factor: float) -> float:
    """
    Seconds before a managed URL that failed ``failures`` times in a row may be dialled
    again: ``initial * factor ** (failures - 1)``, at most ``maximum``. No jitter: the
    store's candidates are shuffled already. Never overflows, however many failures.
    """
    steps = max(failures - 1, 0)
    if factor > 1 and steps > math.log(maximum / initial, factor):
        return maximum
    return min(maximum, initial * factor**steps)


class Reconnect:
    """
    The delays of one persistent URL, from :func:`backoff`:
    they grow with each failure and start over once a connection stayed up at least as
    long as the next delay, or ``initial`` seconds with a message from the peer.

    Args:
        clock: Current time in seconds.
        initial, maximum, factor, jitter: As for :func:`backoff`.
        rng: Returns a float in [0, 1); for tests.

    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        initial: float = 1.0,
        maximum: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._initial = initial
        self._new_delays: Callable[[], Iterator[float]] = lambda: backoff(
            initial, maximum, factor, jitter, rng=rng
        )
        self._delays = self._new_delays()
        self._opened_at: float | None = None

    def failed(self) -> float:
        """A dial failed, or the URL may not be dialled now: the delay before the next."""
        return next(self._delays)

    def opened(self) -> None:
        """A connection opened."""
        self._opened_at = self._clock()

    def closed(self, *, worked: bool = False) -> float:
        """The connection closed: the delay before dialling again (the shortest again
        if it stayed up as long as that delay, or, ``worked``, the peer spoke on it,
        at least ``initial`` seconds: a tester's clients came back 4-8 s after a
        server's second quick restart, their 3 s connections, a request answered,
        taken for one closed at once)."""
        delay = next(self._delays)
        opened_at, self._opened_at = self._opened_at, None
        lasted = -1.0 if opened_at is None else self._clock() - opened_at
        if lasted >= delay or (worked and lasted >= self._initial):
            self._delays = self._new_delays()
            delay = next(self._delays)
        return delay


_NO_STATUS = 1005  # a close frame without a code (review56: a peer's plain close)
_SERVED_CLOSES = frozenset(
    {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, _NO_STATUS, CloseCode.ABNORMAL_CLOSURE}
)


def served(messages_in: int, close_code: int | None) -> bool:
    """
    Whether a connection that received ``messages_in`` packages and closed with
    ``close_code`` served us (:meth:`Reconnect.closed`'s ``worked``): the peer spoke,
    and the close wasn't a refusal (a policy, protocol or size violation, "try again
    later", an internal error), but a stop, a restart or a dropped link.

    Found in review (review55 R6): "the peer spoke" alone held for every connection,
    a peer's introduction coming first, so a server that let us in and refused us a
    second later was redialled every ``reconnect_initial`` for ever.
    """
    return messages_in > 0 and close_code in _SERVED_CLOSES
