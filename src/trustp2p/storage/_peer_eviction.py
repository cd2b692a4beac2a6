"""
Which peers a full peer store forgets first. No I/O: the store's table
(:class:`~trustp2p.storage._peer_table.PeerTable`) removes them.

From first forgotten to last:

1. peers without a URL (they only ever dialled us: we can't dial them);
2. peers never proven (no connection of ours worked), nor bootstrap peers: those with
   failures or invalid packages first (by score); then those whose URLs are only their
   own claim (a peer announced them, hello or ``my_url``, and no dial proved who
   answers there) before those learned from others; in each, those past
   :data:`GROUP_SHARE` in their network group first; then the oldest;
3. bootstrap peers never proven;
4. proven peers, the worst first.

Found by an attacker (attacker38 A2): throwaway ids that each connected once and
announced 8 URLs of their own host ranked as the URLs a node had learned from honest
``get_peers`` answers, and won by being newer; 10,000 of them flushed every one of 300
honest untried URLs from the store, on disk. One host or network now competes with
itself first (as Bitcoin Core's address manager buckets addresses by network group),
and a peer's word for itself counts less than another's.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["GROUP_SHARE", "forgettable"]

import heapq
from collections.abc import Collection

from ..protocol.hosts import host_of, is_loopback, netgroup
from ._peer_records import Peer, PeerSource

GROUP_SHARE = 64
"""Unproven peers of one network group (an IPv4 /16, an IPv6 /32, a DNS name's domain:
:func:`~trustp2p.protocol.hosts.netgroup`) ranked as anyone's; past it, the group's
weakest are forgotten before other unproven peers of their kind (claims, or URLs learned
from others). Loopback is in no group: every
local peer shares it (tests, ``trustp2p simulate``), as the per-address limits exempt it
unless ``limit_loopback``; the claim rule still ranks a local peer's word for itself
after the URLs learned from others."""

_Rank = tuple[bool, bool, bool, float, bool, bool, float]


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
        True,
        peer.last_seen,
    )


def _crowded(rank: _Rank) -> _Rank:
    return (*rank[:5], False, rank[6])


def forgettable(peers: Collection[Peer], count: int) -> list[Peer]:
    """
    The ``count`` peers of ``peers`` to forget first (see the module docstring).

    Linear in the peers (times log ``count``): the store calls it once per tenth of its
    size added (an attacker's test of 12,000 identities: ranking every peer for each one
    added made each new peer cost ten times as much).
    """
    ranks: dict[str, _Rank] = {}
    groups: dict[str, list[Peer]] = {}
    for peer in peers:
        is_open = _open(peer)
        ranks[peer.key] = _rank(peer, is_open)
        if is_open and (group := _group(peer)) is not None:
            groups.setdefault(group, []).append(peer)
    for members in groups.values():
        if len(members) > GROUP_SHARE:
            kept = heapq.nlargest(GROUP_SHARE, members, key=lambda peer: ranks[peer.key])
            for peer in set(members).difference(kept):
                ranks[peer.key] = _crowded(ranks[peer.key])
    return heapq.nsmallest(count, peers, key=lambda peer: ranks[peer.key])
