"""
Whom ``publish()`` waits for, and how long, free of I/O: :class:`PublishPacing`.

A node's ``publish()`` waits for the write buffers of the peers that carry its topic to
drain, as ``send()`` does, so that the application's own burst doesn't fill their send
queues (gossip past them is dropped for that peer, which catches it up later). A peer
must not hold the node's publishing, though:

- one ``publish()`` waits :data:`PUBLISH_WAIT` seconds at most;
- a peer is *slow* once it is still behind when a wait ends, or once its *late* waits
  (those longer than :data:`LATE_WAIT` of :data:`PUBLISH_WAIT`) add up to
  :data:`PUBLISH_WAIT` within one window of :data:`WAIT_WINDOW` seconds: found by an
  attacker, a peer that read its buffer just before each second was up was never still
  behind, and held every ``publish()`` ~0.8 s. A peer that drains steadily, however
  slowly, drains within a fraction of a second at each publish: it paces the publisher
  as it always did (found in review: counting every wait made an honest subscriber on a
  2 MB/s link slow in a burst, and the burst's tail was dropped for it);
- a slow peer isn't waited for until it has been seen keeping up (its write buffer not
  full at each ``publish()``) for :data:`KEEP_UP` seconds: it left at once before;
- all peers' late waits together make ``publish()`` wait :data:`NODE_WAIT_SHARE` of
  each window at most, so that many connections, each within its own bound, can't add
  up. Waits under :data:`LATE_WAIT` count towards nothing: that is backpressure, the
  publisher paced to the subscribers that read steadily, however slowly. A peer can
  hold each publish that long, as an honest subscriber on a slow link does; counting
  them in the node's share (found in review) dropped the end of a long burst for such a
  subscriber, past what the origin's log keeps for catch-up.

The caller says which peers carry the topic and whether each one's buffer is full
(:meth:`PublishPacing.plan`), waits for those named, and says how long each took
(:meth:`PublishPacing.waited`).

"""

from __future__ import annotations

__all__ = [
    "KEEP_UP",
    "LATE_WAIT",
    "NODE_WAIT_SHARE",
    "PUBLISH_WAIT",
    "WAIT_WINDOW",
    "PublishPacing",
]

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

PUBLISH_WAIT = 1.0
"""Seconds one ``publish()`` waits at most; also what one peer may make it wait in all
per :data:`WAIT_WINDOW` before it is slow."""

WAIT_WINDOW = 10.0
"""Seconds of the window over which waits are added up (per peer, and for the node)."""

KEEP_UP = 10.0
"""Seconds a slow peer must be seen keeping up before ``publish()`` waits for it again."""

LATE_WAIT = 0.25
"""Share of :data:`PUBLISH_WAIT` past which a peer's wait is late, and counts towards its
being slow (and the node's share): a peer that drains only then holds each publish a
quarter of a second at least. A subscriber that reads 100 KB messages over a 2 MB/s
link, or reads its socket every 0.2 s, drains sooner."""

NODE_WAIT_SHARE = 0.5
"""Share of each :data:`WAIT_WINDOW` that ``publish()`` may spend waiting, for all
peers together: publishing goes on at half its speed at least, whoever is behind."""


class PublishPacing(Generic[K]):
    """
    Whom a node's ``publish()`` waits for, and how long (see the module docstring).

    Args:
        clock: Monotonic seconds.
        wait: Seconds one publish waits at most (:data:`PUBLISH_WAIT`), and one peer's
            waits in all per window before it is slow.
        window: Seconds over which waits are added up (:data:`WAIT_WINDOW`).
        keep_up: Seconds a slow peer must be seen keeping up (:data:`KEEP_UP`).
        share: Share of each window spent in late waits at most (:data:`NODE_WAIT_SHARE`).
        late: Share of ``wait`` past which a wait is late (:data:`LATE_WAIT`).

    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        wait: float = PUBLISH_WAIT,
        window: float = WAIT_WINDOW,
        keep_up: float = KEEP_UP,
        share: float = NODE_WAIT_SHARE,
        late: float = LATE_WAIT,
    ) -> None:
        self._clock = clock
        self.wait = wait
        self.window = window
        self.keep_up = keep_up
        self.share = share
        self.late = late
        self._window_start = -math.inf  # (the clock may not run yet)
        self._node_waited = 0.0  # seconds of late waits in this window, for all peers
        self._waited: dict[K, float] = {}  # seconds of late waits for each peer, the same
        # Slow peers -> since when each was seen keeping up (None: behind last time).
        self._slow: dict[K, float | None] = {}
        self._cut = False  # the last wait was cut short by the node's share

    @property
    def slow(self) -> set[K]:
        """The peers not waited for now."""
        return set(self._slow)

    def plan(self, behind: Mapping[K, bool]) -> tuple[list[K], float]:
        """
        Whom a publish waits for, and how long at most.

        Args:
            behind: The peers that carry the message's topic, and whether each one's
                write buffer is full now.

        Returns:
            The peers to wait for (behind, and not slow), and the seconds to wait for
            them at most; no peer and 0 when the node waited its share of the window.

        """
        now = self._clock()
        if now - self._window_start >= self.window:
            self._window_start, self._node_waited = now, 0.0
            self._waited.clear()
        slow = self._slow
        for peer, is_behind in behind.items():
            if peer not in slow:
                continue
            since = slow[peer]
            if is_behind:
                slow[peer] = None
            elif since is None:
                slow[peer] = now
            elif now - since >= self.keep_up:
                del slow[peer]
                self._waited.pop(peer, None)
        timeout = min(self.wait, self.window * self.share - self._node_waited)
        peers = [peer for peer, is_behind in behind.items() if is_behind and peer not in slow]
        if timeout <= 0 or not peers:
            return [], 0.0
        self._cut = timeout < self.wait
        return peers, timeout

    def waited(self, took: Mapping[K, float | None], elapsed: float) -> None:
        """
        A publish waited ``elapsed`` seconds for the peers :meth:`plan` named.

        Args:
            took: For each of them, the seconds it took to drain; None if it was still
                behind when the wait ended (it is slow then, unless the wait was cut
                short by the node's share: the others' doing). Only late waits count.
            elapsed: The seconds the publish waited.

        """
        late = self.late * self.wait
        if elapsed > late or self._cut:  # (a wait the share cut short counts whole)
            self._node_waited += elapsed
        for peer, seconds in took.items():
            if seconds is None and not self._cut:
                self._slow[peer] = None
                continue
            seconds = elapsed if seconds is None else seconds
            if seconds > late:  # (a steady reader drains sooner: it paces the publisher)
                total = self._waited[peer] = self._waited.get(peer, 0.0) + seconds
                if total >= self.wait:
                    self._slow[peer] = None

    def forget(self, peer: K) -> None:
        """``peer`` is gone."""
        self._slow.pop(peer, None)
        self._waited.pop(peer, None)
