"""
Catch-up on the wire, free of I/O: the ``gossip/hwm`` and ``gossip/fetch`` requests and
their answers (their limits, how they are built and read), and which ranges to fetch
from a peer's marks (:func:`plan_fetches`) or a stream's gap (:func:`gap_fetch`).

:mod:`.catchup` describes the two requests and decides whom to ask; it re-exports
everything here.

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

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ...exceptions import GossipError
from ...identity import is_peer_id
from ..package import Body
from .message import MAX_SEQ, GossipMessage, check_int, check_topic
from .streams import split_stream_key, stream_key

HWM = "gossip/hwm"
FETCH = "gossip/fetch"

MAX_HWM_TOPICS = 1000
"""Most topics in a ``gossip/hwm`` request or answer. A node subscribed to more asks
about a random sample of them each time."""

MAX_HWM_ORIGINS = 2000
"""Most origins per topic in a ``gossip/hwm`` answer; a node serves the highest marks."""

MAX_FETCHES = 8
"""Most streams a node fetches from one peer at once; the gaps of others wait for a
later heartbeat. Each gap a peer reveals (a message far ahead of its stream) starts a
fetch: a peer sending thousands of them made the node send thousands of requests to its
honest peers, past their budget. Per peer: one that doesn't answer holds its own slots."""

FETCH_ALONE = 5.0
"""Seconds a fetch has its stream to itself; after them, its gaps may be skipped and
another peer asked too. A peer that answered each fetch request just inside
``open_timeout`` with one message held a stream's catch-up for as long as it liked, the
messages of that origin held behind it (found by an attacker's test)."""

MAX_FETCH_SEQS = 1000
"""Most numbers in a ``gossip/fetch`` request's ``seqs``. A node asks for at most its
``catchup_batch`` at a time (this many if that is larger)."""

MAX_GAP_SEQS = 1000
"""Most missing numbers of one stream a gap fetch goes after (in requests of
``catchup_batch``); the ones after them wait for the next heartbeat."""

MAX_GAP_RANGES = 8
"""Most gaps of one stream a catch-up round asks for as ranges (those as wide as
:data:`MAX_GAP_SEQS` or wider); the others wait for a later round. An origin can leave
as many gaps as it signs messages, each asked of a peer claiming a mark past it."""

MESSAGE_OVERHEAD = 320
"""Bytes of a message's package body besides its payload: field names, origin, seq,
timestamp, public key and signature (base64), hops. At most about 300."""

DEFAULT_ANSWER_BYTES = 512 * 1024
"""Most bytes of messages in a ``gossip/fetch`` answer when packages have no size limit."""


def message_size_limit(max_package_size: int | None) -> int | None:
    """Largest message a node takes or publishes (its package body, in bytes): a
    quarter of the package limit, so that a catch-up answer (half) always holds one."""
    return None if max_package_size is None else max_package_size // 4


def answer_size_limit(max_package_size: int | None) -> int:
    """Most bytes of messages in a ``gossip/fetch`` answer: half the package limit, which
    leaves room for the rest of the answer."""
    return DEFAULT_ANSWER_BYTES if max_package_size is None else max_package_size // 2


def payload_size(text: str) -> int:
    """About the bytes of the package body of a message carrying payload ``text``
    (JSON-escaped in the body, UTF-8 encoded), at most :data:`MESSAGE_OVERHEAD` over."""
    return len(json.dumps(text, ensure_ascii=False).encode()) + MESSAGE_OVERHEAD


def wire_size(message: GossipMessage) -> int:
    """Bytes of a message's package body, as a fetch answer carries it (no ``via``)."""
    body = message.to_body()
    body.pop("via", None)
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


@dataclass(frozen=True, slots=True)
class FetchRange:
    """Messages ``first`` to ``last`` of ``origin`` on ``topic``; only the numbers
    ``seqs`` (ascending, from ``first`` to ``last``) if they are given."""

    topic: str
    origin: str
    first: int
    last: int
    seqs: tuple[int, ...] | None = None

    @classmethod
    def of_seqs(cls, topic: str, origin: str, seqs: Sequence[int]) -> FetchRange:
        """The messages numbered ``seqs`` (ascending, at least one)."""
        return cls(topic, origin, seqs[0], seqs[-1], tuple(seqs))

    @property
    def stream(self) -> str:
        """The stream's key (see :func:`.streams.stream_key`)."""
        return stream_key(self.topic, self.origin)


# Serving: what a peer asks of us.


def decode_answer_bounds(body: Body) -> tuple[int | None, int | None]:
    """
    The optional ``max_bytes`` and ``limit`` of a ``gossip/hwm`` or ``gossip/fetch``
    request: the most bytes of marks or messages, and the most messages, the asker takes
    in an answer (None where not given: a peer of an earlier version).

    Raises:
        GossipError: If one is not an integer within ``1..MAX_SEQ``.

    """
    max_bytes, limit = body.get("max_bytes"), body.get("limit")
    return (
        None if max_bytes is None else check_int(max_bytes, "max_bytes", 1, MAX_SEQ),
        None if limit is None else check_int(limit, "limit", 1, MAX_SEQ),
    )


def decode_hwm_request(body: Body) -> list[str]:
    """
    The topics a ``gossip/hwm`` request asks about.

    Raises:
        GossipError: If they are not a list of at most :data:`MAX_HWM_TOPICS` topics.

    """
    topics = body.get("topics")
    if not isinstance(topics, list) or len(topics) > MAX_HWM_TOPICS:
        raise GossipError(f"topics must be a list of at most {MAX_HWM_TOPICS} topics")
    for topic in topics:
        check_topic(topic)
    return topics


def hwm_answer(
    topics: Iterable[str], carried: Collection[str], marks: Callable[[str], Mapping[str, int]]
) -> Body:
    """
    The answer to a ``gossip/hwm`` request.

    Args:
        topics: The topics asked about.
        carried: The topics we carry; the others are left out.
        marks: Per topic, the highest :data:`MAX_HWM_ORIGINS` marks of its streams in
            our log, by origin (:class:`.hwm.HwmMarks`).

    """
    return {"hwm": {topic: marks(topic) for topic in topics if topic in carried}}


def decode_fetch_request(body: Body) -> FetchRange:
    """
    The messages a ``gossip/fetch`` request asks for.

    Raises:
        GossipError: If a field is missing or malformed, ``from..to`` is not a range
            within ``1..MAX_SEQ``, or ``seqs`` (optional) is not a list of at most
            :data:`MAX_FETCH_SEQS` ascending numbers within it.

    """
    topic = check_topic(body.get("topic"))
    origin = body.get("origin")
    if not isinstance(origin, str) or not is_peer_id(origin):
        raise GossipError("invalid origin")
    first = check_int(body.get("from"), "from", 1, MAX_SEQ)
    last = check_int(body.get("to"), "to", 1, MAX_SEQ)
    if first > last:
        raise GossipError(f"from {first} exceeds to {last}")
    seqs = body.get("seqs")
    if seqs is None:
        return FetchRange(topic, origin, first, last)
    if not isinstance(seqs, list) or not 0 < len(seqs) <= MAX_FETCH_SEQS:
        raise GossipError(f"seqs must be a list of 1 to {MAX_FETCH_SEQS} numbers")
    below = first - 1
    for seq in seqs:
        below = check_int(seq, "seq", below + 1, last)  # ascending, within from..to
    return FetchRange(topic, origin, first, last, tuple(seqs))


def fetch_answer(
    messages: Iterable[GossipMessage], max_bytes: int, last: int = 0, *, waiting: bool = False
) -> Body:
    """
    The answer to a ``gossip/fetch`` request: ``messages`` (oldest first) up to
    ``max_bytes`` bytes as they go on the wire. The first is always in it, so that the
    asker moves on; it asks again from the last seq it got + 1. ``last`` is the highest
    seq we keep of the stream (0: none): with no message, it tells a peer that lacks
    them (we are past them) from one that hasn't got them yet. ``waiting``: we lack some
    of those asked for and wait for them from their origin, connected to us (``"waiting":
    true``): our lack is no reason to give them up.
    """
    bodies: list[Body] = []
    size = 0
    for message in messages:
        body = message.to_body()
        size += len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()) + 1
        if size > max_bytes and bodies:
            break
        bodies.append(body)
    answer: Body = {"messages": bodies, "last": last}
    if waiting:
        answer["waiting"] = True
    return answer


# Asking: what we want of a peer, and its answers.


def decode_hwm_answer(answer: Body) -> dict[str, dict[str, int]]:
    """
    The marks a peer answered ``gossip/hwm`` with: ``{topic: {origin: seq}}``.

    Raises:
        GossipError: If there are more than :data:`MAX_HWM_TOPICS` topics or
            :data:`MAX_HWM_ORIGINS` origins in a topic, or a topic, origin or seq
            (``1..MAX_SEQ``) is malformed.

    """
    marks = answer.get("hwm")
    if not isinstance(marks, dict) or len(marks) > MAX_HWM_TOPICS:
        raise GossipError(f"hwm must map at most {MAX_HWM_TOPICS} topics")
    for topic, origins in marks.items():
        check_topic(topic)
        if not isinstance(origins, dict) or len(origins) > MAX_HWM_ORIGINS:
            raise GossipError(f"a topic's marks must map at most {MAX_HWM_ORIGINS} origins")
        for origin, seq in origins.items():
            if not isinstance(origin, str) or not is_peer_id(origin):
                raise GossipError("invalid origin")
            check_int(seq, "seq", 1, MAX_SEQ)
    return marks


class HeldView(Protocol):
    """What :func:`plan_fetches` reads of the messages held behind gaps
    (:class:`~.streams.Streams` is one)."""

    def held_range(self, stream: str, /) -> tuple[int, int] | None: ...

    def missing_runs(self, stream: str, /) -> Iterable[tuple[int, int]]: ...


def plan_fetches(
    marks: Mapping[str, Mapping[str, int]],
    carried: Collection[str],
    high_water: Callable[[str], Mapping[str, int]],
    delivered: Callable[[str], int],
    held: HeldView | None = None,
) -> list[FetchRange]:
    """
    What to fetch from a peer, given its marks (:func:`decode_hwm_answer`).

    Args:
        marks: The peer's marks.
        carried: The topics we carry; the others are left out.
        high_water: Per topic, the high-water mark of each of its streams in our log.
        delivered: Per stream, our delivered mark.
        held: The messages held behind gaps; None: nothing is held.

    Returns:
        For each stream where the peer has more than we logged or delivered, the range
        after what we have up to the peer's mark. Of a stream with messages held
        behind a gap, what is missing up to the last held (:func:`_held_gaps`), then
        the range after it: the messages held are not asked for again (review19 F4: a
        restarted node whose log kept the stream's first messages was served 20,000
        messages it held, for the 2,000 it needed, while its gap waited).

    """
    wanted = []
    for topic, origins in marks.items():
        if topic not in carried:
            continue
        ours = high_water(topic)
        for origin, last in origins.items():
            stream = stream_key(topic, origin)
            logged = ours.get(stream, 0)
            span = None if held is None else held.held_range(stream)
            if last <= logged and span is None:
                continue  # (the usual case: nothing to fetch, whatever was delivered)
            have = max(logged, delivered(stream))
            if held is not None and span is not None:
                runs = held.missing_runs(stream)
                if have < span[0]:  # (what our log keeps past the mark isn't asked)
                    runs = ((max(a, have + 1), b) for a, b in runs if b > have)
                wanted += _held_gaps(topic, origin, runs, last)
                have = max(have, span[1])
            if last > have:
                wanted.append(FetchRange(topic, origin, have + 1, last))
    return wanted


def order_fetches(
    planned: list[FetchRange], delivered: Callable[[str], int], held: HeldView
) -> None:
    """
    Put ``planned`` (:func:`plan_fetches`) in the order to fetch, in place, keeping the
    order otherwise (shuffle it first): the streams with messages held behind a gap
    first, since what is held (a live message, most often) waits for them; and of each
    stream, what fills a gap before what follows a gap. Found by a tester (tester46): a
    new node fetched its hub's 30,000 messages in random order, and the live messages
    of an origin with a long history waited behind the whole backlog, not its own.
    """

    def key(wanted: FetchRange) -> tuple[bool, bool]:
        stream = wanted.stream
        return held.held_range(stream) is None, wanted.first > delivered(stream) + 1

    planned.sort(key=key)


def _held_gaps(
    topic: str, origin: str, runs: Iterable[tuple[int, int]], last: int
) -> list[FetchRange]:
    """
    The gaps of a stream up to ``last`` (the peer's mark): each as wide as
    :data:`MAX_GAP_SEQS` or wider as a range, which a peer answers from its first kept
    message (attacker30 F1: left to the refills, which ask a gap's first numbers, a gap
    of 12,000 was given up with the 9,000 the peers still kept), at most
    :data:`MAX_GAP_RANGES` of them; the narrower ones' numbers by ``seqs``, at most
    :data:`MAX_GAP_SEQS` (a burst's thousands of one-number gaps in a few requests).
    The rest waits for the refills and later rounds.
    """
    ranges: list[FetchRange] = []
    seqs: list[int] = []
    asked = wide = 0
    for first, end in runs:
        end = min(end, last)
        if first > end or (wide == MAX_GAP_RANGES and asked == MAX_GAP_SEQS):
            break
        if end - first + 1 >= MAX_GAP_SEQS:
            # (review33: a seqs fetch must not span a gap it doesn't ask: its answer
            # counts every number up to its last as lacked)
            if seqs:
                ranges.append(FetchRange.of_seqs(topic, origin, seqs))
                seqs = []
            if wide == MAX_GAP_RANGES:
                break
            wide += 1
            ranges.append(FetchRange(topic, origin, first, end))
        else:
            more = list(range(first, min(end + 1, first + MAX_GAP_SEQS - asked)))
            seqs += more
            asked += len(more)
    if seqs:
        ranges.append(FetchRange.of_seqs(topic, origin, seqs))
    return ranges


def gap_fetch(
    stream: str, gap: tuple[int, int], missing: Callable[[int], Sequence[int]]
) -> FetchRange:
    """
    What a gap refill asks a peer for: the gap before ``stream``'s first held message
    as a range, if it holds :data:`MAX_GAP_SEQS` numbers or more (a peer answers it from
    its first kept message, and with nothing past what it lacks); else the numbers
    missing, the gaps between the held messages too, by ``seqs``.

    Found in a measurement (attacker30 F1, again on 852e29d): asked by ``seqs``, a gap
    of 11,000 got its first 1,000 numbers asked each heartbeat, which every peer lacked;
    the catch-up rounds that would have asked it as a range were refused while such a
    fetch held the stream, and the gap was given up with the 9,000 messages the peers
    kept (2 of 3 rolling restarts).

    Args:
        stream: The stream's key.
        gap: The first gap, ``(first, last)`` (:meth:`.streams.Streams.missing`).
        missing: Given a most, the stream's missing numbers, ascending
            (:meth:`.streams.Streams.missing_seqs`).

    """
    topic, origin = split_stream_key(stream)
    first, last = gap
    if last - first + 1 >= MAX_GAP_SEQS:
        return FetchRange(topic, origin, first, last)
    return FetchRange.of_seqs(topic, origin, missing(MAX_GAP_SEQS))
