"""
Whom ``publish()`` waits for, and how long, free of I/O: :class:`PublishPacing`.

A node's ``publish()`` waits for the write buffers of the peers that carry its topic to
drain, as ``send()`` does, so that the application's own burst doesn't fill their send
queues (gossip past them is dropped for that peer, which catches it up later). A peer
must not hold the node's publishing, though. A peer's wait is judged by the rate at
which it takes the message published: it is *on time* while it lasts no longer than
the message's size at :data:`MIN_DRAIN_RATE` (:data:`LATE_WAIT` of :data:`PUBLISH_WAIT`
at least, :data:`PUBLISH_WAIT` at most; :meth:`PublishPacing.on_time`), and *late*
past that. Then:

- one ``publish()`` waits :data:`PUBLISH_WAIT` seconds at most;
- a peer is *slow* once it is still behind when a wait ends, or once its late waits add
  up to :data:`PUBLISH_WAIT` within one window of :data:`WAIT_WINDOW` seconds: found by
  an attacker, a peer that read its buffer just before each second was up was never
  still behind, and held every ``publish()`` ~0.8 s;
- a slow peer isn't waited for until it has been seen keeping up (its write buffer not
  full at each ``publish()``) for :data:`KEEP_UP` seconds: it left at once before;
- all peers' late waits together make ``publish()`` wait :data:`NODE_WAIT_SHARE` of
  each window at most, so that many connections, each within its own bound, can't add
  up. Once that share is spent, a publish still waits for the peers behind, as long as
  it is on time for them; a peer still behind then has waited late (found in review:
  waiting for no one then let three Sybil subscribers, taking turns, switch off
  backpressure for an honest subscriber, which lost the end of a long burst).

On-time waits count towards nothing: that is backpressure, the publisher paced to a
subscriber that takes its messages at :data:`MIN_DRAIN_RATE` at least, however large
they are (found in review: judging a wait by its seconds alone, a quarter of a second,
made a subscriber taking 100 KB messages at 300 KB/s slow after three publishes, and
the end of a long burst was dropped for it, past what the origin's log keeps; a half
second let a peer that read just in time hold every small message's publish that long).
The size is that of the message, not what the peer's buffer held: a peer that asks for
large answers fills its own buffer, and would buy itself a longer wait.

The bound: a publish of a message of ``S`` bytes waits ``on_time(S)`` at most (0.25 s
up to 32 KiB, ``S / MIN_DRAIN_RATE`` up to 1 s), whoever is behind and however many
they are, so publishing goes on at 4 messages or 128 KiB a second, whichever is less
(one message a second over 128 KiB), as it does for one honest subscriber taking the
messages at :data:`MIN_DRAIN_RATE`. Longer waits (up to :data:`PUBLISH_WAIT` each) add
up to :data:`NODE_WAIT_SHARE` of each window and one wait at most, for all peers
together. One peer (one connection) is slow once its late waits reach 1 s in a window.

A peer has drained for a publish once its write buffer is under the mark, or once it
has taken the message's size (:data:`MIN_TAKE` at least) since the wait began
(:meth:`PublishPacing.has_taken`), its buffer still over the mark: the kernel takes
from a paused buffer only once a third of its own send buffer is free (found measuring:
with 4 MB of it, 1.3 MB, 4.5 s at 300 KB/s; every wait on a slow link ran to its end,
and the subscriber was slow at the first). Each publish then waits for one message's
worth, at the pace the peer reads. (What is pushed to a peer while its buffer is over
the mark counts against its send queue, 256 packages: :data:`MIN_TAKE` keeps a burst of
small messages to a few dozen between two of the kernel's steps.)

The caller says which peers carry the topic, whether each one's buffer is full and how
large the message is (:meth:`PublishPacing.plan`), waits for those named, sampling what
each took every :data:`PROGRESS_TICK`, and says how long each took
(:meth:`PublishPacing.waited`).

"""

from __future__ import annotations

__all__ = [
    "KEEP_UP",
    "LATE_WAIT",
    "MIN_DRAIN_RATE",
    "MIN_TAKE",
    "NODE_WAIT_SHARE",
    "PROGRESS_TICK",
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
per :data:`WAIT_WINDOW` in late waits before it is slow."""

WAIT_WINDOW = 10.0
"""Seconds of the window over which late waits are added up (per peer, and for the
node)."""

KEEP_UP = 10.0
"""Seconds a slow peer must be seen keeping up before ``publish()`` waits for it again."""

LATE_WAIT = 0.25
"""Share of :data:`PUBLISH_WAIT` that a wait is on time at least, however small the
message: a subscriber that reads its socket every 0.2 s, or takes the 48 KiB between
its write buffer's marks at 192 KiB/s, drains sooner."""

MIN_DRAIN_RATE = 128 * 1024
"""Bytes a second (1 Mbit/s) at which a peer must take a published message for its
wait to be on time, when the message is over ``LATE_WAIT * MIN_DRAIN_RATE`` (32 KiB):
100 KB may take 0.76 s, 800 KB the whole :data:`PUBLISH_WAIT`."""

NODE_WAIT_SHARE = 0.5
"""Share of each :data:`WAIT_WINDOW` that ``publish()`` may spend in late waits, for all
peers together: publishing goes on at half its paced speed at least, whoever is late."""

MIN_TAKE = 2**16
"""Bytes a peer takes at least, however small the message, to have drained for a
publish with its write buffer still over the mark."""

PROGRESS_TICK = 0.025
"""Seconds between two looks at what a peer took while a publish waits for it."""


class PublishPacing(Generic[K]):
    """
    Whom a node's ``publish()`` waits for, and how long (see the module docstring).

    Args:
        clock: Monotonic seconds.
        wait: Seconds one publish waits at most (:data:`PUBLISH_WAIT`), and one peer's
            late waits in all per window before it is slow.
        window: Seconds over which late waits are added up (:data:`WAIT_WINDOW`).
        keep_up: Seconds a slow peer must be seen keeping up (:data:`KEEP_UP`).
        share: Share of each window spent in late waits at most (:data:`NODE_WAIT_SHARE`).
        late: Share of ``wait`` that a wait is on time at least (:data:`LATE_WAIT`).
        rate: Bytes a second a peer must take a message at for a longer wait to be on
            time (:data:`MIN_DRAIN_RATE`).

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
        rate: float = MIN_DRAIN_RATE,
    ) -> None:
        self._clock = clock
        self.wait = wait
        self.window = window
        self.keep_up = keep_up
        self.share = share
        self.late = late
        self.rate = rate
        self._window_start = -math.inf  # (the clock may not run yet)
        self._node_waited = 0.0  # seconds of late waits in this window, for all peers
        self._waited: dict[K, float] = {}  # seconds of late waits for each peer, the same
        # Slow peers -> since when each was seen keeping up (None: behind last time).
        self._slow: dict[K, float | None] = {}
        self._cut = False  # the last wait was cut short of `wait` by the node's share
        self._on_time = 0.0  # the last wait was on time this long
        self._size = 0  # bytes of the last message planned for

    @property
    def slow(self) -> set[K]:
        """The peers not waited for now."""
        return set(self._slow)

    def on_time(self, size: int) -> float:
        """
        Seconds a wait for a message of ``size`` bytes is on time: what a peer taking it
        at :attr:`rate` needs, ``late * wait`` at least and ``wait`` at most.
        """
        return min(self.wait, max(self.late * self.wait, size / self.rate))

    def plan(self, behind: Mapping[K, bool], size: int = 0) -> tuple[list[K], float]:
        """
        Whom a publish waits for, and how long at most.

        Args:
            behind: The peers that carry the message's topic, and whether each one's
                write buffer is full now.
            size: The message's size in bytes, as it is sent.

        Returns:
            The peers to wait for (behind, and not slow), and the seconds to wait for
            them at most: :attr:`wait`, less once the node spent its share of the window
            in late waits, but never less than :meth:`on_time` for the message.

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
        self._size, on_time = size, self.on_time(size)
        self._on_time = on_time
        left = self.window * self.share - self._node_waited
        timeout = min(self.wait, max(on_time, left))
        peers = [peer for peer, is_behind in behind.items() if is_behind and peer not in slow]
        if timeout <= 0 or not peers:
            return [], 0.0
        self._cut = timeout < self.wait
        return peers, timeout

    def has_taken(self, taken: int) -> bool:
        """
        Whether a peer :meth:`plan` named has drained for this publish, having taken
        ``taken`` bytes since the wait began: the message's size (more than 0, and
        :data:`MIN_TAKE` at least), though its write buffer may still be over the mark.
        """
        return self._size > 0 and taken >= max(self._size, MIN_TAKE)

    def waited(self, took: Mapping[K, float | None], elapsed: float) -> None:
        """
        A publish waited ``elapsed`` seconds for the peers :meth:`plan` named.

        Args:
            took: For each of them, the seconds it took to drain; None if it was still
                behind when the wait ended: it is slow then, unless the node's share cut
                the wait short (the others' doing), and then its wait was late. Only
                late waits (past :meth:`on_time`) count.
            elapsed: The seconds the publish waited.

        """
        on_time = self._on_time
        if elapsed > on_time or None in took.values():
            self._node_waited += elapsed
        for peer, seconds in took.items():
            if seconds is None and not self._cut:
                self._slow[peer] = None
            elif seconds is None or seconds > on_time:
                late = elapsed if seconds is None else seconds
                total = self._waited[peer] = self._waited.get(peer, 0.0) + late
                if total >= self.wait:
                    self._slow[peer] = None

    def forget(self, peer: K) -> None:
        """``peer`` is gone."""
        self._slow.pop(peer, None)
        self._waited.pop(peer, None)
