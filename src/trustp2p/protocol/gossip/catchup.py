"""
Catch-up, free of I/O: which peer a node asks for which messages it missed, in what
batches, and how it reads the answers.

Two requests (REQUEST packages, see ``docs/protocol.md``):

- ``gossip/hwm`` ``{"topics": [topic]}`` answered ``{"hwm": {topic: {origin: seq}}}``:
  per topic asked (and carried by the peer), per origin, the last seq the peer logged
  with nothing missing before it; at most :data:`MAX_HWM_TOPICS` topics and
  :data:`MAX_HWM_ORIGINS` origins per topic (the highest marks first).
- ``gossip/fetch`` ``{"topic", "origin", "from", "to"}`` answered ``{"messages":
  [message body], "last": seq}``: that stream's messages ``from..to`` the peer still
  has, oldest first, at most the peer's ``catchup_batch`` and half its package limit.
  With ``"seqs"`` (at most :data:`MAX_FETCH_SEQS` ascending numbers from ``from`` to
  ``to``), only those: the gaps of a stream, between the messages the asker holds.

When to catch up and whom to ask (the node carries it out):

- when a peer introduces itself, its marks; every ``catchup_interval``, a random
  peer's (:meth:`CatchUp.choose`);
- from those, each stream where the peer has more than we logged or delivered
  (:func:`plan_fetches`; of a stream with messages held behind a gap, its gaps and
  what follows the last held, not what is held), in batches (:class:`Fetch`), one
  fetch per stream at a time (:meth:`CatchUp.begin`), at most a
  :class:`~.budget.RoundBudget` of bytes a round;
- the gaps in a live stream (see :mod:`.streams`): from the peer whose message revealed
  one, then, at each gossip heartbeat until they are filled or skipped, from a random
  peer (:func:`gap_fetch`): all of the stream's missing numbers at once (up to
  :data:`MAX_GAP_SEQS`), by ``seqs``, so that the thousands of small gaps a burst leaves
  fill in a few requests; a first gap that wide or wider, as a range.

A peer that answers with an error (it runs without gossip; the node's request raises
:exc:`~trustp2p.exceptions.RemoteError`) is not at fault: another is asked later. A
request or answer with a list too long or a number out of bounds is a protocol error
(:class:`GossipError`).

"""

from __future__ import annotations

__all__ = [
    "DEFAULT_ANSWER_BYTES",
    "FETCH",
    "FETCH_ALONE",
    "HWM",
    "MAX_FETCHES",
    "MAX_FETCH_SEQS",
    "MAX_GAP_RANGES",
    "MAX_GAP_SEQS",
    "MAX_HWM_ORIGINS",
    "MAX_HWM_TOPICS",
    "MESSAGE_OVERHEAD",
    "CatchUp",
    "Fetch",
    "FetchRange",
    "HeldView",
    "answer_size_limit",
    "decode_answer_bounds",
    "decode_fetch_request",
    "decode_hwm_answer",
    "decode_hwm_request",
    "fetch_answer",
    "gap_fetch",
    "hwm_answer",
    "message_size_limit",
    "order_fetches",
    "payload_size",
    "plan_fetches",
    "wire_size",
]

import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

from ...exceptions import GossipError
from ..package import Body
from .catchup_wire import (
    DEFAULT_ANSWER_BYTES,
    FETCH,
    FETCH_ALONE,
    HWM,
    MAX_FETCH_SEQS,
    MAX_FETCHES,
    MAX_GAP_RANGES,
    MAX_GAP_SEQS,
    MAX_HWM_ORIGINS,
    MAX_HWM_TOPICS,
    MESSAGE_OVERHEAD,
    FetchRange,
    HeldView,
    answer_size_limit,
    decode_answer_bounds,
    decode_fetch_request,
    decode_hwm_answer,
    decode_hwm_request,
    fetch_answer,
    gap_fetch,
    hwm_answer,
    message_size_limit,
    order_fetches,
    payload_size,
    plan_fetches,
    wire_size,
)
from .message import GossipMessage

P = TypeVar("P")


class Fetch:
    """
    One range of one stream fetched from one peer, an answer at a time: send
    :meth:`request`, pass the answer to :meth:`receive`, until :attr:`done`.

    A range is asked for to its end each time; the peer answers what it keeps of it,
    oldest first, at most its own ``catchup_batch``. So a peer whose log starts past
    the range's first numbers answers from its first message (found in review: asked a
    window of ``batch`` at a time, such a peer answered the first window with nothing,
    which ended the fetch, and each later round asked the same window: the stream
    stalled until its origin published again).

    Args:
        wanted: The range (only its ``seqs`` if it has them).
        batch: Most messages an answer may hold; of ``seqs``, most asked for at once.

    """

    def __init__(self, wanted: FetchRange, batch: int) -> None:
        self.wanted = wanted
        self.batch = batch if wanted.seqs is None else min(batch, MAX_FETCH_SEQS)
        self.limit = batch
        """Most messages an answer may hold (the request's ``limit``)."""
        self.next = wanted.first
        """The first seq not received yet (of ``wanted.seqs``, if given)."""
        self.done = wanted.first > wanted.last
        """Whether to stop: everything came, or the peer has nothing more."""
        self.behind = False
        """The peer answered nothing and keeps nothing of the stream past some of what
        was asked: it hasn't got that far (yet), rather than lacking it."""
        self.answered_to = 0
        """Once :attr:`done`: the highest seq asked for that the peer answered for in
        full (those asked for up to it that didn't come, it lacks); 0 for none."""
        self.waiting = False
        """The peer said it waits for some of those asked for from their origin
        (``"waiting": true``): what didn't come, it answered for none of (tester45 F2: a
        hub connected to a slow origin waited for its messages; the nodes behind it gave
        them up on the hub's word)."""
        self.first_received = 0
        """The seq of the first message received; 0 for none yet."""
        self.ranges = False
        """Whether the peer answered ``seqs`` with messages it wasn't asked for: it
        doesn't know ``seqs`` (an earlier version), so each request asks for one run of
        consecutive missing numbers instead, rather than have it send all those between
        (found in review: about 8,300 held messages re-sent per fetch after a burst)."""
        self._to = 0
        self._pos = 0  # wanted.seqs[_pos] is next
        self._asked: frozenset[int] = frozenset()
        self.peer: object = None
        """The peer asked (set by :meth:`CatchUp.begin`)."""
        self.began = 0.0
        """When it began, on :class:`CatchUp`'s clock."""
        self.ended = False

    def lacking_to(self, *, held_back: bool = False) -> int:
        """
        Once :attr:`done`: the highest seq up to which the peer lacks the numbers still
        missing (:attr:`answered_to`); 0 for none.

        Args:
            held_back: What came isn't in the stream's order yet (a validator has it):
                only the numbers before the first that came count as lacking (found in
                review: a slow validator's messages were skipped as lacking, then
                dropped as too old once validated).

        """
        to = self.answered_to
        if held_back and self.first_received:
            to = min(to, self.first_received - 1)
        return to if to >= self.wanted.first else 0

    @property
    def lacking_before(self) -> int:
        """
        Before :attr:`done`: the highest seq up to which the peer lacks the start of a
        range asked for (its answers began past it: a peer answers a range from its
        first kept message); 0 for none, or a fetch of ``seqs``, or one it waits for.
        Found while mending tester46's finding: a new node fetched a whole stream whose
        first messages its hub had let go of, holding all of it, before it said so; with
        such streams fetched first, nothing was delivered for 10 s.
        """
        if self.wanted.seqs is not None or self.waiting or not self.first_received:
            return 0
        return self.first_received - 1 if self.first_received > self.wanted.first else 0

    def request(self) -> Body:
        """The next ``gossip/fetch`` request: from :attr:`next` to the range's end (of
        ``seqs``, at most ``batch`` of them)."""
        wanted = self.wanted
        body: Body = {"topic": wanted.topic, "origin": wanted.origin, "from": self.next}
        seqs = wanted.seqs
        if seqs is None:
            self._to = wanted.last  # the peer's batch bounds the answer
        elif self.ranges:
            end, limit = self._pos, min(len(seqs), self._pos + self.batch)
            while end + 1 < limit and seqs[end + 1] == seqs[end] + 1:
                end += 1
            self._to = seqs[end]
        else:
            asked = seqs[self._pos : self._pos + self.batch]
            self._to = asked[-1]
            self._asked = frozenset(asked)
            body["seqs"] = list(asked)
        body["to"] = self._to
        return body

    def receive(self, answer: Body, *, max_data: int | None = None) -> list[GossipMessage]:
        """
        Read the answer to the last :meth:`request`. An empty answer ends the fetch: the
        peer doesn't have those messages (yet); others may. (Of a fetch of ``seqs``, it
        moves on to the next batch, unless the peer keeps nothing of the stream, is
        behind, or doesn't know ``seqs``.)

        A message in the range that wasn't among the ``seqs`` asked for is taken: the
        peer doesn't know ``seqs`` and answers the range (then :attr:`ranges`).

        Args:
            answer: The answer's body (an error answer raised
                :exc:`~trustp2p.exceptions.RemoteError` before this).
            max_data: Most characters of payload in a message; see
                :meth:`GossipMessage.from_body`.

        Returns:
            The verified messages, in seq order.

        Raises:
            GossipError: If the answer holds more messages than asked for, a message
                that is malformed or forged, or one not asked for (another origin, or a
                seq outside the request or not after the previous one).

        """
        messages = self._read(answer.get("messages"), max_data)
        wanted, last = self.wanted, self._to
        first = messages[-1].seq + 1 if messages else self.next
        peer_last = answer.get("last")
        if messages:
            self.done = first > wanted.last
        elif type(peer_last) is int and 0 < peer_last < last:
            # Nothing, from a peer whose stream ends before the end of what was asked:
            # it hasn't got those after its last yet (a relay behind in a burst), which
            # says nothing of whether anyone has them; those up to it, it lacks (found
            # in review: the whole batch counted as lacking).
            self.behind = self.done = True
            last = peer_last  # what it has, it answered for
        elif wanted.seqs is not None and not self.ranges and peer_last != 0:
            # It lacks every number of this batch: on to the next (found in review: the
            # numbers after a batch the peer lacked waited for the gaps' timeout). A
            # peer that keeps nothing of the stream (0) lacks them all. (A peer without
            # seqs is asked a run at a time: an empty answer ends it, or it could make
            # us ask for each missing number in turn, found in review.)
            first = last + 1
            self.done = first > wanted.last
        else:
            self.done = True
        self.next = first
        if messages and not self.first_received:
            self.first_received = messages[0].seq
        if wanted.seqs is not None and not self.ranges:
            self.ranges = not self._asked.issuperset(message.seq for message in messages)
        if wanted.seqs is not None and not self.done:
            self._move_past(wanted.seqs, first)
        if answer.get("waiting") is True:
            self.waiting = True
        if self.done and last >= wanted.first and not self.waiting:
            self.answered_to = last
        return messages

    def _move_past(self, seqs: tuple[int, ...], first: int) -> None:
        """On to the first of ``seqs`` from ``first`` on (those before came, or the peer
        lacks them); done if there is none."""
        while self._pos < len(seqs) and seqs[self._pos] < first:
            self._pos += 1
        self.done = self._pos == len(seqs)
        if not self.done:
            self.next = seqs[self._pos]

    def _read(self, items: object, max_data: int | None) -> list[GossipMessage]:
        """The messages of an answer to the last request, checked (their number before
        any is verified: review19 F3, 4,214 in 1 MiB took 0.5 s) and verified."""
        first, last = self.next, self._to
        most = min(last - first + 1, self.limit)
        if not isinstance(items, list) or len(items) > most:
            raise GossipError(f"messages must be a list of at most {most}")
        wanted = self.wanted
        messages = []
        for item in items:
            if not isinstance(item, dict):
                raise GossipError("a message is not an object")
            message = GossipMessage.from_body(wanted.topic, item, max_data=max_data)
            if message.origin != wanted.origin or not first <= message.seq <= last:
                raise GossipError(f"a message that wasn't asked for (seq {message.seq})")
            first = message.seq + 1
            messages.append(message)
        return messages


class CatchUp:
    """
    The catch-up decisions of one node: whom to ask, about which topics, and which
    streams are being fetched.

    A stream is fetched from one peer at a time, for :data:`FETCH_ALONE` seconds: a
    fetch still running then no longer holds the stream's gaps (they may be skipped)
    nor keeps other peers from being asked for them.

    Args:
        batch: Most of the numbers a gap fetch asks for at once (the
            ``catchup_batch`` option).
        max_fetches: Most streams fetched from one peer at once.
        clock: Monotonic seconds.
        rng: Random source, for tests.

    """

    def __init__(
        self,
        *,
        batch: int,
        max_fetches: int = MAX_FETCHES,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.batch = batch
        self.max_fetches = max_fetches
        self._clock = clock
        self._rng = rng or random.Random()
        self._fetching: dict[str, Fetch] = {}  # stream -> its latest fetch
        self._asked: Counter[object] = Counter()  # peer -> its fetches under way
        self._running: dict[str, set[object]] = {}  # stream -> peers fetching it

    @property
    def fetching(self) -> frozenset[str]:
        """The streams being fetched now (by a fetch less than :data:`FETCH_ALONE`
        seconds old)."""
        return frozenset(stream for stream in self._fetching if self.is_fetching(stream))

    def is_fetching(self, stream: str) -> bool:
        return self.held_for(stream) > 0

    def held_for(self, stream: str) -> float:
        """Seconds the stream's running fetch keeps others from it (0: none does)."""
        fetch = self._fetching.get(stream)
        return 0.0 if fetch is None else max(0.0, fetch.began + FETCH_ALONE - self._clock())

    def choose(self, peers: Sequence[P], sources: Sequence[tuple[P, float]] = ()) -> P | None:
        """A peer to ask, at random; None if there is none. Every other time (at
        random) one of ``sources`` if there are any, drawn by weight: the peers that
        relayed new messages first lately, with their credit (see
        :class:`~.sources.RelaySources`). Found by an attacker: identities that
        subscribed and never served anything won the draw K times in K + 1, and
        messages an honest relay held stayed missing for minutes."""
        if sources and self._rng.random() < 0.5:
            weights = [weight for _, weight in sources]
            return self._rng.choices([peer for peer, _ in sources], weights)[0]
        return self._rng.choice(peers) if peers else None

    def hwm_request(self, topics: Collection[str]) -> Body:
        """The ``gossip/hwm`` request about ``topics``: all of them, sorted, or a random
        :data:`MAX_HWM_TOPICS` of them if there are more."""
        asked = sorted(topics)
        if len(asked) > MAX_HWM_TOPICS:
            asked = sorted(self._rng.sample(asked, MAX_HWM_TOPICS))
        return {"topics": asked}

    def begin(self, wanted: FetchRange, peer: object = None) -> Fetch | None:
        """
        Start fetching ``wanted``; call :meth:`end` when done, whatever happens.

        Returns:
            The fetch from ``peer``, or None if the range is empty, its stream is being
            fetched already (its gap waits for that fetch), or ``max_fetches`` streams
            are from that peer (it waits for a later heartbeat or catch-up round).

        """
        if wanted.first > wanted.last or not self.may_begin(wanted.stream, peer):
            return None
        fetch = self._fetching[wanted.stream] = Fetch(wanted, self.batch)
        fetch.peer, fetch.began = peer, self._clock()
        self._asked[peer] += 1
        self._running.setdefault(wanted.stream, set()).add(peer)
        return fetch

    def may_begin(self, stream: str, peer: object = None) -> bool:
        """Whether :meth:`begin` would start a fetch of ``stream`` from ``peer`` (of a
        range that isn't empty)."""
        if self._asked[peer] >= self.max_fetches or self.is_fetching(stream):
            return False
        # A slow peer isn't asked twice, even once another peer's fetch that replaced
        # its own has ended (found in review).
        return peer not in self._running.get(stream, ())

    def end(self, fetch: Fetch) -> None:
        """The fetch is over (done, failed or cancelled)."""
        if fetch.ended:
            return
        fetch.ended = True
        stream = fetch.wanted.stream
        if self._fetching.get(stream) is fetch:
            del self._fetching[stream]
        peers = self._running.get(stream)
        if peers is not None:
            peers.discard(fetch.peer)
            if not peers:
                del self._running[stream]
        self._asked[fetch.peer] -= 1
        if not self._asked[fetch.peer]:
            del self._asked[fetch.peer]
