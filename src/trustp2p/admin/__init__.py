"""
The operator's view of a running node: its counters (:mod:`.counters`), the admin
listener serving ``/metrics`` (:mod:`.collector`), ``/status.json`` (:mod:`.status`) and
a live status page (:mod:`.server`), and ``trustp2p status`` (:mod:`.client`).

The node keeps plain counters on its hot path; ``prometheus_client`` is used only by the
admin listener, at scrape time, with one registry per node. See ``docs/operations.md``.

"""

from .counters import Histogram, Metrics
from .logs import current_node
from .server import AdminServer

__all__ = ["AdminServer", "Histogram", "Metrics", "current_node"]
