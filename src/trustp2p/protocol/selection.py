"""
One round of managed dials (:meth:`~trustp2p.protocol.outbound.OutboundPolicy.selection`):
which of the peer store's candidates to dial, free of I/O.

"""

from __future__ import annotations

__all__ = ["Selection"]

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from .outbound import Dial, Query, netgroup_of
from .urls import address_of

if TYPE_CHECKING:
    from .outbound import OutboundPolicy, PeerView

_FIRST_QUERY_PER_DIAL = 4
"""A round first asks the store for this many candidates per connection missing."""

_FIRST_ANCHOR_QUERY = 8
"""An anchor round first asks the store for this many candidates."""


class Selection:
    """
    One round of choosing store candidates to dial: a sans-I/O loop.

    Ask :meth:`query` what to fetch from the store, give the answer to :meth:`offer`,
    dial what it returns, and repeat until :meth:`query` returns None. Each query
    leaves out the URLs offered before, so a store whose best candidates can't be
    dialled now (a peer connected under another record, a retry pending, a full
    netgroup) yields the next best: the round never stalls on them.

    Make one with :meth:`OutboundPolicy.selection` or
    :meth:`OutboundPolicy.anchor_selection`.

    """

    def __init__(
        self,
        policy: OutboundPolicy,
        wanted: int,
        connected_ids: Collection[str],
        own_urls: Iterable[str],
        view: PeerView | None,
        *,
        anchors: bool,
    ) -> None:
        self.policy = policy
        self.wanted = wanted
        self.anchors = anchors
        self.view = view
        self._connected = frozenset(connected_ids)
        self._busy = policy.busy(own_urls)
        self._excluded = policy.excluded(self._connected)
        self._groups = policy.netgroups()
        self._limit = _FIRST_ANCHOR_QUERY if anchors else wanted * _FIRST_QUERY_PER_DIAL
        self._exhausted = False
        self.dials: list[Dial] = []

    def query(self) -> Query | None:
        """What to ask the store for next, or None when the round is over."""
        if self.wanted <= 0 or self._exhausted:
            return None
        exclude = frozenset(self._busy | self._excluded)
        return Query(self._limit, exclude, self._connected, self.anchors)

    def offer(self, urls: Sequence[str]) -> list[Dial]:
        """
        The store's answer to the last :meth:`query`, best first.

        Returns:
            The dials to start now; they count as under way from here on (report each
            one's end with :meth:`OutboundPolicy.dial_ended`).

        """
        fresh = [url for url in dict.fromkeys(urls) if url not in self._excluded]
        self._exhausted = len(urls) < self._limit or not fresh
        self._excluded.update(fresh)
        self._limit *= 2
        if not self.anchors:
            # Those we connected to first (an attacker's test: its busy sybils, mixed in,
            # took 6 of 8 slots after a restart), in the store's order: this node's own
            # history, the longest-serving first (another's: 40 sybils dialled once,
            # shuffled in among the best 32 with 3 honest peers, took 8 of 8), ties in
            # an order of this node's own. The others at random among the best: if every
            # node dialled the best-known peers, those would fill up with inbound
            # connections.
            held = {url for url in fresh if self.policy.is_proven(url, self.view)}
            proven = [url for url in fresh if url in held]
            others = [url for url in fresh if url not in held]
            self.policy.shuffle(others)
            fresh = proven + others
        dials: list[Dial] = []
        for url in fresh:
            if self.wanted <= 0:
                break
            if not self.policy.dialable(url, self._busy, self._connected, self.view):
                continue
            group = None if self.anchors else netgroup_of(url)
            if group is not None and self._groups[group] >= self.policy.max_per_netgroup:
                continue
            if not self.anchors and not self.policy.may_dial(url, self.view):
                continue  # unproven, over the bound: a later round may dial it
            if group is not None:
                self._groups[group] += 1
            self.wanted -= 1
            self._busy.add(address_of(url))  # one dial per address, whatever the id
            dials.append(self.policy.start_dial(url, anchor=self.anchors))
        self.dials += dials
        return dials
