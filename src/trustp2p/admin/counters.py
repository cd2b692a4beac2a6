"""
The node's own counters: plain ints, dicts of ints and bisect histograms, incremented
where things happen. Nothing here touches ``prometheus_client``: the admin listener's
collector reads these at scrape time (:mod:`trustp2p.admin.collector`).

"""

from __future__ import annotations

__all__ = [
    "INVALID",
    "MAX_LABELS",
    "MAX_TOPICS",
    "Histogram",
    "Metrics",
    "count",
    "reason_label",
    "type_label",
]

import re
import time
from bisect import bisect_left
from collections.abc import Sequence

from ..protocol.package import PackageType

MAX_LABELS = 32
"""Distinct label values a labelled counter keeps; later ones count as ``"other"``."""

MAX_TOPICS = 256
"""Distinct topics counted per node (status only; topics are never metric labels)."""

LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    *(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
"""Histogram bounds for durations, in seconds."""

TYPE_SLOTS = 64
"""Package types have wire numbers below this (``PackageType``: 0 to 40)."""

INVALID = TYPE_SLOTS - 1
"""Where :class:`Metrics` counts messages that weren't valid packages."""

_CUT = re.compile(r"[:'\"(\[{0-9]")


def reason_label(reason: str) -> str:
    """A bounded label value for a free-text reason: its words before the first
    detail (a colon, quote, bracket or digit), at most 48 characters."""
    label = _CUT.split(reason, maxsplit=1)[0].strip().lower()[:48].strip()
    return label or "other"


def type_label(package_type: int) -> str:
    """The label of a package type's slot: ``"REQUEST"``…, ``"INVALID"``."""
    if package_type == INVALID:
        return "INVALID"
    try:
        return PackageType(package_type).name
    except ValueError:
        return str(package_type)


def count(counter: dict[str, int], label: str, n: int = 1, *, limit: int = MAX_LABELS) -> None:
    """Add ``n`` to ``counter[label]``; past ``limit`` labels, to ``"other"``."""
    if label in counter:
        counter[label] += n
    elif len(counter) < limit:
        counter[label] = n
    else:
        counter["other"] = counter.get("other", 0) + n


class Histogram:
    """
    A histogram of observations, Prometheus-style: per-bucket counts (each bound is an
    inclusive upper bound, ``le``), a sum and a count. :meth:`observe` is a bisect and
    three additions.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bounds must be increasing and not empty")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``("+Inf", count)``."""
        pairs = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            pairs.append((repr(bound), total))
        pairs.append(("+Inf", total + self.counts[-1]))
        return pairs


class Metrics:
    """
    One node's counters (``node.metrics``). Per-connection traffic lives in each
    socket's ``stats`` while it is open; these are node totals since start.

    Attributes:
        started: Wall-clock time the node was created (seconds since the epoch).
        handshakes: Connections established (``"ok"``) or failed, by reason.
        inbound_refused: Inbound connections refused by the admission rules, by the
            first words of the reason (``"inbound connections maxed out"``...).
        inbound_evicted: Inbound connections dropped to make room: ``"unfinished"``
            (the oldest still in its handshake) or ``"crowded"`` (the newest of the
            largest network group, for a candidate).
        packages_in, packages_out, bytes_in, bytes_out: Lists indexed by package type
            (its wire number; :data:`INVALID` for what wasn't a valid package): a list
            index is the cheapest count on the path of every package.
        invalid: Invalid packages received, by reason (bounded, see :func:`reason_label`).
        requests_sent, requests_answered, requests_failed, requests_timed_out,
        requests_rerouted: Requests this node made and what became of them.
        request_seconds: Round trip of answered requests.
        requests_abandoned: Requests received whose connection closed before their
            handler answered (the handler cancelled, or not started).
        unhandled: Packages no thread handles (dropped), by type name.
        unmatched: Responses that answer no pending request (late, unasked, or of the
            wrong type), heartbeat pongs aside.
        handler_seconds: Time from a request's dispatch to its handler's answer.
        handler_failures: Failures of the threads' handlers (what they raised, or a
            request's answer that can't be sent), of gossip validators and subscribers,
            by ``(kind, event)``: ``kind`` the package type's name in lower case
            (``"request"``, ``"talk"``, ``"gossip"``), ``"validator"``,
            ``"subscriber"`` or ``"hook"`` (a thread's hook, ``start()`` or ``stop()``);
            ``event`` the event, topic or hook (at most :data:`MAX_LABELS`
            pairs, then ``(kind, "other")``).
        heartbeat_rtt: Round trip of heartbeat pings.
        throttles: Times a peer over a budget (requests, gossip, its share of the
            node's gossip) had its reading paused.
        send_stalls: Times a peer's write buffer filled up (backpressure episodes).
        stall_disconnects: Peers disconnected for reading nothing, or too far behind.
        send_dropped: Gossip messages not pushed to a peer whose send queue was full
            (it fetches them when it catches up).
        send_oversized: Gossip messages not pushed to a peer because they are over the
            largest package it takes (its ``max_package_size``, said when it connects).
        lost_peers: Peers dropped for leaving a heartbeat ping unanswered.
        dropped: Connections that ended without a close frame (the peer vanished).
        gossip_shed: Live gossip messages a peer relayed, dropped unseen, their topic
            over its share of the messages waiting for handlers (fetched later by
            catch-up).
        validation: Gossip validator verdicts (accept, ignore, reject).
        topic_published, topic_delivered: Gossip messages by topic (status only, never
            a label).
        topic_too_old: Gossip messages dropped for their timestamp, by topic (status
            only): see ``Gossip.too_old``.

    """

    def __init__(self) -> None:
        self.started = time.time()
        self.handshakes: dict[str, int] = {}
        self.inbound_refused: dict[str, int] = {}
        self.inbound_evicted: dict[str, int] = {}
        self.packages_in = [0] * TYPE_SLOTS
        self.packages_out = [0] * TYPE_SLOTS
        self.bytes_in = [0] * TYPE_SLOTS
        self.bytes_out = [0] * TYPE_SLOTS
        self.invalid: dict[str, int] = {}
        self.requests_sent = 0
        self.unmatched = 0
        self.requests_answered = 0
        self.requests_failed = 0
        self.requests_timed_out = 0
        self.requests_rerouted = 0
        self.request_seconds = Histogram()
        self.requests_abandoned = 0
        self.unhandled: dict[str, int] = {}
        self.handler_seconds = Histogram()
        self.handler_failures: dict[tuple[str, str], int] = {}
        self.heartbeat_rtt = Histogram()
        self.throttles = 0
        self.send_stalls = 0
        self.stall_disconnects = 0
        self.send_dropped = 0
        self.send_oversized = 0
        self.lost_peers = 0
        self.dropped = 0
        self.gossip_shed = 0
        self.validation: dict[str, int] = {}
        self.topic_published: dict[str, int] = {}
        self.topic_delivered: dict[str, int] = {}
        self.topic_too_old: dict[str, int] = {}

    def package_in(self, package_type: int, size: int) -> None:
        """Count one package received (the node inlines this on its hot path)."""
        self.packages_in[package_type] += 1
        self.bytes_in[package_type] += size

    def package_out(self, package_type: int, size: int) -> None:
        """Count one package sent (the node inlines this on its hot path)."""
        self.packages_out[package_type] += 1
        self.bytes_out[package_type] += size

    def handler_failed(self, kind: str, event: str) -> None:
        """Count one failure of a handler of ``kind`` for ``event`` (see
        :attr:`handler_failures`)."""
        failures = self.handler_failures
        key = (kind, event)
        if key not in failures and len(failures) >= MAX_LABELS:
            key = (kind, "other")
        failures[key] = failures.get(key, 0) + 1

    def invalid_package(self, reason: str) -> None:
        """Count one invalid package, by the bounded form of its reason."""
        count(self.invalid, reason_label(reason))
