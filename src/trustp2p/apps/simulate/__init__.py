"""
The network simulator behind ``trustp2p simulate``.

:func:`simulate` runs a :class:`~trustp2p.testing.Network` of in-process nodes on the
memory driver (plain mode, the simulation timings of :mod:`trustp2p.testing`), waits
until every node is connected and its mesh formed, then publishes messages from random
live nodes at a steady rate. Meanwhile it may kill a fraction of the nodes and restart
them later (churn), or cut the network into two halves for a while and heal it. Then it
waits until every live node delivered every message, or ``timeout`` passes, and returns
a :class:`SimulationReport`.

The modules: :mod:`.config` (the parameters, :class:`Simulation`), :mod:`.runner`
(building and driving the network), :mod:`.metrics` (the figures), :mod:`.report`
(JSON, table, progress bar) and :mod:`.plot` (matplotlib, imported when drawing).

The figures, all over the nodes alive at the end (*live nodes*):

- **coverage**: the fraction of (live node, message) pairs delivered, and per message
  the fraction of live nodes it reached;
- **time to full coverage**, per message: from just before ``publish()`` to the last
  delivery to a live node that was up from the publish to the end (a node down at any
  time after the publish may have missed it and catches up: see churn). Both ends are
  ``time.monotonic()``; the delivery time is when the subscriber callback ran;
- **duplicates**: copies of a message a node received after the first, summed over
  nodes (the routers' ``stats.duplicates``), per message per node;
- **bytes per message**: bytes written on every connection, from the first publish to
  the end of the run, divided by the number of messages. That is all traffic: message
  copies, duplicates included, mesh control talks (subscriptions, graft, prune, ihave,
  iwant), catch-up requests and answers (``gossip/hwm``, ``gossip/fetch``) and the
  hello talks of reconnections; each package protobuf-encoded, without encryption
  (plain mode) or transport framing;
- **catch-up**: after the partition heals, the fraction of the nodes up from the heal
  to the end that have every message published before the heal, and how long after the
  heal they had it; after a restart (churn), the same for each restarted node and the
  messages published before its restart.

"""

from __future__ import annotations

from .config import Simulation
from .metrics import SimulationReport
from .plot import PLOT_MISSING, plot_report
from .report import print_report, simulate_with_progress, to_json
from .runner import Progress, simulate

__all__ = [
    "PLOT_MISSING",
    "Progress",
    "Simulation",
    "SimulationReport",
    "plot_report",
    "print_report",
    "simulate",
    "simulate_with_progress",
    "to_json",
]
