"""
How ``simulate --workers N`` lays the network out over processes; pure, no I/O.

The parent plans the same random topology as a one-process run with the same seed
(:func:`~trustp2p.testing.random_links`), gives each worker a contiguous share of the
node indexes (:func:`split`), and, once every worker listens and said where, tells each
one which URLs its nodes dial (:func:`dial_plan`). Ports aren't planned: every node
listens on port 0 and the worker reports the port the system gave it, so nothing else
on the machine can collide with them.

"""

from __future__ import annotations

__all__ = ["SPARE_DESCRIPTORS", "descriptors", "dial_plan", "owner", "split"]

import bisect
from collections.abc import Sequence


def split(nodes: int, workers: int) -> list[range]:
    """
    Node indexes ``0 .. nodes - 1`` in ``workers`` contiguous shares whose sizes differ
    by at most one, the larger ones first.

    Raises:
        ValueError: If there are fewer nodes than workers, or no worker.

    """
    if not 1 <= workers <= nodes:
        raise ValueError(f"can't split {nodes} nodes over {workers} workers")
    size, extra = divmod(nodes, workers)
    shares = []
    start = 0
    for worker in range(workers):
        stop = start + size + (worker < extra)
        shares.append(range(start, stop))
        start = stop
    return shares


def owner(shares: Sequence[range], index: int) -> int:
    """The worker whose share holds node ``index``."""
    worker = bisect.bisect_right([share.start for share in shares], index) - 1
    if worker < 0 or index not in shares[worker]:
        raise ValueError(f"node {index} is in no share")
    return worker


SPARE_DESCRIPTORS = 64
"""File descriptors a worker needs beyond its nodes' (the interpreter, the event loop,
its pipes to the parent), counted generously."""


def descriptors(share: range, links: Sequence[Sequence[int]]) -> int:
    """
    File descriptors the worker running ``share`` needs: a listening socket per node,
    a socket per connection end of its nodes (both ends of a connection inside the
    share, one of a connection to another worker), and :data:`SPARE_DESCRIPTORS`.
    """
    ends = 0
    for index, dialled in enumerate(links):
        mine = index in share
        for other in dialled:
            ends += mine + (other in share)
    return len(share) + ends + SPARE_DESCRIPTORS


def dial_plan(share: range, links: Sequence[Sequence[int]], urls: Sequence[str]) -> list[list[str]]:
    """Per node of ``share``, in order, the URLs it dials: ``links`` says whom (by
    global index), ``urls`` where each node listens."""
    return [[urls[other] for other in links[index]] for index in share]
