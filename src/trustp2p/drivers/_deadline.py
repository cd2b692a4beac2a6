"""
The deadline of a frame in progress, which every network driver runs (``tcp``, ``ws``,
``picows``; :attr:`DriverOptions.frame_timeout`).

A frame that has started must complete within ``frame_timeout``, and each
:data:`FRAME_PROGRESS` bytes of it that arrive earn it another ``frame_timeout`` (a byte
earns ``frame_timeout / FRAME_PROGRESS``, never more than ``frame_timeout`` ahead of
now): it must keep to 16 KiB per ``frame_timeout`` on average, with ``frame_timeout`` of
slack, else the connection is closed with code 1008 ("frame stalled"). A peer that
dribbles a frame a few bytes at a time doesn't hold a connection and the frame's buffer,
while an honest peer's large frame crosses a slow link: 16 KiB per 10 s (the defaults)
is about 13 kbit/s, where a deadline for the whole frame cut a 256 KiB package at
anything under 210 kbit/s. While TCP shows the path congested (segments lost either
way, the peer's window open, its host heard from since the stall began:
:mod:`trustp2p.protocol.path`), the frame may fall up to
:data:`~trustp2p.protocol.path.CONGESTION_GRACE` times ``frame_timeout`` behind that
pace rather than ``frame_timeout`` (found by a tester: a client on a saturated
64 kbit/s link had its uploads cut again and again); the pace it must keep on average
is the same. Past the deadline the path is looked at every eighth of ``frame_timeout``.

The WebSocket drivers also budget the frames that carry no package: control frames
(pings, pongs) and fragments under :data:`FRAME_PROGRESS` bytes that don't end their
message, :data:`CONTROL_RATE` a second with a burst of :data:`CONTROL_BURST`; past it the
connection is closed with code 1008 ("too many control frames"). Each such frame costs
the parser as much as a package, and no budget of the node's sees it (found by an
attacker: 5 connections writing 6-byte pings took the event loop; honest p50 1 ms ->
4 s). A node's own peers send none (the heartbeat is a package); a WebSocket library's
keepalive pings one every few seconds.

"""

from __future__ import annotations

__all__ = ["FrameDeadline"]

import asyncio
import logging

from ..exceptions import DriverError
from ..protocol.limits import TokenBucket
from ..protocol.path import PathWatch
from .base import CONTROL_BURST, CONTROL_RATE, FRAME_PROGRESS, CloseCode, DriverOptions, Socket

logger = logging.getLogger(__name__)


class FrameDeadline(Socket):
    """
    The deadline of a frame in progress. The tcp driver knows where its frames start
    and calls :meth:`_start_frame_clock` there and :meth:`_frame_progress` as the rest
    arrives. The WebSocket drivers' parsers don't say where a frame starts: they call
    :meth:`_watch_frames` after each read. A read that completes no frame starts the
    deadline unless it runs; a read that completes one stops it. Bytes that end a read
    without completing a frame start it at the next read: if none comes, the connection
    is idle, which the heartbeat watches. A fragmented WebSocket message counts as one
    frame: while it is open the deadline runs, and the bytes read are its progress, but
    for the control frames among them (:meth:`_control_frame_read`): a peer can't hold
    it open with tiny fragments, nor with pings between them, whole or split. A
    subclass calls :meth:`_stop_frame_clock` when reading pauses and when the connection
    ends, and sets both slots to ``None`` at first. A WebSocket driver calls
    :meth:`_small_frame` for each frame that carries no package (see the module), sets
    ``_control_budget`` to ``None`` and ``_flooded`` to False at first, and reads nothing
    more once ``_flooded`` (:meth:`_stop_reading`).
    """

    __slots__ = ()
    _options: DriverOptions
    _control_budget: TokenBucket | None
    _flooded: bool
    # When the deadline started, moved on by what the frame earned; None: none runs.
    _frame_started: float | None
    _frame_timer: asyncio.TimerHandle | None

    def _watch_frames(self, completed: bool, now: float, nbytes: int) -> None:
        """A read of ``nbytes`` at ``now`` completed a frame, or didn't."""
        if completed:
            self._frame_started = None  # (inline this case in a hot path)
        elif self._frame_started is not None:
            self._frame_progress(nbytes, now)
        elif not self.closed:
            self._start_frame_clock(now)

    def _start_frame_clock(self, now: float) -> None:
        """A frame started at ``now``, or its deadline starts over (reading resumed)."""
        self._frame_started = now
        if self._frame_timer is None:
            deadline = now + self._options.frame_timeout
            self._frame_timer = self._loop.call_at(deadline, self._frame_timed_out)

    def _frame_progress(self, nbytes: int, now: float) -> None:
        """``nbytes`` more of the frame in progress arrived at ``now``."""
        started = self._frame_started
        if started is None:  # reading paused: no deadline runs
            return
        # (A control frame's bytes are taken back: nbytes < 0.)
        # (The timer moves when it fires.)
        started += nbytes * self._options.frame_timeout / FRAME_PROGRESS
        self._frame_started = started if started < now else now

    def _control_frame_read(self, size: int, now: float) -> None:
        """A WebSocket control frame of ``size`` payload bytes (a ping) was read while a
        fragmented message is open: its bytes, counted with the reads', are no progress
        of the message. (A control frame's header is 2 bytes, and a client's mask 4.)"""
        self._frame_progress(-(size + (6 if self.inbound else 2)), now)

    def _small_frame(self, now: float) -> bool:
        """A frame that carries no package arrived at ``now``: whether the peer is within
        its budget; if it isn't, the connection is reported and closed with 1008."""
        budget = self._control_budget
        if budget is None:
            budget = self._control_budget = TokenBucket(CONTROL_RATE, CONTROL_BURST, now)
        if budget.take(now):
            return True
        if not self._flooded:
            self._flooded = True
            rate = f"{CONTROL_RATE:g} a second, {CONTROL_BURST} at once"
            self._report("on_error", DriverError(f"too many control frames (over {rate})"))
            self.close_soon(CloseCode.POLICY_VIOLATION, "too many control frames")
            # Nothing more is read: the flood would go on while our close waits for an
            # answer (parsed frame by frame, 8 s of CPU in close_timeout's 10 s).
            self._stop_reading()
        return False

    def _stop_reading(self) -> None:
        """Read nothing more from the connection (it is closing)."""
        raise NotImplementedError

    def _next_turn(self) -> None:
        """This connection's turn of the event loop iteration is over
        (``DriverOptions.read_turn``): reading pauses, and what it holds is delivered
        in the next iteration (``_deliver_held``), before anything read after it."""
        self._stop_reading()
        self._stop_frame_clock()  # our pause is not the peer's stall
        self._loop.call_soon(self._deliver_held)

    def _deliver_held(self) -> None:
        """Deliver what was held, a turn's worth; then resume reading (the drivers')."""
        raise NotImplementedError

    def _stop_frame_clock(self, *, cancel: bool = False) -> None:
        """Our pause is not the peer's stall; ``cancel``: the connection ended."""
        self._frame_started = None
        if cancel and self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def _frame_timed_out(self, watch: PathWatch | None = None) -> None:
        # One timer serves every frame: when it fires for a frame that has completed or
        # made progress since, it moves to the deadline of the frame in progress, if any.
        # (``watch``: the looks at the path of this stall, past its deadline.)
        timer, self._frame_timer = self._frame_timer, None
        started = self._frame_started
        if started is None or not self._frames_watched():
            return
        timeout = self._options.frame_timeout
        deadline = started + timeout
        if timer is not None and deadline > timer.when():
            self._frame_timer = self._loop.call_at(deadline, self._frame_timed_out)
            return
        now = self._loop.time()
        watch = PathWatch() if watch is None else watch
        if not watch.stalled(now, self.path_view(), max(now - started, timeout), timeout):
            # The path may be congested: the frame may take longer (see the module).
            later = now + timeout / 8
            self._frame_timer = self._loop.call_at(later, self._frame_timed_out, watch)
            return
        logger.debug("! frame from %s stalled", self.peer)
        self._frame_stalled(timeout)

    def _frames_watched(self) -> bool:
        """Whether a stalled frame still matters (not once we closed)."""
        return not self.closed

    def _frame_stalled(self, timeout: float) -> None:
        """Past the deadline: report it and close with code 1008."""
        detail = f"no frame completed, under {FRAME_PROGRESS} bytes in {timeout:g} s"
        error = DriverError(f"frame stalled: {detail}")
        self._report("on_error", error)
        self.close_soon(CloseCode.POLICY_VIOLATION, "frame stalled")
