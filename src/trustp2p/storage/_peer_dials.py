"""
What the peer store's dials tell it: a failed dial counted (and a URL that keeps failing
forgotten), and the URLs nobody has proven yet that a feeler may dial to find out
(:mod:`trustp2p.protocol.feelers`). They read and change a
:class:`~trustp2p.storage._peer_table.PeerTable`; no I/O.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["FEELER_CANDIDATES", "failed_dial", "untried_urls"]

import heapq
from collections.abc import Collection

from ..protocol.feelers import Untried
from ..protocol.hosts import host_of, is_loopback, netgroup
from ._peer_queries import is_dead
from ._peer_records import PeerSource, Url, logger
from ._peer_table import PeerTable


def failed_dial(table: PeerTable, url: str, now: float) -> bool:
    """
    :meth:`~trustp2p.storage.peerstore.PeerStore.record_failure`'s rules, in memory:
    the failure counted against ``url``, and the first of a row against its peer's
    score; ``url`` forgotten if it is dead (:func:`~._peer_queries.is_dead`). False if
    the store doesn't know ``url`` (nothing changed).
    """
    entry = table.by_url.get(url)
    if entry is None:
        logger.debug("? failure of unknown URL %s ignored", url)
        return False
    entry.failures += 1
    if entry.failures == 1:  # (a tester: each 2 s restart of a server cost it 6)
        entry.peer.failures += 1
    table.dirty_urls.add(url)
    table.dirty_peers.add(entry.peer.key)
    if is_dead(entry, now):
        table.forget_url(url)
        logger.info("= forgot %s: %d failed dials in a row", url, entry.failures)
    return True


FEELER_CANDIDATES = 8
"""Untried URLs per teller that :func:`untried_urls` returns: each teller's first in
the feeler's order (the rule takes the first it may dial)."""


def _turn(entry: Url) -> str:
    """Whose turn ``entry`` takes among the feelers: the network group of the first
    server that named it, or for a URL no server named, ``host <its network group>``
    (kept on the record, as the eviction keeps it: see ``Url.group``)."""
    if entry.teller is not None:
        return entry.teller.removeprefix("+")
    if entry.group == "":
        host = host_of(entry.url)
        entry.group = None if not host or is_loopback(host) else netgroup(host)
    return f"host {entry.group}"


def untried_urls(
    table: PeerTable, now: float, exclude_ids: Collection[str], per_teller: int = FEELER_CANDIDATES
) -> list[Untried]:
    """
    The URLs of peers never proven (no dial of ours worked there, not bootstrap peers)
    that a feeler may dial, with whose turn each takes: of each teller, the first
    ``per_teller`` in the feeler's order (fewest failures, named by several network
    groups, oldest); not of blocked peers, nor of the peers ``exclude_ids``. The rule
    (:class:`~trustp2p.protocol.feelers.FeelerPolicy`) checks the rest (blocked hosts,
    busy addresses). A pass over the peers without parsing a URL (but a claim's, once):
    about 10 ms at 10,000, once a feeler.
    """
    blocked = {key for key, block in table.blocked_ids.items() if block.active(now)}
    turns: dict[str, list[tuple[int, bool, float, str, Url]]] = {}
    for peer in table.peers.values():
        if not peer.urls or peer.successes or peer.source is PeerSource.BOOTSTRAP:
            continue
        if peer.peer_id is not None and (peer.peer_id in exclude_ids or peer.peer_id in blocked):
            continue
        for entry in peer.urls.values():
            if entry.last_connected is None:
                seconded = entry.teller is not None and entry.teller.startswith("+")
                key = (entry.failures, not seconded, entry.first_seen, entry.url, entry)
                turns.setdefault(_turn(entry), []).append(key)
    found: list[Untried] = []
    for turn, entries in turns.items():
        for failures, single, first_seen, url, _ in heapq.nsmallest(per_teller, entries):
            found.append(Untried(url, turn, not single, failures, first_seen))
    return found
