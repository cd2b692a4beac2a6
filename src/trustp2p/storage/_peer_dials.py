"""
What the peer store's dials tell it: a failed dial counted (and a URL that keeps failing
forgotten), and the URLs nobody has proven yet that a feeler may dial to find out
(:mod:`trustp2p.protocol.feelers`). They read and change a
:class:`~trustp2p.storage._peer_table.PeerTable`; no I/O.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["failed_dial", "untried_urls"]

from collections.abc import Collection

from ..protocol.feelers import Untried
from ._peer_queries import is_dead, ranked_urls
from ._peer_records import PeerSource, logger
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


def untried_urls(table: PeerTable, now: float, exclude_ids: Collection[str]) -> list[Untried]:
    """
    One URL per peer never proven (no dial of ours worked there, not a bootstrap peer),
    the one with the fewest failures, with who told it; not of blocked peers or hosts,
    nor of the peers ``exclude_ids``. In no order: the feeler's rule chooses
    (:class:`~trustp2p.protocol.feelers.FeelerPolicy`). A pass over the peers (a few
    ms at 10,000), once a feeler.
    """
    peers = [
        peer
        for peer in table.peers.values()
        if peer.urls and peer.successes == 0 and peer.source is not PeerSource.BOOTSTRAP
    ]
    found: list[Untried] = []
    for url in ranked_urls(table, now, (), exclude_ids, good=False, anchors=False, peers=peers):
        entry = table.by_url[url]
        if entry.last_connected is not None:
            continue
        told = entry.teller
        teller = None if told is None else told.removeprefix("+")
        seconded = told is not None and told.startswith("+")
        found.append(Untried(url, teller, seconded, entry.failures, entry.first_seen))
    return found
