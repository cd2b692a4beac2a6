"""What a simulation runs: :class:`Simulation`, its parameters, checked."""

from __future__ import annotations

__all__ = ["TOPIC", "Simulation"]

import math
from dataclasses import dataclass
from typing import Literal

TOPIC = "sim"
"""The topic every simulated node subscribes to and publishes on."""


@dataclass(frozen=True, slots=True)
class Simulation:
    """
    What to simulate.

    Attributes:
        nodes: Nodes in the network.
        degree: Peers each node dials at random; each node has about twice as many
            connections, since others dial it too.
        messages: Messages to publish, each from a random live node.
        rate: Messages published per second.
        churn: Fraction of the nodes killed during publishing, each restarted later.
        partition_at: Seconds into publishing when the network is cut into two
            halves; ``None``: no partition.
        partition_for: Seconds until the partition heals.
        mode: ``"gossip"`` or ``"flood"`` (the baseline).
        mesh_degree: Mesh peers per topic each gossip router aims for.
        seed: Seed of the topology, the publishers and the churn schedule.
        timeout: After publishing (and the last restart and heal), seconds to wait for
            every live node to deliver every message.
        workers: Processes the nodes are spread over. 1 (the default): every node in
            this process, on the memory driver. More: that many worker processes, each
            running its share of the nodes on tcp:// over 127.0.0.1 (no churn nor
            partition then: those need the memory driver).

    Raises:
        ValueError: If a parameter is out of its range; the message names it and gives
            the value.

    """

    nodes: int = 100
    degree: int = 6
    messages: int = 200
    rate: float = 5.0
    churn: float = 0.0
    partition_at: float | None = None
    partition_for: float = 2.0
    mode: Literal["gossip", "flood"] = "gossip"
    mesh_degree: int = 6
    seed: int | None = None
    timeout: float = 30.0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError(f"a simulation needs at least 2 nodes, not {self.nodes}")
        if self.degree < 1 or self.mesh_degree < 1:
            raise ValueError("degree and mesh_degree must be at least 1")
        if self.messages < 1:
            raise ValueError(f"messages must be at least 1, not {self.messages}")
        for name in ("rate", "partition_for", "timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        if not 0 <= self.churn < 1:
            raise ValueError(f"churn must be in [0, 1), not {self.churn}")
        if self.partition_at is not None and not 0 <= self.partition_at < math.inf:
            raise ValueError(f"partition_at must not be negative, not {self.partition_at}")
        if not 1 <= self.workers <= self.nodes:
            raise ValueError(f"workers must be in [1, nodes], not {self.workers}")
        if self.workers > 1 and (self.churn or self.partition_at is not None):
            raise ValueError("churn and partitions need the memory driver: use them with 1 worker")
        if self.mode not in ("gossip", "flood"):
            raise ValueError(f"mode must be 'gossip' or 'flood', not {self.mode!r}")

    @property
    def publish_window(self) -> float:
        """Seconds publishing takes at ``rate``."""
        return self.messages / self.rate

    @property
    def churned(self) -> int:
        """Nodes killed and restarted during publishing: ``churn`` of them, at least one
        if ``churn`` is set, and never all (someone stays up to publish)."""
        if not self.churn:
            return 0
        return min(max(1, round(self.churn * self.nodes)), self.nodes - 1)
