"""
What a node says about the gossip messages it drops unseen for their timestamp
(``Gossip.too_old``), for their size, for their seq (signed twice), shed while their
topic's handlers are behind (:mod:`.gossip_delivery`), or skips in a gap:
the log line, with the numbers an operator needs (a catch-up's starts: one line).

"""

from __future__ import annotations

__all__ = [
    "STARTS_SAID_EVERY",
    "START_SAID",
    "SkipsSaid",
    "drop_oversized",
    "oversized_line",
    "say_shed",
    "say_too_old",
    "signed_twice",
    "too_old_line",
]

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..admin.counters import MAX_TOPICS, count
from ..protocol.gossip import GapSkipped, GossipMessage, GossipRouter, Stale, stream_key
from ..storage.msglog import MessageLog

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from .node import Node

logger = logging.getLogger("trustp2p.node.gossip")


def too_old_line(
    message: GossipMessage, why: Stale, now: float, forgotten_before: float, clock_skew: float
) -> tuple[str, tuple[object, ...]]:
    """
    The log line (``%``-style) and its arguments for ``message``, dropped because it is
    ``"expired"``, ``"forgotten"`` or from the ``"future"`` (see
    :meth:`~trustp2p.protocol.gossip.Streams.stale`); ``now`` and ``forgotten_before``
    are wall-clock seconds.
    """
    ts = message.timestamp / 1000
    if why == "future":  # (tester48 F1: else a fast clock won every last-write-wins)
        text = (
            "! message %d of %s on %r dropped: timestamped %.0f s in the future, past the"
            " %.0f s of clock skew allowed (is the origin's clock ahead, or this node's"
            " behind?)"
        )
        return text, (message.seq, message.origin, message.topic, ts - now, clock_skew)
    where: tuple[object, ...] = (message.seq, message.origin, message.topic, now - ts)
    if why == "expired":  # (tester40 F1: the message was blamed, not a clock)
        text = (
            "! message %d of %s on %r dropped: timestamped %.0f s ago, past log_max_age"
            " (is this node's clock, or the origin's, wrong?)"
        )
        return text, where
    text = (
        "! message %d of %s on %r dropped: timestamped %.0f s ago, %.0f s before the delivery"
        " marks this node forgot (over %.0f s: is the origin's clock behind?)"
    )
    return text, (*where, forgotten_before - ts, clock_skew)


def say_too_old(
    node: Node, message: GossipMessage, why: Stale, now: float, *marks: float, live: bool
) -> None:
    """A message dropped for its timestamp (``now`` and ``marks`` as
    :func:`too_old_line` takes them): counted per topic, and said (live ones within the
    log budget: an attacker's flood of origins had a lagging clock's dropped unsaid;
    those from the future with a budget of their own)."""
    count(node.metrics.topic_too_old, message.topic, limit=MAX_TOPICS)
    text, where = too_old_line(message, why, now, *marks)
    if live:
        kind = "from the future" if why == "future" else "too old"
        node.connections.inbound.log(logger, logging.WARNING, kind, text, *where)
    else:
        logger.debug(text, *where)


def oversized_line(message: GossipMessage, size: int, cap: int) -> tuple[str, tuple[object, ...]]:
    """The log line and its arguments for ``message``, dropped: ``size`` bytes exceed
    ``cap``, what our catch-up answers hold."""
    where = (message.seq, message.origin, message.topic, size, cap)
    return "! dropped message %d of %s on %r: %d bytes exceed %d", where


def drop_oversized(
    node: Node, router: GossipRouter, message: GossipMessage, size: int, cap: int
) -> bool:
    """A valid message too large for our catch-up answers (``size`` bytes over ``cap``):
    counted, said at INFO within the log budget (an attacker's), and seen (its copies
    are dropped by id), refused. Returns whether it is new: then the caller passes over
    its seq (seen before, it holds its place already, or was dealt with)."""
    router.stats.oversized += 1
    said, where = oversized_line(message, size, cap)
    node.connections.inbound.log(logger, logging.INFO, "oversized", said, *where)
    if not router.receive(None, message, pending=True):
        return False
    router.refuse(message.id)
    return True


def say_shed(node: Node, message: GossipMessage, socket: Socket, router: GossipRouter) -> bool:
    """A live message from ``socket`` shed (see :mod:`.gossip_delivery`): counted
    (``trustp2p_gossip_shed_total``) and said at INFO within the log budget. It was
    neither logged nor seen: catch-up fetches it later; its copies are dropped by id
    for a while (:data:`~trustp2p.protocol.gossip.SHED_FOR`). If asked for (``iwant``),
    the peer kept its promise: not asked again of another nor marked broken for it.
    Returns False (not new)."""
    node.metrics.gossip_shed += 1
    router.shed(message.id)
    said = "! message %d of %s on %r from %s dropped: its topic is over its share of the"
    said += " messages waiting for their handlers (fetched later by catch-up)"
    where = (message.seq, message.origin, message.topic, socket.peer)
    node.connections.inbound.log(logger, logging.INFO, "shed", said, *where)
    return False


START_SAID = 10
"""A stream's start that skips fewer numbers than this is said at DEBUG only: under an
attacker's throwaway origins, each one's first message gone, their starts used up the
log budget and hid an honest origin's start of 153 (found by a measurement)."""

STARTS_SAID_EVERY = 60.0
"""Seconds the streams that start here wait, at most, to be said in one line while
catch-up goes on (:class:`SkipsSaid`)."""

_START = "= %s on %r starts at seq %d here: the peers asked keep none of the %d before"


class SkipsSaid:
    """
    Says the messages a node skips in a gap, never delivered: an operator's business, a
    WARNING within the log budget (found by a tester: thousands lost in a burst said
    only at INFO). A stream's start (history nobody keeps, not a loss) is said at DEBUG,
    and those that skip :data:`START_SAID` or more at INFO too, in one line (its own
    budget) once nothing is fetched, or :data:`STARTS_SAID_EVERY` after the first: found
    by a tester (tester46 LOW 4), a new node joining a hub that kept the last 500
    messages of each of 20 origins said a line for 10 of them, then "10 more".

    Args:
        node: The node whose log budget the lines use.
        clock: Monotonic seconds.

    """

    __slots__ = ("_before", "_clock", "_most", "_node", "_since", "_topics", "streams")

    def __init__(self, node: Node, clock: Callable[[], float]) -> None:
        self._node, self._clock = node, clock
        self.streams = self._before = 0  # starts not said at INFO yet, their numbers
        self._topics: set[str] = set()  # (the node's: bounded)
        self._most: GapSkipped | None = None  # the one that skips the most
        self._since = 0.0  # when the first of them came

    def skipped(self, event: GapSkipped) -> None:
        """A gap given up (:class:`~trustp2p.protocol.gossip.GapSkipped`)."""
        if event.reason == "start":
            logger.debug(_START, event.origin, event.topic, event.last + 1, event.count)
            if event.count >= START_SAID:
                if not self.streams:
                    self._since = self._clock()
                self.streams += 1
                self._before += event.count
                self._topics.add(event.topic)
                if self._most is None or event.count > self._most.count:
                    self._most = event
            return
        skipped = (event.count, event.origin, event.topic, event.last + 1, event.reason)
        said = "! %d messages of %s on %r before seq %d skipped (%s)"
        self._node.connections.inbound.log(logger, logging.WARNING, "gap skipped", said, *skipped)

    def heartbeat(self, *, fetching: bool) -> None:
        """Say the starts gathered in one line at INFO, unless streams are being
        ``fetching`` (more may come) and the first came within :data:`STARTS_SAID_EVERY`."""
        most = self._most
        if most is None or (fetching and self._clock() - self._since < STARTS_SAID_EVERY):
            return
        where: tuple[object, ...] = (most.origin, most.topic, most.last + 1, most.count)
        said = _START
        if self.streams > 1:
            said = "= %d streams start here, on %d topic(s): the peers asked keep none of the"
            said += " %d messages before them (the most: %s on %r at seq %d, %d before; each"
            said += " said at DEBUG)"
            where = (self.streams, len(self._topics), self._before, *where)
        self._node.connections.inbound.log(logger, logging.INFO, "stream start", said, *where)
        self.streams = self._before = 0
        self._topics.clear()
        self._most = None


def signed_twice(
    node: Node, log: MessageLog, message: GossipMessage, skew: float, now: float
) -> bool:
    """
    ``message`` (verified, new to the router) has an ``(origin, seq)`` this node logged
    or delivered already: if the log holds another message for it, say so (a WARNING,
    within the log budget); the first one counts. Found by a tester: a publisher killed
    and restarted numbered its next messages as its last ones, and every peer dropped
    them without a word. A copy of a message (same id) is normal, and says nothing.

    If the log keeps none for it, but the message was published more than ``skew``
    seconds after the origin's mark last moved here (and isn't timestamped more than
    ``skew`` ahead of ``now``: a clock that fast would say that of a late copy, found
    in review), the origin numbers again below
    what it published before (found by a tester: a publisher whose log was lost once
    its messages had aged out of its peers' logs had its next messages dropped by
    every node, unsaid and uncounted): said, and True (counted as ``renumbered``).
    """
    stream = stream_key(message.topic, message.origin)
    logged = log.get(stream, message.seq)
    if logged is None:
        marked = log.marked(stream)
        late = marked is not None and message.timestamp > (marked + skew) * 1000
        if not late or message.timestamp > (now + skew) * 1000:
            return False  # (not kept any more, and may be the one delivered)
        said = "! origin %s numbers again below what it published on %r: seq %d, published"
        said += " after seq %d was delivered here (a publisher whose message log was lost?)"
        said += ": dropped as delivered"
        last = log.delivered(stream)
        inbound = node.connections.inbound
        inbound.log(logger, logging.WARNING, "renumbered", said, message.origin, message.topic,
                    message.seq, last)  # fmt: skip
        return True
    if logged.id == message.id:
        return False
    said = "! origin %s signed two messages with seq %d on %r: a restarted publisher that "
    said += "lost its counter, or a copied identity? (the first one counts, the other dropped)"
    where = (message.origin, message.seq, message.topic)
    node.connections.inbound.log(logger, logging.WARNING, "signed twice", said, *where)
    return False
