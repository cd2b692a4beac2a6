"""
Which peers a full peer store forgets first. No I/O: the store's table
(:class:`~trustp2p.storage._peer_table.PeerTable`) removes them.

From first forgotten to last:

1. peers without a URL (they only ever dialled us: we can't dial them);
2. peers never proven (no connection of ours worked), nor bootstrap peers: those with
   failures or invalid packages first (by score); then those whose URLs are only their
   own claim (a peer announced them, hello or ``my_url``, and no dial proved who
   answers there) before those learned from others; in each, those past
   :data:`TELLER_SHARE` of what one network group's servers told us first (the
   largest teller's first), then those past :data:`GROUP_SHARE` in their own network
   group; then those only one group's servers named before those several did; then
   the oldest;
3. bootstrap peers never proven;
4. proven peers, the worst first.

Found by an attacker (attacker38 A2): throwaway ids that each connected once and
announced 8 URLs of their own host ranked as the URLs a node had learned from honest
``get_peers`` answers, and won by being newer; 10,000 of them flushed every one of 300
honest untried URLs from the store, on disk. One host or network now competes with
itself first (as Bitcoin Core's address manager buckets addresses by network group),
and a peer's word for itself counts less than another's.

Found by the next (attacker39 E1): URLs in a ``get_peers`` answer have no id, so they
ranked as learned from others; made up over many /16s, no group was crowded, and each
fresh server id had a fresh budget of 1,000 URLs: 10,000 of them flushed the 300
honest untried URLs again. Who told us a URL is now kept with it (by the server's
network group: ids are free, addresses are not; on disk too, so a restart ranks the
URLs there the same way), and one teller's URLs compete with each other first, as
Bitcoin Core's new table buckets an address by its source's group too. The largest
teller's go first: an honest server that told us more than its share keeps it against
an attacker's servers of one network, however many URLs they tell.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["GROUP_SHARE", "TELLER_SHARE", "forgettable", "teller_group"]

import heapq
from collections.abc import Collection

from ..protocol.hosts import host_of, is_loopback, netgroup
from ..protocol.shared_text import share
from ._peer_records import Peer, PeerSource

GROUP_SHARE = 64
"""Unproven peers of one network group (an IPv4 /16, an IPv6 /32, a DNS name's domain:
:func:`~trustp2p.protocol.hosts.netgroup`) ranked as anyone's; past it, the group's
weakest are forgotten before other unproven peers of their kind (claims, or URLs learned
from others). Loopback is in no group: every
local peer shares it (tests, ``trustp2p simulate``), as the per-address limits exempt it
unless ``limit_loopback``; the claim rule still ranks a local peer's word for itself
after the URLs learned from others."""

TELLER_SHARE = 128
"""Unproven peers, learned from ``get_peers`` answers, that the servers of one network
group told us first (``Url.teller``) ranked as anyone's; past it, the teller's weakest
(named by it alone, then the oldest) are forgotten before other unproven peers learned
from others, the largest teller's first. An attacker's made-up URLs then need servers
in many network groups to flush a store that fills (about 9,000 / 128: 70 at the
default 10,000 peers), as claims need hosts in many (:data:`GROUP_SHARE`); into a store
already full, fewer: a teller's flood is past its share at the pass, but two /16s
keep an honest teller of 300 at 44, three at 0 (review62). Servers on loopback
tell as no group, as loopback is in none for :data:`GROUP_SHARE`."""

_Rank = tuple[bool, bool, bool, float, bool, int, bool, float]

_ROOMY = 1
"""A rank's crowding: not crowded; 0 past :data:`GROUP_SHARE`; past :data:`TELLER_SHARE`,
minus the teller's peers (the largest teller's first)."""


def _group(peer: Peer) -> str | None:
    """The network group of ``peer``'s first URL; None on loopback (or without a URL).
    Kept on the URL's record: parsed at each pass, 10,000 URLs made a pass 50 times as
    dear (250 ms)."""
    entry = next(iter(peer.urls.values()), None)
    if entry is None:
        return None
    if entry.group == "":
        host = host_of(entry.url)
        entry.group = None if not host or is_loopback(host) else netgroup(host)
    return entry.group


def teller_group(host: str) -> str | None:
    """What a server at ``host`` tells as (``Url.teller``): its network group, or None
    on loopback (see :data:`TELLER_SHARE`)."""
    return None if not host or is_loopback(host) else share(netgroup(host))


def _teller(peer: Peer) -> str | None:
    """The network group of the first server that told us ``peer``'s first URL; None
    if none did (see ``Url.teller``)."""
    entry = next(iter(peer.urls.values()), None)
    if entry is None or entry.teller is None:
        return None
    return entry.teller.removeprefix("+")


def _seconded(peer: Peer) -> bool:
    """Whether servers of several network groups named ``peer``'s first URL."""
    entry = next(iter(peer.urls.values()), None)
    return entry is not None and entry.teller is not None and entry.teller.startswith("+")


def _claimed_only(peer: Peer) -> bool:
    """Whether every URL of ``peer`` is only its own claim: a peer with an id announced
    them, and no dial of ours worked there (a URL learned from another has no id)."""
    return peer.peer_id is not None and all(
        entry.last_connected is None for entry in peer.urls.values()
    )


def _open(peer: Peer) -> bool:
    """Whether ``peer`` is ranked by its group and claims: a dial candidate never proven
    and not the operator's."""
    return bool(peer.urls) and peer.successes == 0 and peer.source is not PeerSource.BOOTSTRAP


def _rank(peer: Peer, is_open: bool) -> _Rank:
    """Sort key: the first ones are forgotten first (see the module docstring); not
    crowded (:func:`_crowded` marks it)."""
    return (
        bool(peer.urls),
        peer.successes > 0,
        peer.source is PeerSource.BOOTSTRAP,
        peer.score(),
        not (is_open and _claimed_only(peer)),
        _ROOMY,
        _seconded(peer),
        peer.last_seen,
    )


def _crowd(
    shares: dict[str, list[Peer]], share: int, ranks: dict[str, _Rank], *, by_size: bool
) -> None:
    """Mark crowded the weakest of each list in ``shares`` past ``share`` peers: 0, or
    ``by_size``, minus the list's length."""
    for members in shares.values():
        if len(members) > share:
            mark = -len(members) if by_size else 0
            kept = heapq.nlargest(share, members, key=lambda peer: ranks[peer.key])
            for peer in set(members).difference(kept):
                rank = ranks[peer.key]
                ranks[peer.key] = (*rank[:5], min(rank[5], mark), *rank[6:])


def forgettable(peers: Collection[Peer], count: int) -> list[Peer]:
    """
    The ``count`` peers of ``peers`` to forget first (see the module docstring).

    Linear in the peers (times log ``count``): the store calls it once per tenth of its
    size added (an attacker's test of 12,000 identities: ranking every peer for each one
    added made each new peer cost ten times as much).
    """
    ranks: dict[str, _Rank] = {}
    groups: dict[str, list[Peer]] = {}
    tellers: dict[str, list[Peer]] = {}
    for peer in peers:
        is_open = _open(peer)
        ranks[peer.key] = _rank(peer, is_open)
        if not is_open:
            continue
        if (group := _group(peer)) is not None:
            groups.setdefault(group, []).append(peer)
        if not _claimed_only(peer) and (teller := _teller(peer)) is not None:
            tellers.setdefault(teller, []).append(peer)
    _crowd(groups, GROUP_SHARE, ranks, by_size=False)
    _crowd(tellers, TELLER_SHARE, ranks, by_size=True)
    return heapq.nsmallest(count, peers, key=lambda peer: ranks[peer.key])
