"""
Per-stream delivery order, free of I/O: every message exactly once, in its origin's order.

A *stream* is one origin's messages on one topic; the origin numbers them 1, 2, 3...
(``seq``). :class:`Streams` takes the accepted messages in whatever order they arrive and
releases them in sequence order, each once:

- a message next in sequence is released at once, with the held ones that follow it;
- one further on is *held*, and the numbers before it are a *gap*. The caller fetches
  what is missing (:meth:`Streams.missing_seqs`: every gap of the stream, not only the
  first) and says when a peer answered a fetch of it in full (:meth:`Streams.answered`);
  a gap that nobody fills within ``gap_timeout`` seconds, once a peer answered without
  it, is skipped (:meth:`Streams.tick`), and what follows it is released, with the gaps
  after it that a peer answered without (missing as long: a burst leaves thousands,
  given up together). A gap no peer answered for (the fetches timed out over a slow
  link, or no peer could be asked) waits :data:`UNANSWERED_GAP_FACTOR` times as long:
  the messages may be on their way. The timeout counts from when the gap opened, or
  from when part of it filled;
- one at or below the stream's *delivered mark* was released or skipped before: it is
  dropped, so that nothing is delivered twice or out of order.

Held messages are bounded (:data:`DEFAULT_MAX_HELD` per stream,
:data:`DEFAULT_MAX_HELD_BYTES` in all, each its payload plus :data:`HELD_MESSAGE_OVERHEAD`):
past either bound, the gaps that opened first are skipped at once, so that an origin
that skips numbers on purpose, or many new origins that each skip, can't fill our memory.

The delivered marks live with the caller (:class:`DeliveryMarks`): the node keeps them in
its message log, so that a restarted node delivers nothing twice. Only this moves them.

"""

from __future__ import annotations

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_MAX_HELD",
    "DEFAULT_MAX_HELD_BYTES",
    "HELD_MESSAGE_OVERHEAD",
    "START_AGE",
    "UNANSWERED_GAP_FACTOR",
    "Deliver",
    "DeliveryMarks",
    "GapSkipped",
    "ReleaseMarks",
    "Stale",
    "StreamEvent",
    "Streams",
    "split_stream_key",
    "stream_key",
]

import heapq
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeAlias, TypeVar

from ..shared_text import share
from .marks import DeliveryMarks, ReleaseMarks
from .message import GossipMessage

S = TypeVar("S")

CLOCK_SKEW = 300.0
"""Seconds a publisher's clock may be behind ours before its messages, of an origin
without a delivery mark, look older than the marks the message log forgot
(:attr:`DeliveryMarks.forgotten_before`) and are dropped (found by an attacker: after a
flood of throwaway origins set that time to a minute ago, a publisher whose clock lagged
a minute had every message dropped; the price: a replay of an origin whose mark was
forgotten, stamped within this much before, is taken as new), or ahead of ours before
its messages are dropped as from the future (:meth:`Streams.stale`)."""

Stale: TypeAlias = Literal["delivered", "expired", "forgotten", "future"]
"""Why :meth:`Streams.stale` drops a message: released or skipped already
(``"delivered"``), older than ``max_age`` (``"expired"``), of a stream without a mark,
older than the marks the log forgot, less :data:`CLOCK_SKEW` (``"forgotten"``), or
stamped more than :data:`CLOCK_SKEW` ahead of our clock (``"future"``: tester48 F1)."""

START_AGE = 5.0
"""Seconds old (by its timestamp) the first message held behind the first gap of a
stream this node has no mark of must be for that gap to be skipped as soon as a peer
answered without it (a *start*): it can't be on its way any more, and nobody keeps it.
Found by an attacker (and with a long honest history): a new subscriber got no live
message of an origin for ``gap_timeout`` (31 s) because the hub no longer kept the
stream's first messages. A fresher one may have been overtaken by its successor: the
gap waits ``gap_timeout``, as any."""

UNANSWERED_GAP_FACTOR = 10
r"""A gap no peer answered a fetch for is skipped after this many ``gap_timeout``\s."""

DEFAULT_MAX_HELD = 10_000
"""Most messages held in one stream, waiting for a gap before them to fill (as many as
the message log keeps per topic by default)."""

DEFAULT_MAX_HELD_BYTES = 64 * 2**20
"""Most held in all streams together (64 MiB): payload, in characters of JSON text, plus
:data:`HELD_MESSAGE_OVERHEAD` per message."""

HELD_MESSAGE_OVERHEAD = 768
"""What a held number takes beside its payload, in bytes (740 measured with
``tracemalloc`` for a message: the object, its id, key and signature, its place in the
stream; about 490 for a refused one, held without its message). Counted so that tiny
or refused messages can't be held by the million: an attacker's messages from new
origins, each with a gap before it, were counted 9 bytes apiece, refused ones 0."""


def stream_key(topic: str, origin: str) -> str:
    """The key of ``origin``'s messages on ``topic`` (the message log's "origin").

    Shared (:func:`~trustp2p.protocol.shared_text.share`): every message of a stream
    keeps its key, and so does every node of one process (a simulation), so they share
    one string."""
    return share(f"{topic}\0{origin}")


def split_stream_key(stream: str) -> tuple[str, str]:
    """``(topic, origin)`` of a stream key; a topic may hold NUL, a peer id never does.

    Shared, as the key: a message read back from the log keeps its origin (a simulated
    node made a copy of each of ~100 origins' ids: 7 MiB of 1,000 nodes')."""
    topic, _, origin = stream.rpartition("\0")
    return share(topic), share(origin)


@dataclass(frozen=True, slots=True)
class Deliver(Generic[S]):
    """Hand ``message`` to the handlers; ``source`` is what the caller gave with it
    (the peer it came from)."""

    message: GossipMessage
    source: S


@dataclass(frozen=True, slots=True)
class GapSkipped:
    """Messages ``first`` to ``last`` of ``origin`` on ``topic`` never arrived: given up,
    after ``gap_timeout`` (``"timeout"``) or because too much was held (``"held"``); or,
    of a stream with no mark, that nobody keeps (``"start"``: :data:`START_AGE`)."""

    topic: str
    origin: str
    first: int
    last: int
    reason: Literal["timeout", "held", "start"]

    @property
    def count(self) -> int:
        """How many messages were given up."""
        return self.last - self.first + 1


StreamEvent: TypeAlias = Deliver[S] | GapSkipped


class _Held(Generic[S]):
    """A stream's held entries: by seq, and their seqs in a heap (lowest first)."""

    __slots__ = ("entries", "seqs")

    def __init__(self) -> None:
        # seq -> (message, source), or None for a number that takes its turn unseen
        self.entries: dict[int, tuple[GossipMessage, S] | None] = {}
        self.seqs: list[int] = []

    def add(self, seq: int, entry: tuple[GossipMessage, S] | None) -> None:
        self.entries[seq] = entry
        heapq.heappush(self.seqs, seq)

    def pop_first(self) -> tuple[GossipMessage, S] | None:
        return self.entries.pop(heapq.heappop(self.seqs))


def _size(entry: tuple[GossipMessage, object] | None) -> int:
    """What a held number counts against ``max_held_bytes``: a message refused (by a
    validator, or too large to keep) waits its turn too, without its payload."""
    payload = 0 if entry is None else entry[0].data_size
    return payload + HELD_MESSAGE_OVERHEAD


class Streams(Generic[S]):
    """
    The order in which accepted messages are released, per stream.

    Args:
        marks: The delivered marks (see :class:`DeliveryMarks`).
        clock: Monotonic seconds; when gaps open and time out.
        wall_clock: Seconds since 1970; how old a message is (:meth:`is_stale`).
        gap_timeout: Seconds a gap may wait to be filled; at exactly this age,
            :meth:`tick` skips it.
        max_age: Seconds after which a message is too old to take (its timestamp, the
            origin's clock): the message log may have forgotten it delivered it. None:
            no limit.
        max_held: Most messages held in one stream.
        max_held_bytes: Most held in all streams: payload, in characters, plus
            :data:`HELD_MESSAGE_OVERHEAD` per message.
        clock_skew: Seconds an origin's clock may be off ours (:data:`CLOCK_SKEW`).

    Raises:
        ValueError: If a bound is negative, or ``max_held`` is 0.

    """

    def __init__(
        self,
        marks: DeliveryMarks,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        gap_timeout: float,
        max_age: float | None,
        max_held: int = DEFAULT_MAX_HELD,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        clock_skew: float = CLOCK_SKEW,
    ) -> None:
        if gap_timeout < 0:
            raise ValueError(f"gap_timeout must not be negative, not {gap_timeout}")
        if max_held < 1 or max_held_bytes < 0:
            raise ValueError(
                f"need max_held >= 1 and max_held_bytes >= 0, not {max_held}, {max_held_bytes}"
            )
        self._marks = marks
        self._clock = clock
        self._wall_clock = wall_clock
        self.gap_timeout = gap_timeout
        self.max_age = max_age
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.clock_skew = clock_skew
        self._held: dict[str, _Held[S]] = {}
        # Streams with a gap -> when it opened; in that order (oldest first).
        self._gap_since: dict[str, float] = {}
        self._answered: set[str] = set()  # streams whose gap a peer answered without
        self._starts: set[str] = set()  # ...of those, starts (START_AGE): skipped at once
        self._lacking: dict[str, set[object]] = {}  # start candidates: who answered so
        # Stream -> the highest seq up to which peers answered without every missing
        # number: the gaps after a skipped one that an answer covered go with it.
        self._answered_to: dict[str, int] = {}
        self._held_count = 0
        self._held_bytes = 0
        self.skipped = 0
        """Messages given up so far, in all streams."""

    @property
    def held(self) -> int:
        """Messages held now, in all streams."""
        return self._held_count

    @property
    def held_bytes(self) -> int:
        """What is held now: payload, in characters, plus the overhead per message."""
        return self._held_bytes

    @property
    def gaps(self) -> list[str]:
        """The streams with a gap, the oldest gap first."""
        return list(self._gap_since)

    def delivered(self, topic: str, origin: str) -> int:
        """The delivered mark of ``origin`` on ``topic``: the last seq released or
        skipped, 0 for none."""
        return self._marks.delivered(stream_key(topic, origin))

    def is_stale(self, message: GossipMessage) -> bool:
        """Whether ``message`` is one to drop unseen (see :meth:`stale`)."""
        return self.stale(message) is not None

    def stale(self, message: GossipMessage) -> Stale | None:
        """
        Why ``message`` is one to drop unseen, or None: released or skipped already,
        older than ``max_age`` (past it, the message log may have forgotten delivering
        it), or, of a stream without a mark, older than the marks the log forgot for
        their number, less :data:`CLOCK_SKEW` (found by an attacker: old messages
        replayed after a flood of new origins were delivered again), or stamped more
        than :data:`CLOCK_SKEW` ahead of our clock (a tester's: it won last-write-wins)."""
        delivered = self._marks.delivered(stream_key(message.topic, message.origin))
        if message.seq <= delivered:
            return "delivered"
        now = self._wall_clock()
        if message.timestamp > (now + self.clock_skew) * 1000:
            return "future"
        if self.max_age is not None and message.timestamp < (now - self.max_age) * 1000:
            return "expired"
        if not delivered and message.timestamp < (
            (self._marks.forgotten_before - self.clock_skew) * 1000
        ):
            return "forgotten"
        return None

    def add(self, message: GossipMessage, source: S) -> list[StreamEvent[S]]:
        """
        Take an accepted message: release it now if it is next in its stream (with the
        held ones that follow it), or hold it.

        A message at or below the stream's mark, or a second message with a seq held
        already (an origin that signed two), is dropped: the first one counts.

        Returns:
            What to do, in order: deliver messages, and report the gaps skipped to keep
            within the holding limits.

        """
        return self._hold(message, (message, source))

    def pass_over(self, message: GossipMessage) -> list[StreamEvent[S]]:
        """
        ``message`` was refused (by a validator, or too large): its number takes its turn
        without being delivered, so that the messages after it don't wait for it.

        Returns:
            What to do, as :meth:`add` does.

        """
        return self._hold(message, None)

    def missing(self, stream: str) -> tuple[int, int] | None:
        """The range ``(first, last)`` of the gap before ``stream``'s first held message,
        or None if it has none."""
        held = self._held.get(stream)
        if held is None:
            return None
        first, last = self._marks.delivered(stream) + 1, held.seqs[0] - 1
        return (first, last) if first <= last else None

    def held_range(self, stream: str) -> tuple[int, int] | None:
        """The lowest and highest seq held in ``stream`` (behind a gap), or None if it
        holds none."""
        held = self._held.get(stream)
        return None if held is None else (held.seqs[0], max(held.entries))

    def missing_runs(self, stream: str) -> Iterator[tuple[int, int]]:
        """The runs ``(first, last)`` of numbers missing before ``stream``'s last held
        message, ascending: its first gap, then the gaps between held ones."""
        held = self._held.get(stream)
        if held is None:
            return
        first = self._marks.delivered(stream) + 1
        for seq in sorted(held.entries):
            if seq > first:
                yield first, seq - 1
            first = max(first, seq + 1)

    def waits_for(self, stream: str, first: int, last: int) -> bool:
        """Whether a number from ``first`` to ``last`` of ``stream`` is missing here while it
        has a gap not given up (in it, or past the last held: not come yet); past the
        first gap, of the thousand from ``first`` (review84 M1, review87)."""
        if (held := self._held.get(stream)) is None:
            return False
        if (low := max(first, self._marks.delivered(stream) + 1)) < held.seqs[0]:
            return low <= last  # (in the first gap)
        entries = held.entries
        return any(seq not in entries for seq in range(low, min(last + 1, low + 1000)))

    def missing_seqs(self, stream: str, limit: int) -> list[int]:
        """The numbers missing before ``stream``'s last held message, ascending: those of
        its first gap, then of the gaps between held ones; at most ``limit``."""
        held = self._held.get(stream)
        if held is None:
            return []
        entries = held.entries
        seqs: list[int] = []
        seq, remaining = self._marks.delivered(stream) + 1, len(entries)
        while len(seqs) < limit:
            if seq not in entries:
                seqs.append(seq)
            elif (remaining := remaining - 1) == 0:
                break
            seq += 1
        return seqs

    def tick(self, busy: Collection[str] = ()) -> tuple[list[StreamEvent[S]], list[str]]:
        """
        Skip the gaps that have waited ``gap_timeout`` seconds or more (call it every
        gossip heartbeat).

        Args:
            busy: Streams being fetched now: their gaps wait for it (a start decided doesn't).

        Returns:
            What to do (the gaps skipped, the messages released after them), and the
            streams whose gaps still wait, oldest first: ask a peer for what they miss.

        """
        now = self._clock()
        events: list[StreamEvent[S]] = []
        waiting = []
        timeout = self.gap_timeout
        for stream, since in list(self._gap_since.items()):
            if stream in busy and stream not in self._starts:
                continue
            age = now - since
            answered = stream in self._answered
            if stream in self._starts and answered:
                self._unstart(stream)
                events += self.skip_gap(stream, "start")
                if stream in self._gap_since:
                    waiting.append(stream)
            elif age >= timeout and (answered or age >= timeout * UNANSWERED_GAP_FACTOR):
                # Past UNANSWERED_GAP_FACTOR gap_timeouts from the opening, the whole gap.
                events += self.skip_gap(stream, whole=age >= timeout * UNANSWERED_GAP_FACTOR)
                # The gaps after it that a peer answered without: missing as long.
                while stream in self._answered and stream in self._gap_since:
                    events += self.skip_gap(stream)
                if answered and stream in self._gap_since:
                    # The next gap has been missing as long: it waits no new
                    # gap_timeout, only for a peer to answer without it (asked now).
                    # A burst's thousands of one-message gaps were skipped one per
                    # gap_timeout, holding what followed for hours (found by a tester).
                    self._gap_since[stream] = since
                    waiting.append(stream)
            else:
                waiting.append(stream)
        return events, waiting

    def answered(
        self,
        stream: str,
        first: int,
        last: int,
        witness: object = None,
        witnesses: int = 1,
        required: object = None,
        by_required: bool = False,
    ) -> bool:
        """
        A peer answered a fetch of ``stream``'s numbers ``first`` to ``last`` in full.
        If that range held the first number of the stream's gap (now), the peer doesn't
        have it: the gap may be skipped once it is ``gap_timeout`` old.

        A gap before a stream's first held message, the stream without a mark and the
        message :data:`START_AGE` old, is a *start* once ``witnesses`` peers (each
        ``witness`` a key: a network group) answered without it, and ``required`` (a
        key of its own: the answer is ``by_required``) too if given: skipped at the
        next tick. Found by an attacker: one peer answering first that it lacked a
        history the hub kept made a subscriber give up all of it; then (a44 F1) three
        addresses of one /24 were three witnesses, and the hub, asked at random, late.

        Returns:
            True if the start waits for another witness (ask another peer).

        """
        gap = self.missing(stream) if stream in self._gap_since else None
        more = False
        if gap is not None and first <= gap[0] <= last:
            self._answered.add(stream)
            if self.is_start(stream, first, last):
                lacking = self._lacking.setdefault(stream, set())
                lacking.add(witness)
                if by_required:
                    lacking.add(required)
                if required is None:
                    start = len(lacking) >= witnesses
                else:  # (its key is its own: not counted as a witness's)
                    start = required in lacking and len(lacking) - 1 >= witnesses
                if start:
                    self._starts.add(stream)  # (skipped at the next tick)
                else:
                    more = True
            # Every number missing from the gap to last was asked for and didn't come;
            # past the last held message there is no gap yet (found in review: a peer
            # claiming a mark far ahead pre-answered every later gap of the stream).
            last = min(last, max(self._held[stream].entries))
            self._answered_to[stream] = max(last, self._answered_to.get(stream, 0))
        return more

    def is_start(self, stream: str, first: int, last: int) -> bool:
        """Whether an answer without ``stream``'s numbers ``first`` to ``last`` bears on
        its start (see :meth:`answered`): the caller need find its witnesses only then."""
        gap = self.missing(stream) if stream in self._gap_since else None
        return (
            gap is not None and gap[0] == 1 and first <= 1 <= last and self._old(self._held[stream])
        )

    def lacking(self, stream: str) -> frozenset[object]:
        """The witnesses that answered without ``stream``'s start so far (see
        :meth:`answered`)."""
        return frozenset(self._lacking.get(stream, ()))

    def _unstart(self, stream: str) -> None:
        self._starts.discard(stream)
        self._lacking.pop(stream, None)

    def skip_gap(
        self,
        stream: str,
        reason: Literal["timeout", "held", "start"] = "timeout",
        *,
        whole: bool = False,
    ) -> list[StreamEvent[S]]:
        """
        Give up the gap before ``stream``'s first held message: move the mark past it
        and release what follows it. At a timeout, only as far as peers were asked
        for its numbers and lacked them, unless ``whole`` (the gap is
        ``UNANSWERED_GAP_FACTOR`` gap_timeouts old: review32).

        Returns:
            The :class:`GapSkipped`, then the messages released (none if only part of
            the gap went); nothing if the stream has no gap.

        """
        events: list[StreamEvent[S]] = []
        if stream not in self._held:
            self._drop_gap(stream)
            return events
        gap = self.missing(stream)
        if gap is None:  # the mark moved past the gap elsewhere: catch up with it
            self._release(stream, events)
            return events
        first, last = gap
        asked = self._answered_to.get(stream, 0)
        if reason != "held" and not whole and first <= asked < last:
            # Only what peers were asked for and lacked: the refills ask a gap's first
            # numbers (MAX_FETCH_SEQS), and the rest, asked for next, may be held by
            # peers (attacker30: a gap of 12,000 numbers skipped whole at its timeout
            # lost ~9,000 messages the peers still kept).
            last = asked
        if reason != "start":  # (a start is history this node never had, not a loss)
            self.skipped += last - first + 1
        topic, origin = split_stream_key(stream)
        events.append(GapSkipped(topic, origin, first, last, reason))
        self._marks.mark_delivered(stream, last)
        if last < gap[1]:  # the rest of the gap waits for an answer without it
            self._answered.discard(stream)
            self._unstart(stream)
            self._answered_to.pop(stream, None)
            return events
        self._release(stream, events)
        return events

    def _old(self, held: _Held[S]) -> bool:
        """Whether the first message ``held`` is :data:`START_AGE` old or more."""
        entry = held.entries.get(held.seqs[0]) if held.seqs else None
        cutoff = (self._wall_clock() - START_AGE) * 1000
        return entry is not None and entry[0].timestamp <= cutoff

    def _hold(
        self, message: GossipMessage, entry: tuple[GossipMessage, S] | None
    ) -> list[StreamEvent[S]]:
        stream = stream_key(message.topic, message.origin)
        held = self._held.get(stream)
        if message.seq <= self._marks.delivered(stream):
            return []
        if held is None:
            held = self._held[stream] = _Held()
        elif message.seq in held.entries:
            return []
        held.add(message.seq, entry)
        self._held_count += 1
        self._held_bytes += _size(entry)
        events: list[StreamEvent[S]] = []
        self._release(stream, events)
        self._enforce_limits(stream, events)
        return events

    def _release(self, stream: str, events: list[StreamEvent[S]]) -> None:
        """Release what is next in ``stream``; (re)start its gap's clock if one remains."""
        held = self._held[stream]
        following = self._marks.delivered(stream) + 1
        start = following
        while held.seqs and held.seqs[0] < following:  # the mark moved past them elsewhere
            self._forget(held.pop_first())
        while held.seqs and held.seqs[0] == following:
            entry = held.pop_first()
            self._forget(entry)
            if entry is not None:
                events.append(Deliver(*entry))
            following += 1
        if following > start:
            self._marks.mark_delivered(stream, following - 1)
        if not held.entries:
            del self._held[stream]
            self._drop_gap(stream)
        elif following > start or stream not in self._gap_since:
            # A new gap (or the first): it waits gap_timeout from now, behind the others;
            # answered already if a peer answered without its first number.
            self._gap_since.pop(stream, None)
            self._gap_since[stream] = self._clock()
            self._unstart(stream)  # (a new gap: after a delivered number, no start)
            if following <= self._answered_to.get(stream, 0):
                self._answered.add(stream)
            else:
                self._answered.discard(stream)
                self._answered_to.pop(stream, None)

    def _drop_gap(self, stream: str) -> None:
        self._gap_since.pop(stream, None)
        self._answered.discard(stream)
        self._unstart(stream)
        self._answered_to.pop(stream, None)

    def _forget(self, entry: tuple[GossipMessage, S] | None) -> None:
        self._held_count -= 1
        self._held_bytes -= _size(entry)

    def _enforce_limits(self, stream: str, events: list[StreamEvent[S]]) -> None:
        """Skip gaps until the holding limits hold: ``stream``'s, then the oldest ones."""
        held = self._held.get(stream)
        while held is not None and len(held.entries) > self.max_held:
            events += self.skip_gap(stream, "held")
            held = self._held.get(stream)
        while self._held_bytes > self.max_held_bytes and self._gap_since:
            events += self.skip_gap(next(iter(self._gap_since)), "held")
