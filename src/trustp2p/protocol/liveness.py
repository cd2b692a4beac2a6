"""
Liveness: when to ping a peer, and when to give it up for dead. No I/O.

Every connection, on both sides and whatever threads run, follows these rules; the
node checks each connection at most ``period`` seconds apart (its heartbeat round) and
carries out the :class:`Verdict`:

1. **Ping on a schedule.** A connection with no ping outstanding gets one ``interval``
   seconds after the last ping it sent or received (at first, after it opened),
   whether the peer talks or not: a peer that talks but never answers is found too.
   The side that accepted the connection leads, as the original's server did; the side
   that dialled waits one ``period`` longer, so the leader's ping comes first and
   puts its own off. A ping from the peer shows the link works both ways, since under
   these rules a peer sends its next ping only once we answered its last. The two
   sides thus share one ping per ``interval`` instead of sending one each (idle peers
   cost half as much), and the side that dialled takes over when the leader's pings
   stop coming. Not for longer than :data:`PUT_OFF_INTERVALS` intervals, though: a
   peer that pings without reading our pongs (found by an attacker's test: a ping
   every 15 s, nothing read, connected for good) meets a ping of ours by then.
   Except a peer we dialled that answers no ping (:meth:`Liveness.answers_no_ping`:
   one that never introduced itself, the original, whose server drops every ping it
   gets): its pings put ours off for as long as they come, and any complete package
   it sends after our ping answers it (found by a tester: with the cap, a plain client
   dropped an honest original server every 112 s, and a request in flight with it).
   Not a peer that dialled us: the original's client answers our pings (with its
   heartbeat thread), and one that pings without reading keeps no slot of ours.
2. **Charge the silence.** While a ping is outstanding, the time between two checks is
   charged against it, unless the link showed progress in that time:

   * bytes of a package not yet complete arrived: the peer's large frame is in flight
     and the pong waits behind it;
   * the peer took more of the bytes we wrote before the ping (what we wrote less
     what is still on its way): our large frame, ahead of the ping, is being read.
     Bytes we write after the ping are no excuse: once all before it are taken, the
     ping is with the peer's host, and a frozen process's host still takes (and TCP
     acknowledges) what we send it, until its buffer fills;
   * we had paused reading ourselves (throttling, a full inbox), and the peer took
     more of our bytes, or has them all (over TCP, its host acknowledged them). The
     pong may be waiting in what we haven't read, so only our bytes show it is there;
     a host that vanished without a reset takes none and is charged. While reading
     stays paused, a ping is sent again every ``timeout`` (the charge goes on): a peer
     that left with a reset is found when a write fails (the first write after it left
     draws the reset, the next one fails).

   Complete packages are no excuse: a peer that sends them but doesn't answer is
   charged like a silent one.
3. **Dead.** A peer whose ping has been charged ``timeout`` seconds is dead: the node
   drops the connection at once, which fails or reroutes its pending requests. Unless
   TCP shows the path congested at that check (:class:`PathWatch
   <trustp2p.protocol.path.PathWatch>`: segments lost either way within ``timeout``,
   as the checks saw them, the peer's window open, its host heard from within
   ``timeout``): then the pong may be stuck behind the peer's own data on a saturated
   link, and the charge that means dead is
   :data:`~trustp2p.protocol.path.CONGESTION_GRACE` times ``timeout`` (found by a
   tester: on a saturated 64 kbit/s link, a live server and its client dropped each
   other as lost). Not while a probe awaits its pong (a probe doubts the link). A link
   that died sends nothing: it isn't heard from ``timeout`` after its death, and is
   found within the same bound.
4. **Answered.** A pong (``HEARTBEAT_PONG`` with the ping's tag) ends the ping: its
   round trip is known and nothing is charged any more.
5. **Probed.** When the node has reason to doubt the peer now (another process of its
   peer id connected while this connection is open: a restart whose old link may be
   dead), :meth:`Liveness.probe` makes a ping due at once and lowers the charge that
   means dead to the probe's time (never above ``timeout``) until a pong comes: a
   live peer answers and stays, a dead link is found within seconds rather than the
   detection bound. The charging rules above stay.

Skipping. Until :attr:`Liveness.next_check` a check can only say NOTHING and change
nothing (no ping is outstanding, and the next one isn't due yet), so the node's round
skips such a connection without asking: with thousands of idle peers, most of a round
is one comparison each.

A link that dies is found within :attr:`LivenessTimings.detection_bound` seconds on
both sides: ``interval + timeout + 3 * period`` (the next ping waits up to ``interval``,
one ``period`` more on the side that dialled, plus one round; it is charged ``timeout``,
seen at most one round late; and the round in which the link died may have shown
progress). Shipped defaults (20 s, 10 s, rounds of 2 s plus up to 1 s of jitter) make
that 39 s, within websockets' keepalive bound (a 20 s ping interval plus a 20 s ping
timeout: 40 s) and at its cost (one ping per 20 s, shared by the two sides).

The rules replace the original's, under which only the server pinged, and only clients
silent for ``heartbeat_timeout``: a client never noticed a dead server, and a busy
client was never pinged (``docs/original-wire-format.md``, known defects).

"""

from __future__ import annotations

__all__ = ["PUT_OFF_INTERVALS", "Liveness", "LivenessTimings", "Verdict"]

import enum
import math
from dataclasses import dataclass

from .path import PathView, PathWatch

PUT_OFF_INTERVALS = 5
"""Most intervals the peer's pings put ours off: a side pings at least this often (so the
side that dialled, whose pings the leader's put off, sends about one in six)."""


class Verdict(enum.Enum):
    """What to do about a connection after a check."""

    NOTHING = "nothing"
    PING = "ping"  # send a ping, then call Liveness.ping_sent()
    DEAD = "dead"  # the peer left our ping unanswered: drop the connection


@dataclass(frozen=True, slots=True)
class LivenessTimings:
    """
    The timings of the liveness rules, in seconds.

    Attributes:
        interval: Time from one ping to the next (``heartbeat_timeout``).
        timeout: Charged time after which an unanswered ping means a dead peer
            (``heartbeat_response_timeout``).
        period: Longest time between two checks of a connection (``heartbeat_interval``
            plus ``heartbeat_jitter``).

    Raises:
        ValueError: If a timing is not a positive finite number (``period`` may be 0).

    """

    interval: float = 10.0
    timeout: float = 10.0
    period: float = 3.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "period"):
            value = getattr(self, name)
            positive = value > 0 if name != "period" else value >= 0
            if not (isinstance(value, int | float) and positive and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")

    @property
    def detection_bound(self) -> float:
        """The longest time, in seconds, from a link's death to the verdict DEAD, on
        either side."""
        return self.interval + self.timeout + 3 * self.period


class Liveness:
    """
    One connection's liveness state.

    Args:
        opened: When the connection opened (clock seconds).
        timings: The rules' timings.
        leads: This side accepted the connection and pings first; the side that
            dialled waits one ``period`` longer.

    Attributes:
        last_ping: When the last ping was sent (or the connection opened).
        outstanding: When the ping that awaits its pong was sent, or ``None``.
        charged: Seconds charged against the outstanding ping.
        last_rtt: Round trip of the last answered ping, in seconds, or ``None``.
        answered: When the last answered ping was sent (clock seconds), or ``None``.
        dead_after: Charged seconds that make the peer dead: ``timings.timeout``, or
            less while a :meth:`probe` awaits its pong.
        next_check: Before this time (clock seconds) :meth:`check` would return
            :attr:`Verdict.NOTHING` and change nothing: no ping is outstanding and the
            next one is not due. A caller may skip the check until then. While a ping is
            outstanding, every check counts (it charges the silence).

    """

    __slots__ = (
        "_dialled",
        "_due_after",
        "_last_check",
        "_path",
        "_ping_at",
        "_probe_end",
        "_probing",
        "_put_off_until",
        "_taken",
        "_unanswering",
        "answered",
        "charged",
        "dead_after",
        "last_ping",
        "last_rtt",
        "next_check",
        "outstanding",
        "timings",
    )

    def __init__(self, opened: float, timings: LivenessTimings, *, leads: bool = True) -> None:
        self.timings = timings
        self._due_after = timings.interval + (0.0 if leads else timings.period)
        self._dialled = not leads
        self._put_off_until = opened + timings.interval * PUT_OFF_INTERVALS
        self.last_ping = opened
        self.outstanding: float | None = None
        self.charged = 0.0
        self.last_rtt: float | None = None
        self.answered: float | None = None
        self.dead_after = timings.timeout
        self._probing = False
        self._probe_end = 0.0  # (a probe ends with its pong, or by this time)
        self._last_check = opened
        self._taken = 0  # bytes the peer had taken at the last check
        self._ping_at = 0  # bytes written before the outstanding ping
        self._unanswering = False  # (answers_no_ping)
        self._path = PathWatch()  # the losses TCP showed, for rule 3
        self.next_check = min(opened + self._due_after, self._put_off_until)

    def answers_no_ping(self) -> None:
        """The peer answers no ping (it never introduced itself: the original's server
        drops every ping it gets): if we dialled it, its pings put ours off without
        bound, and any complete package from it after our ping answers the ping
        (without a round trip); a dead link is still found: nothing comes from it. A
        peer that dialled us keeps the rules (found by a tester, t44: one that pinged
        and read nothing was kept for good; the original's client answers pings)."""
        if not self._dialled or self._unanswering:  # (review77 F1: again, it put off a
            return  # probe's ping)
        self._unanswering = True
        self._put_off_until = math.inf
        if self.outstanding is None:
            self.next_check = self.last_ping + self._due_after

    def answers_pings(self) -> None:
        """The peer introduced itself after all (a version talk after its first
        package): the rules of a peer that answers pings again, its pings putting ours
        off :data:`PUT_OFF_INTERVALS` intervals after the last ping at most (review76 F3:
        it was excused for good)."""
        if not self._unanswering:
            return
        self._unanswering = False
        self._put_off_until = self.last_ping + self.timings.interval * PUT_OFF_INTERVALS
        if self.outstanding is None:
            self.next_check = min(self.next_check, self._put_off_until)

    def check(
        self,
        now: float,
        *,
        last_bytes: float,
        last_package: float,
        backlog: int = 0,
        written: int = 0,
        reading_paused: bool = False,
        path: PathView | None = None,
    ) -> Verdict:
        """
        Check the connection at ``now``: charge the outstanding ping, or say a ping is due.

        Args:
            now: The time (clock seconds).
            last_bytes: When bytes last arrived from the peer, a partial frame too.
            last_package: When the last complete package arrived from the peer.
            backlog: Bytes we wrote that the peer hasn't taken yet (our buffers and the
                kernel's unacknowledged ones); only looked at while a ping is
                outstanding.
            written: Bytes written to the connection so far: ``written - backlog``
                is what the peer has taken (a write adds at least as much to the
                backlog, so it is never taken for progress).
            reading_paused: We are not reading from the peer.
            path: TCP's view of the path, where the driver can tell (rule 3); only
                looked at while a ping is outstanding.

        Returns:
            :attr:`Verdict.PING` when a ping is due (send it, then call
            :meth:`ping_sent`), :attr:`Verdict.DEAD` when the peer is to be dropped,
            else :attr:`Verdict.NOTHING`.

        """
        sent = self._answered_by(last_package)
        if sent is None:
            self._last_check = now
            if now - self.last_ping >= self._due_after or now >= self._put_off_until:
                return Verdict.PING
            return Verdict.NOTHING
        since = max(self._last_check, sent)
        taken = written - backlog
        if reading_paused:
            # No pong can come while we read nothing: the peer shows it is there by
            # taking what we send.
            progress = backlog == 0 or taken > self._taken
        else:  # only our bytes ahead of the ping count (a frozen peer's host takes more)
            ping_at = self._ping_at
            ahead = min(taken, ping_at) > min(self._taken, ping_at)
            progress = (last_bytes > since and last_bytes > last_package) or ahead
        if not progress and now > since:
            self.charged += now - since
        if self._probing and now >= self._probe_end:
            self._end_probe()  # (review58: a held reader's probe never ended)
        self._last_check = now
        self._taken = taken
        return self._charged_verdict(now, reading_paused, path)

    def _charged_verdict(self, now: float, reading_paused: bool, path: PathView | None) -> Verdict:
        """What the charge of the outstanding ping says at ``now`` (rule 3)."""
        timeout = self.timings.timeout
        if self.charged >= self.dead_after:
            stalled = self._path.stalled(now, path, self.charged, timeout, dead_links=True)
            if self._probing or stalled:
                return Verdict.DEAD
        elif path is not None:
            self._path.look(now, path)
        if reading_paused and now - self.last_ping >= timeout:
            # Ping again, so that a peer that left with a reset is found when a write
            # to it fails (with reading paused, nothing else would notice its end).
            return Verdict.PING
        return Verdict.NOTHING

    def ping_sent(self, now: float, backlog: int = 0, written: int = 0) -> None:
        """
        We sent a ping at ``now``.

        Args:
            now: The time (clock seconds).
            backlog: Bytes on their way to the peer just before the ping was written
                (see :meth:`check`).
            written: Bytes written to the connection by then (see :meth:`check`).

        """
        if self.outstanding is None:
            self.charged = 0.0  # a ping sent again while reading is paused goes on charging
        self.last_ping = self.outstanding = self._last_check = self.next_check = now
        later = now + self.timings.interval * PUT_OFF_INTERVALS
        self._put_off_until = math.inf if self._unanswering else later
        self._taken = written - backlog
        self._ping_at = written

    def ping_received(self, now: float) -> None:
        """
        The peer pinged us at ``now``: with no ping of ours outstanding, ours is put off
        (it is due ``interval`` from now, one ``period`` more if we dialled), up to
        :data:`PUT_OFF_INTERVALS` intervals after our last ping.
        """
        if self.outstanding is None and now > self.last_ping:
            self.last_ping = now
            self.next_check = min(now + self._due_after, self._put_off_until)

    def pong_received(self, now: float) -> float | None:
        """
        A pong arrived at ``now``: the ping is answered.

        Returns:
            The ping's round trip in seconds, or ``None`` if no ping was outstanding
            (a pong to a ping a thread sent, or a late one).

        """
        sent = self.outstanding
        if sent is None:
            return None
        self._answer(sent)
        self.last_rtt = rtt = max(0.0, now - sent)
        return rtt

    def _answered_by(self, last_package: float) -> float | None:
        """When the outstanding ping was sent, or None if none is, or a package that
        came after it answered it (from a peer that answers no ping, nothing else
        does)."""
        sent = self.outstanding
        if sent is not None and self._unanswering and last_package > sent:
            self._answer(sent)
            return None
        return sent

    def _answer(self, sent: float) -> None:
        """The ping sent at ``sent`` is answered."""
        self.outstanding = None
        self.answered = sent
        self.charged = 0.0
        self._end_probe()  # (a probe ends with its pong)
        self.next_check = min(self.last_ping + self._due_after, self._put_off_until)

    def probe(self, now: float, timeout: float) -> None:
        """
        Doubt the peer at ``now``: a ping is due at once (unless one is outstanding),
        and until a pong comes, ``timeout`` charged seconds (at most
        ``timings.timeout``) make it dead, counted from what an outstanding ping was
        charged already (review58: one charged more than ``timeout`` made the peer dead
        at the probe's first check, with no time to answer). Probing again never raises
        the threshold. A probe that saw neither (a peer that takes what we send while
        we don't read) ends ``timings.timeout`` after it began.

        Args:
            now: The time (clock seconds).
            timeout: The probe's time, in seconds.

        """
        silent = 0.0 if self.outstanding is None else now - max(self._last_check, self.outstanding)
        # (review59: the silence since the last check is charged at the next one)
        self.dead_after = min(self.dead_after, self.charged + max(0.0, silent) + timeout)
        if not self._probing:
            self._probe_end = now + self.timings.timeout
        self._probing = True
        if self.outstanding is None:
            self._put_off_until = min(self._put_off_until, now)
            self.next_check = min(self.next_check, now)

    def _end_probe(self) -> None:
        self._probing = False
        self.dead_after = self.timings.timeout

    @property
    def probe_deadline(self) -> float | None:
        """
        While a :meth:`probe` awaits its pong, the time (clock seconds) from which a
        check would say :attr:`Verdict.DEAD` if the link shows no progress until then
        (the ping not sent yet: now); else ``None``.
        """
        if not self._probing:
            return None
        if self.outstanding is None:
            return self.next_check
        return self._last_check + self.dead_after - self.charged
