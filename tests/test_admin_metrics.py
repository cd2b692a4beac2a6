"""The node's plain counters and the collector that exports them (no sockets)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trustp2p import Node, PackageType
from trustp2p.admin.collector import node_registry
from trustp2p.admin.counters import MAX_LABELS, Histogram, Metrics, count, reason_label


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]  # le is inclusive: 0.1 goes in the first bucket
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(4.65)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]


@pytest.mark.parametrize("bounds", [[], [1.0, 0.5], [1.0, 1.0]])
def test_histogram_refuses_bounds_that_are_not_increasing(bounds: list[float]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram(bounds)


def test_labels_stay_bounded() -> None:
    counter: dict[str, int] = {}
    for n in range(MAX_LABELS + 10):
        count(counter, f"label {n}")
    assert len(counter) == MAX_LABELS + 1
    assert counter["other"] == 10
    assert (
        reason_label("version talk lacks protocol_version: {'a': 1}")
        == "version talk lacks protocol_version"
    )
    assert reason_label("no handler for request 'x' (tag 12)") == "no handler for request"
    assert reason_label("123") == "other"


def test_collector_reads_the_counters_at_scrape_time() -> None:
    node = Node(server=True, port=0)
    registry = node_registry(node)
    before = samples(generate_latest(registry).decode())
    assert before["trustp2p_requests_sent_total", ()] == 0
    assert before["trustp2p_unmatched_responses_total", ()] == 0
    metrics: Metrics = node.metrics
    metrics.requests_sent += 3
    metrics.unmatched += 2
    metrics.package_in(PackageType.REQUEST, 100)
    metrics.package_in(PackageType.REQUEST, 50)
    metrics.package_out(PackageType.RESPONSE, 70)
    metrics.invalid_package("package too large: 123 bytes")
    metrics.request_seconds.observe(0.003)
    count(metrics.handshakes, "ok")
    count(metrics.handshakes, "HandshakeError")
    metrics.lost_peers += 1
    metrics.dropped += 2
    metrics.send_oversized += 5
    assert node.gossip is not None
    node.gossip.router.stats.ihave_ignored += 4
    node.gossip.too_old += 6
    node.gossip.router.stats.early_grafts += 7
    after = samples(generate_latest(registry).decode())
    assert after["trustp2p_requests_sent_total", ()] == 3
    assert after["trustp2p_unmatched_responses_total", ()] == 2
    assert after["trustp2p_packages_received_total", (("type", "REQUEST"),)] == 2
    assert after["trustp2p_received_bytes_total", (("type", "REQUEST"),)] == 150
    assert after["trustp2p_sent_bytes_total", (("type", "RESPONSE"),)] == 70
    assert after["trustp2p_invalid_packages_total", (("reason", "package too large"),)] == 1
    assert after["trustp2p_request_duration_seconds_bucket", (("le", "0.005"),)] == 1
    assert after["trustp2p_request_duration_seconds_bucket", (("le", "0.0025"),)] == 0
    assert after["trustp2p_request_duration_seconds_count", ()] == 1
    assert after["trustp2p_handshakes_total", (("outcome", "ok"), ("reason", ""))] == 1
    failed = (("outcome", "failed"), ("reason", "HandshakeError"))
    assert after["trustp2p_handshakes_total", failed] == 1
    assert after["trustp2p_gossip_published_total", ()] == 0
    assert after["trustp2p_gossip_ihave_ignored_total", ()] == 4
    assert after["trustp2p_gossip_too_old_total", ()] == 6
    assert after["trustp2p_gossip_early_grafts_total", ()] == 7
    assert after["trustp2p_send_oversized_total", ()] == 5
    assert after["trustp2p_gossip_waiting_bytes", ()] == 0
    assert after["trustp2p_gossip_held_bytes", ()] == 0
    assert after["trustp2p_peer_store_peers", ()] == 0
    assert after["trustp2p_heartbeat_lost_peers_total", ()] == 1
    assert after["trustp2p_connections_dropped_total", ()] == 2


def test_every_family_is_named_by_the_conventions() -> None:
    node = Node(server=True, client=True, port=0)
    text = generate_latest(node_registry(node)).decode()
    families = list(text_string_to_metric_families(text))
    names = {family.name for family in families}
    assert len(names) >= 30
    for family in families:
        assert family.name.startswith("trustp2p_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:
            assert "peer" not in sample.labels and "peer_id" not in sample.labels


def test_registries_of_two_nodes_dont_collide() -> None:
    first, second = Node(server=True, port=0), Node(server=True, port=0)
    first_registry, second_registry = node_registry(first), node_registry(second)
    first.metrics.requests_sent = 5
    assert (
        samples(generate_latest(first_registry).decode())["trustp2p_requests_sent_total", ()] == 5
    )
    assert (
        samples(generate_latest(second_registry).decode())["trustp2p_requests_sent_total", ()] == 0
    )
