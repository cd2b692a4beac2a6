"""
The peer store's queries: which URLs to dial or share, best first, and the records it
lists. They read a :class:`~trustp2p.storage._peer_table.PeerTable` and change nothing.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = [
    "FORGET_AFTER",
    "FORGET_FAILURES",
    "FORGET_UNTRIED_AFTER",
    "FORGET_UNTRIED_FAILURES",
    "GOOD_RANKING_TTL",
    "MAX_GOOD_URL_FAILURES",
    "TIE_PERIOD",
    "GoodRanking",
    "active_block",
    "is_anchor",
    "is_dead",
    "ranked_peers",
    "ranked_urls",
    "records",
]

from collections.abc import Collection, Iterator
from urllib.parse import urlsplit

from ..protocol.limits import address_key
from ..protocol.peers import address_of_key
from ..protocol.scoring import Block
from ..protocol.urls import split_peer_url
from ._peer_records import Peer, PeerRecord, PeerSource, Url, url_age
from ._peer_table import PeerTable

MAX_GOOD_URL_FAILURES = 3
"""Failed dials in a row, since it last worked, after which a URL is no longer shared
with other peers (``good_urls``); it is still dialled, and shared again once it works."""


FORGET_UNTRIED_FAILURES = 3
"""Failed dials in a row after which a URL that never worked is forgotten (one a peer
passed on, or one a peer connected from)..."""

FORGET_UNTRIED_AFTER = 3_600.0
"""...once it has been known this many seconds (an hour): a peer restarting for a few
seconds keeps its URL (found in review)."""

FORGET_FAILURES = 10
"""Failed dials in a row after which a URL that worked once is forgotten..."""

FORGET_AFTER = 86_400.0
"""...if it last worked this many seconds ago (a day)."""


def is_dead(entry: Url, now: float) -> bool:
    """
    Whether to forget ``entry`` after a failed dial: a URL of a peer that isn't a
    bootstrap peer, that never worked (nor did its peer ever connect, either way) and
    failed :data:`FORGET_UNTRIED_FAILURES` times in a row, known for
    :data:`FORGET_UNTRIED_AFTER` at least; or that failed :data:`FORGET_FAILURES` times
    in a row and last worked (or its peer connected) more than :data:`FORGET_AFTER` ago
    (as Bitcoin's address manager judges its addresses).
    Found by a new-user tester: a node that ran for a second was dialled once a minute
    by every peer that had heard of it, for as long as they ran. A peer that still
    announces the URL passes it on again.
    """
    if entry.peer.source is PeerSource.BOOTSTRAP:
        return False
    worked = max(entry.last_connected or 0.0, entry.peer.last_connected or 0.0)
    if not worked:
        return (
            entry.failures >= FORGET_UNTRIED_FAILURES
            and now - entry.first_seen >= FORGET_UNTRIED_AFTER
        )
    return entry.failures >= FORGET_FAILURES and now - worked >= FORGET_AFTER


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _blocked_host(url: str, blocked_addresses: Collection[str]) -> bool:
    """Whether ``url``'s host is in a blocked address (an IPv6 address: in its /64)."""
    host = _host(url)
    return host is not None and address_key(host) in blocked_addresses


def _excluded_by_its_id(
    url: str, exclude_urls: Collection[str], exclude_ids: Collection[str]
) -> bool:
    """Whether ``url/p2p/<id>`` names an excluded peer or an excluded URL's address."""
    if "/p2p/" not in url:
        return False
    try:
        dial_url, peer_id = split_peer_url(url)
    except ValueError:
        return False
    return peer_id in exclude_ids or dial_url in exclude_urls


GOOD_RANKING_TTL = 1.0
"""Seconds a ranking of the good peers serves ``get_peers`` answers (scores move with
package counts meanwhile; the order of shared URLs may lag that long)."""


TIE_PERIOD = 3600.0
"""Peers of one score first known within one such period (by the clock's count of
periods: an hour, as :data:`~trustp2p.protocol.scoring.SUCCESS_SPACING`) rank in an
order of this node's own: by their records' keys, random per store. Known a period
earlier, a peer ranks first (sybils that came later lose the ties); known within
one, the order is the node's own (found in review: by the second, every node that met
the same peers in the network's order dialled the same oldest 8)."""


def _dial_rank(peer: Peer) -> tuple[bool, float, bool, float, str]:
    """Sort key: peers we dialled before first (an attacker's test: peers that only
    ever dialled us, announcing URLs, took every slot after a restart), then the best
    score; then the longest known (not the last connected: a peer
    that closes its links to be dialled again would come first, found in review) by
    :data:`TIE_PERIOD`, and within one in this node's own order. Bootstrap peers come
    first among those never dialled, not among those that worked: there, every node
    configured alike would dial them first at each start (found in review)."""
    never = peer.successes == 0
    return (
        never,
        -peer.score(),
        never and peer.source is not PeerSource.BOOTSTRAP,
        peer.first_seen // TIE_PERIOD,
        peer.key,
    )


def _url_rank(entry: Url) -> tuple[int, float, float, str]:
    """Sort key among a peer's URLs: fewest failures since it worked, then last to work."""
    return (entry.failures, -(entry.last_connected or 0.0), entry.first_seen, entry.url)


def _is_anchor(table: PeerTable, peer: Peer) -> bool:
    return peer.source is PeerSource.BOOTSTRAP or peer.key in table.known_before


def ranked_urls(
    table: PeerTable,
    now: float,
    exclude_urls: Collection[str],
    exclude_ids: Collection[str],
    *,
    good: bool,
    anchors: bool,
    peers: list[Peer] | None = None,
) -> Iterator[str]:
    """
    One URL per peer, best peer first (see ``PeerStore.candidates``), leaving out blocked
    peers and URLs of blocked addresses.

    Args:
        table: The store's records.
        now: The clock's time, for blocks.
        exclude_urls: URLs not to return.
        exclude_ids: Peers not to return.
        good: Only peers we connected to, and not URLs that failed
            :data:`MAX_GOOD_URL_FAILURES` times in a row since.
        anchors: Only bootstrap peers and peers met before this run.
        peers: :func:`ranked_peers` of ``good`` and ``anchors``, if the caller has them.

    """
    exclude_urls = set(exclude_urls)
    exclude_ids = set(exclude_ids)
    blocked_addresses = {
        address for address, block in table.blocked_addresses.items() if block.active(now)
    }
    if peers is None:
        peers = ranked_peers(table, good=good, anchors=anchors)
    for peer in peers:
        if peer.peer_id is not None:
            if peer.peer_id in exclude_ids:
                continue
            block = table.blocked_ids.get(peer.peer_id)
            if block is not None and block.active(now):
                continue
        urls = [
            entry
            for entry in peer.urls.values()
            if entry.url not in exclude_urls
            and not (good and entry.failures >= MAX_GOOD_URL_FAILURES)
            and not (blocked_addresses and _blocked_host(entry.url, blocked_addresses))
            and not _excluded_by_its_id(entry.url, exclude_urls, exclude_ids)
        ]
        if urls:
            yield min(urls, key=_url_rank).url


def ranked_peers(table: PeerTable, *, good: bool, anchors: bool) -> list[Peer]:
    """The peers :func:`ranked_urls` walks, best first."""
    peers = [
        p
        for p in table.peers.values()
        if p.urls and (p.successes > 0 or not good) and (not anchors or _is_anchor(table, p))
    ]
    peers.sort(key=_dial_rank)
    return peers


class GoodRanking:
    """
    :func:`ranked_peers` of the good peers, for ``get_peers`` answers, ranked at most
    once per :data:`GOOD_RANKING_TTL` seconds and after each change of the store but
    the package counts (an attacker's test: ranking a full store took ~1 ms per
    ``get_peers``, for one request token, and one address's 8 connections asking
    within their budget kept the node's core 70-95 % busy).
    """

    __slots__ = ("_peers", "_until")

    def __init__(self) -> None:
        self._peers: list[Peer] | None = None
        self._until = 0.0

    def changed(self) -> None:
        """The store changed: rank again at the next call."""
        self._peers = None

    def peers(self, table: PeerTable, now: float) -> list[Peer]:
        """The good peers, best first, as ranked within the last TTL."""
        if self._peers is None or now >= self._until:
            self._peers = ranked_peers(table, good=True, anchors=False)
            self._until = now + GOOD_RANKING_TTL
        return self._peers


def is_anchor(table: PeerTable, peer_id: str, *, bootstrap: bool = False) -> bool:
    """Whether the peer ``peer_id`` is a bootstrap peer or (unless ``bootstrap``) one
    met before this run."""
    peer = table.by_id.get(peer_id)
    if peer is None:
        return False
    return peer.source is PeerSource.BOOTSTRAP if bootstrap else _is_anchor(table, peer)


def _block_of(table: PeerTable, key: str) -> Block | None:
    """The block on a peer's key: its id's, or for a peer known by its address alone,
    its address's (found by a new user: an address blocked for failed handshakes was
    listed "blocked until -" while its peers were refused)."""
    address = address_of_key(key)
    if address is None:
        return table.blocked_ids.get(key)
    return table.blocked_addresses.get(address_key(address))


def active_block(
    table: PeerTable, now: float, peer_id: str | None, address: str | None
) -> Block | None:
    """The block on ``peer_id`` or ``address`` at ``now``, the longer if both are."""
    blocks = (
        None if peer_id is None else table.blocked_ids.get(peer_id),
        None if address is None else table.blocked_addresses.get(address_key(address)),
    )
    found = [block for block in blocks if block is not None and block.active(now)]
    return max(found, key=lambda block: block.until, default=None)


def records(table: PeerTable, now: float) -> list[PeerRecord]:
    """Every peer the table holds, best score first, then most recently seen."""
    found = []
    for peer in table.peers.values():
        block = _block_of(table, peer.peer_id) if peer.peer_id is not None else None
        found.append(
            PeerRecord(
                peer_id=peer.peer_id,
                urls=tuple(entry.url for entry in sorted(peer.urls.values(), key=url_age)),
                source=peer.source,
                address=peer.address,
                first_seen=peer.first_seen,
                last_seen=peer.last_seen,
                last_connected=peer.last_connected,
                successes=peer.successes,
                failures=peer.failures,
                good_packages=peer.good_packages,
                invalid_packages=peer.invalid_packages,
                blocked_until=block.until if block is not None and block.active(now) else None,
            )
        )
    found.sort(key=lambda record: (-record.score, -record.last_seen))
    return found
