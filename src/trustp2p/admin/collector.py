"""
``/metrics``: a ``prometheus_client`` collector that reads a node's plain counters at
scrape time, and one registry per node (many nodes in one process don't collide).

Names follow Prometheus conventions: the ``trustp2p_`` prefix, ``_total`` on counters,
seconds and bytes as units, bounded label values (no peer ids). ``docs/operations.md``
lists every family.

"""

from __future__ import annotations

__all__ = ["NodeCollector", "node_registry"]

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .._version import __version__
from .counters import Histogram, type_label

if TYPE_CHECKING:
    from ..node.gossip import Gossip
    from ..node.node import Node


def node_registry(node: Node) -> CollectorRegistry:
    """A registry of its own for ``node``, holding its :class:`NodeCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _labelled(
    name: str, text: str, label: str, values: dict[str, int], kind: type = CounterMetricFamily
) -> Metric:
    family = kind(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family  # type: ignore[no-any-return]


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


class NodeCollector(Collector):
    """Reads one node's counters (``node.metrics``, its sockets, peer store and gossip
    router) each time it is scraped."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        yield from self._node_families()
        yield from self._traffic()
        yield from self._requests()
        yield from self._limits()
        yield from self._gossip()

    def _node_families(self) -> Iterator[Metric]:
        node = self._node
        info = GaugeMetricFamily(
            "trustp2p_info", "The library version and the node's mode.", labels=["version", "mode"]
        )
        mode = "+".join(r for r, on in (("server", node.server), ("client", node.client)) if on)
        info.add_metric([__version__, mode], 1)
        yield info
        yield GaugeMetricFamily(
            "trustp2p_start_time_seconds",
            "When the node was created, in seconds since the epoch.",
            value=node.metrics.started,
        )
        if (offset := node.clock_watch.offset) is not None:
            yield GaugeMetricFamily(
                "trustp2p_clock_offset_seconds",
                "The median of the connected peers' wall clocks minus this node's, from"
                " their version talks (one per network).",
                value=offset,
            )
        connections = GaugeMetricFamily(
            "trustp2p_connections",
            "Open connections, by role and direction.",
            labels=["role", "direction"],
        )
        counts = {("server", "inbound"): 0, ("client", "outbound"): 0}
        for conn in node.connections:
            role = "server" if conn.role is node.server else "client"
            key = (role, "inbound" if conn.socket.inbound else "outbound")
            counts[key] = counts.get(key, 0) + 1
        for (role, direction), value in sorted(counts.items()):
            connections.add_metric([role, direction], value)
        yield connections
        handshakes = CounterMetricFamily(
            "trustp2p_handshakes",
            "Connections established (outcome ok) or whose handshake failed, by reason.",
            labels=["outcome", "reason"],
        )
        for reason, value in sorted(node.metrics.handshakes.items()):
            ok = reason == "ok"
            handshakes.add_metric(["ok" if ok else "failed", "" if ok else reason], value)
        yield handshakes
        m = node.metrics
        yield _labelled(
            "trustp2p_inbound_refused",
            "Inbound connections refused by the admission rules, by reason.",
            "reason",
            m.inbound_refused,
        )
        yield _labelled(
            "trustp2p_inbound_evicted",
            "Inbound connections dropped to make room for another, by kind.",
            "kind",
            m.inbound_evicted,
        )

    def _traffic(self) -> Iterator[Metric]:
        m = self._node.metrics
        for name, text, slots in (
            ("packages_received", "Packages received, by type.", m.packages_in),
            ("packages_sent", "Packages sent, by type.", m.packages_out),
            ("received_bytes", "Bytes of packages received, by type.", m.bytes_in),
            ("sent_bytes", "Bytes of packages sent, by type.", m.bytes_out),
        ):
            by_type = {type_label(i): n for i, n in enumerate(slots) if n}
            yield _labelled(f"trustp2p_{name}", text, "type", by_type)
        yield _labelled(
            "trustp2p_invalid_packages",
            "Invalid packages received (counted against the peer), by reason.",
            "reason",
            m.invalid,
        )
        yield _histogram(
            "trustp2p_heartbeat_rtt_seconds", "Round trip of heartbeat pings.", m.heartbeat_rtt
        )

    def _requests(self) -> Iterator[Metric]:
        m = self._node.metrics
        yield _counter("trustp2p_requests_sent", "Requests this node sent.", m.requests_sent)
        yield _counter(
            "trustp2p_requests_answered",
            "Requests answered (not with an error).",
            m.requests_answered,
        )
        yield _counter(
            "trustp2p_requests_failed",
            "Requests answered with an error, or whose connection was lost.",
            m.requests_failed,
        )
        yield _counter(
            "trustp2p_requests_timed_out", "Requests with no answer in time.", m.requests_timed_out
        )
        yield _counter(
            "trustp2p_requests_rerouted",
            "Requests sent to another server (reroute=True).",
            m.requests_rerouted,
        )
        yield _counter(
            "trustp2p_requests_abandoned",
            "Requests received whose connection closed before their handler answered.",
            m.requests_abandoned,
        )
        yield _labelled(
            "trustp2p_unhandled_packages",
            "Packages dropped because no thread handles them, by type.",
            "type",
            m.unhandled,
        )
        yield _counter(
            "trustp2p_unmatched_responses",
            "Responses and pongs answering no pending request (late, unasked, of the wrong type).",
            m.unmatched,
        )
        yield _histogram(
            "trustp2p_request_duration_seconds",
            "Round trip of answered requests.",
            m.request_seconds,
        )
        failures = CounterMetricFamily(
            "trustp2p_handler_failures",
            "Failures of the threads' handlers, validators and subscribers, by kind and event.",
            labels=["kind", "event"],
        )
        for (kind, event), value in sorted(m.handler_failures.items()):
            failures.add_metric([kind, event], value)
        yield failures
        yield _histogram(
            "trustp2p_handler_duration_seconds",
            "Time from a request's dispatch to its handler's answer.",
            m.handler_seconds,
        )

    def _limits(self) -> Iterator[Metric]:
        node = self._node
        m = node.metrics
        throttled = sum(1 for conn in node.connections if conn.throttle is not None)
        yield GaugeMetricFamily(
            "trustp2p_throttled_peers", "Peers over a budget now.", value=throttled
        )
        held = sum(1 for conn in node.connections if conn.held)
        yield GaugeMetricFamily(
            "trustp2p_held_peers",
            "Peers not read from now: too much of their gossip waits for handlers.",
            value=held,
        )
        yield _counter("trustp2p_throttles", "Times a peer over a budget was paused.", m.throttles)
        yield _counter(
            "trustp2p_send_stalls", "Times a peer's write buffer filled up.", m.send_stalls
        )
        yield _counter(
            "trustp2p_send_stall_disconnects",
            "Peers disconnected for not reading what was sent to them.",
            m.stall_disconnects,
        )
        yield _counter(
            "trustp2p_send_dropped",
            "Gossip messages not pushed to a peer whose send queue was full.",
            m.send_dropped,
        )
        yield _counter(
            "trustp2p_heartbeat_lost_peers",
            "Peers dropped for leaving a heartbeat ping unanswered.",
            m.lost_peers,
        )
        yield _counter(
            "trustp2p_connections_dropped",
            "Connections that ended without a close frame (the peer vanished).",
            m.dropped,
        )
        store = node.store
        yield GaugeMetricFamily(
            "trustp2p_blocks_active",
            "Blocks of peer ids and addresses in force.",
            value=store.active_blocks() if store is not None else 0,
        )
        yield GaugeMetricFamily(
            "trustp2p_peer_store_peers",
            "Peers the peer store knows.",
            value=store.size() if store is not None else 0,
        )
        failures = {"peers": store.write_failures if store is not None else 0}
        if node.gossip is not None and node.gossip.message_log is not None:
            failures["messages"] = node.gossip.message_log.write_failures
        yield _labelled(
            "trustp2p_store_write_failures",
            "Failed opens or writes of the node's databases, by store.",
            "store",
            failures,
        )

    def _gossip(self) -> Iterator[Metric]:
        gossip = self._node.gossip
        if gossip is None:
            return
        for name, text, value in _gossip_counts(gossip):
            yield _counter(f"trustp2p_gossip_{name}", text, value)
        yield _counter(
            "trustp2p_send_oversized",
            "Gossip messages not pushed to a peer: over its max_package_size.",
            self._node.metrics.send_oversized,
        )
        yield _labelled(
            "trustp2p_gossip_validations",
            "Validator verdicts, by outcome (accept, ignore, reject).",
            "outcome",
            self._node.metrics.validation,
        )
        yield GaugeMetricFamily(
            "trustp2p_gossip_topics", "Topics subscribed to.", value=len(gossip.router.topics)
        )
        yield GaugeMetricFamily(
            "trustp2p_gossip_waiting_bytes",
            "Bytes of messages waiting for their validators and handlers.",
            value=gossip.waiting_bytes,
        )
        yield GaugeMetricFamily(
            "trustp2p_gossip_held_bytes",
            "Bytes of messages held behind gaps in their streams.",
            value=gossip.held_bytes,
        )


def _gossip_counts(gossip: Gossip) -> tuple[tuple[str, str, int], ...]:
    """The gossip counters: name (after ``trustp2p_gossip_``), help text, value."""
    stats = gossip.router.stats
    return (
        ("published", "Messages this node published.", stats.published),
        ("received", "Messages received, new or not.", stats.received),
        ("duplicates", "Messages received again.", stats.duplicates),
        ("delivered", "Messages handed to threads and subscribers.", gossip.delivered),
        (
            "carried",
            "Messages of relay topics (no handler): logged and sent on only.",
            gossip.carried,
        ),
        ("caught_up", "Messages obtained by catch-up.", gossip.caught_up),
        (
            "too_old",
            "Messages dropped for their timestamp: older than log_max_age, or than"
            " the delivery marks forgotten (origins without a mark), or from the future"
            " (over CLOCK_SKEW ahead).",
            gossip.too_old,
        ),
        (
            "shed",
            "Live messages a peer relayed, dropped unseen: their topic over its share of"
            " the messages waiting for handlers (fetched later by catch-up).",
            gossip.node.metrics.gossip_shed,
        ),
        (
            "renumbered",
            "Messages dropped as delivered though published after their origin's mark"
            " moved: the origin numbers again (its message log lost?).",
            gossip.renumbered,
        ),
        ("forwarded", "Copies sent on eagerly.", stats.forwarded),
        ("invalid", "Forged, altered, malformed or rejected messages.", stats.invalid),
        (
            "ihave_ignored",
            "Ids announced by a peer and not asked for: it had the most asks open.",
            stats.ihave_ignored,
        ),
        (
            "iwant_unanswered",
            "Ids asked of a peer that announced them and not received within the ask's"
            " timeout: asked of another; that peer is asked after the others for 60 s.",
            stats.iwant_unanswered,
        ),
        (
            "early_grafts",
            "Grafts within a prune backoff: refused unanswered, invalid past older nodes'.",
            stats.early_grafts,
        ),
    )
