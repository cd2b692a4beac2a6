"""
TCP's own view of a connection's path, and how long a stall verdict waits for it. No I/O.

Three rules cut a peer that stops: a frame that doesn't keep to its pace
(``frame_timeout``), a peer that takes none of our bytes (``send_stall_timeout``,
:class:`WriteStall`) and a ping left unanswered (``heartbeat_response_timeout``). On a
saturated slow link an honest peer can look stopped for longer than that: its bytes and
ours queue behind each other, TCP loses segments and backs off (a retransmission
timeout of 6.6 s, then twice that), and nothing moves for 10 or 20 s while both sides
read all they get (found by a tester, t45 F1: a client whose whole access link was
64 kbit/s, flooded by a busy topic, and its live server cut each other four times in
four minutes, with every upload in flight).

Over TCP the driver reads the kernel's view of the connection (Linux ``TCP_INFO``) as a
:class:`PathView`. It tells the cases apart as far as our own socket can: a peer that
doesn't read closes its receive window (and TCP probes the zero window); a host that
vanished sends nothing more; a congested path keeps the window open, the peer's host
still sends segments (acknowledgements, duplicate or selective ones for what got
through, and data), and segments are lost: ours, which TCP resends, or the peer's,
which arrive after a gap. While the path is congested, a stall verdict waits
(:class:`PathWatch`), up to :data:`CONGESTION_GRACE` times the rule's own timeout, not
longer.

What a peer can fake: everything its host sends, so a peer that means harm can look
congested (it keeps its window open, acknowledges nothing or sends segments out of
order, and sends a bare segment now and then). That buys it :data:`CONGESTION_GRACE`
times the timeout, once per stall; a frame must still keep its average pace, so a peer
that trickles a frame is cut, only later. A peer whose window is closed (it reads
nothing) gets no grace: it is cut within the rule's own timeout, as before. A host that
vanished sends nothing: after the timeout it isn't heard from, and it is cut as before
too (a dead link is found within the same bound). A frozen process whose host still
takes our bytes over a clean path loses none (its host acknowledges them at once): no
grace either. A peer alive that shows no loss at the first look is looked at once more,
an eighth of the timeout later. Where the driver can't tell (no TCP: the memory driver,
a system other than Linux), there is no view and no grace.

"""

from __future__ import annotations

__all__ = ["CONGESTION_GRACE", "PathView", "PathWatch", "WriteStall"]

import math
from collections.abc import Callable
from dataclasses import dataclass

CONGESTION_GRACE = 3.0
"""While the path is congested, a stall rule's timeout stretches to this many times
itself: 30 s for a frame and for a pong at the defaults, 60 s for a peer that takes none
of our bytes. Measured (t45 F1's set-up, 64 kbit/s): see ``docs/reliability.md`` §E."""


@dataclass(frozen=True, slots=True)
class PathView:
    """
    TCP's view of one connection, as its kernel sees it now (Linux ``TCP_INFO``).

    Attributes:
        window_closed: The peer's receive window is closed, or TCP is probing it (zero
            window probes): the peer's application reads nothing.
        resending: TCP is resending segments it takes for lost, or has backed off (a
            retransmission timeout fired), now.
        losses: Segments lost either way so far, as TCP saw them: ours it resent, and
            the peer's that arrived after a gap (Linux 5.4 on). It rises with each.
        heard: Seconds since the peer's host last sent a segment (an acknowledgement
            or data).

    """

    window_closed: bool
    resending: bool
    losses: int
    heard: float

    def alive(self, within: float) -> bool:
        """Whether the peer reads and its host is there: its window is open, and its
        host sent a segment within ``within`` seconds. (Congested if segments are
        also lost: :class:`PathWatch`.)"""
        return not self.window_closed and self.heard < within


class PathWatch:
    """
    One stall rule's look at a path, past the rule's timeout: whether to cut the
    connection now, or look again soon (the path is congested).

    Congested means: the peer is alive (:meth:`PathView.alive`) and a segment was lost
    either way within the rule's timeout. A single view can't say that, since TCP
    recovers between losses (measured on t45 F1's link: a third of the views showed
    nothing being resent, while the count of segments resent rose every few seconds),
    so the watch keeps the count from its last look. At the first look it has none:
    unless TCP resends at that moment, it looks once more before its verdict (the caller
    looks again soon: an eighth of the timeout). The rule's own clock (``stalled_for``)
    bounds the grace: :data:`CONGESTION_GRACE` times the timeout.
    """

    __slots__ = ("_looked", "_losses", "_lost_at")

    def __init__(self) -> None:
        self._looked = False
        self._losses = 0
        self._lost_at = -math.inf

    def look(self, now: float, view: PathView) -> None:
        """Note TCP's ``view`` at ``now``: whether a segment was lost since the last
        look."""
        if view.resending or (self._looked and view.losses > self._losses):
            self._lost_at = now
        self._losses = view.losses
        self._looked = True

    def stalled(
        self,
        now: float,
        view: PathView | None,
        stalled_for: float,
        timeout: float,
        *,
        dead_links: bool = False,
    ) -> bool:
        """
        Whether a connection that showed no progress for ``stalled_for`` seconds is to
        be cut now by a rule whose timeout is ``timeout``: from ``timeout`` on, unless
        the path is congested (``view``: ``None`` where the driver can't tell), up to
        :data:`CONGESTION_GRACE` times ``timeout``. A closed window is cut at the
        timeout, and so is a host not heard from since the stall began; within
        ``timeout``, for the rule that finds ``dead_links`` (liveness: a link that died
        isn't congested, and is found within the same bound). For the others, liveness
        finds a dead link: on t45 F1's link nothing came through for 10-11 s at times.
        """
        if stalled_for < timeout:
            return False
        if view is None or not view.alive(timeout if dead_links else stalled_for):
            return True
        first = not self._looked
        self.look(now, view)
        if stalled_for >= timeout * CONGESTION_GRACE:
            return True
        if now - self._lost_at < timeout:
            return False  # congested
        return not first


class WriteStall:
    """
    Tells a peer that reads nothing from one that reads slowly.

    While data waits for a peer (its write buffer is above the limit), the node samples
    how many bytes the peer has taken so far: the bytes written to the connection minus
    those still in its write buffer. Any rise is progress: the peer took bytes, however
    few, so a large frame crawling over a slow link is never taken for a stall, even
    while other writes refill the buffer as fast as it drains. A peer that has taken
    nothing more for ``timeout`` seconds reads nothing, unless the path is congested
    (:class:`PathWatch`: TCP resends our bytes with the peer's window open).

    A write adds at least as much to the buffer as to the bytes written (framing and
    encryption only add to it), so a write never looks like progress.

    Args:
        timeout: Seconds without progress that make a stall.
        now: When the buffer was first seen above the limit.
        taken: The bytes the peer had taken then.

    """

    __slots__ = ("_most", "_since", "_watch", "timeout")

    def __init__(self, timeout: float, now: float, taken: int) -> None:
        self.timeout = timeout
        self._most = taken
        self._since = now
        self._watch = PathWatch()

    def stalled(
        self, now: float, taken: int, path: Callable[[], PathView | None] | None = None
    ) -> bool:
        """Record the bytes the peer has ``taken`` by ``now``; True once it took none
        for :attr:`timeout` seconds, longer on a congested path (``path`` returns TCP's
        view; called only once the timeout has passed)."""
        if taken > self._most:
            self._most = taken
            self._since = now
            return False
        stalled_for = now - self._since
        if stalled_for < self.timeout:
            return False
        view = None if path is None else path()
        return self._watch.stalled(now, view, stalled_for, self.timeout)
