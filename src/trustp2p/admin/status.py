"""
``/status.json``: what a node is, whom it is connected to, its topics and its latest
warnings, as one JSON object. ``docs/operations.md`` describes the schema.

"""

from __future__ import annotations

__all__ = ["TopicRates", "node_status"]

import time
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:
    from ..node.node import Node
    from ..node.peer import PeerConnection
    from .logs import WarningLog


class TopicRates:
    """Messages per second on each topic, between two status requests (the first one:
    since the node started)."""

    def __init__(self, started: float) -> None:
        self._when = started
        self._seen: dict[str, int] = {}

    def update(self, counts: dict[str, int], now: float) -> dict[str, float]:
        elapsed = max(now - self._when, 1e-3)
        rates = {t: (n - self._seen.get(t, 0)) / elapsed for t, n in counts.items()}
        self._when, self._seen = now, dict(counts)
        return rates


def _mode(node: Node) -> str:
    if node.server is not None and node.client is not None:
        return "node"
    return "server" if node.server is not None else "client"


def _runs(conn: PeerConnection) -> str | None:
    """What the peer said it runs in its version or hello ("trustp2p 0.1.0", with its
    program if it named one); None if it didn't introduce itself (the original)."""
    body = conn.protocol.peer_version
    if body is None:
        return None
    words = [str(body.get(key)) for key in ("library", "library_version") if body.get(key)]
    program = " ".join(str(body[key]) for key in ("program", "program_version") if body.get(key))
    return " ".join(words + ([f"({program})"] if program else [])) or None


def _peer(node: Node, conn: PeerConnection) -> dict[str, Any]:
    socket = conn.socket
    stats = socket.stats
    score = None
    if socket.peer_id is not None and node.store is not None:
        score = node.store.score_of(socket.peer_id)
    return {
        "socket_id": socket.id,
        "peer_id": socket.peer_id,
        "address": socket.peer,
        "runs": _runs(conn),
        "role": "server" if conn.role is node.server else "client",
        "direction": "inbound" if socket.inbound else "outbound",
        "connected_since": round(conn.opened, 3),
        "rtt_s": stats.last_rtt,
        "packages_in": stats.messages_in,
        "packages_out": stats.messages_out,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "invalid_in": stats.invalid_in,
        "score": score,
        "state": conn.protocol.state.value,
        "throttled": conn.throttle is not None,
        "held": conn.held,
    }


def _topics(node: Node, rates: TopicRates, now: float) -> list[dict[str, Any]]:
    metrics = node.metrics
    subscribed = node.gossip.topics if node.gossip is not None else set()
    delivered = metrics.topic_delivered
    per_second = rates.update(delivered, now)
    too_old = metrics.topic_too_old
    names = sorted(subscribed | set(metrics.topic_published) | set(delivered) | set(too_old))
    return [
        {
            "topic": topic,
            "subscribed": topic in subscribed,
            "published": metrics.topic_published.get(topic, 0),
            "delivered": delivered.get(topic, 0),
            "rate_per_s": round(per_second.get(topic, 0.0), 3),
            "too_old": too_old.get(topic, 0),
        }
        for topic in names
    ]


def _stores(node: Node) -> dict[str, dict[str, Any]]:
    """Each store on disk: whether its writes fail now (its changes wait in memory), and
    how many tries failed (tester41 F2: only the first WARNING said so, long gone)."""
    stores: dict[str, Any] = {"peers": node.store}
    if node.gossip is not None:
        stores["messages"] = node.gossip.message_log
    return {
        name: {"failing": store.failing, "write_failures": store.write_failures}
        for name, store in stores.items()
        if store is not None
    }


def _rounded(offset: float | None) -> float | None:
    return None if offset is None else round(offset, 3)


def node_status(
    node: Node, rates: TopicRates, warnings: WarningLog | None = None
) -> dict[str, Any]:
    """The status of ``node``, as ``/status.json`` serves it."""
    now = time.time()
    return {
        "node": {
            "peer_id": node.peer_id,
            "version": __version__,
            "uptime_s": round(now - node.metrics.started, 3),
            "listen_urls": node.listen_urls,
            "mode": _mode(node),
            "secure": node.options.secure,
            "state": node.state.value,
            "admin_url": node.admin_url,
            "clock_offset_s": _rounded(node.clock_watch.offset),
            "clock_networks": node.clock_watch.clocks.peers,
            "stores": _stores(node),
        },
        "peers": [_peer(node, conn) for conn in node.connections],
        "topics": _topics(node, rates, now),
        "warnings": list(warnings.records) if warnings is not None else [],
    }
