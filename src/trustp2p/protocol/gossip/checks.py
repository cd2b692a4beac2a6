"""
The node's checks of new gossip messages, ``gossip_node_rate`` a second in each of three
:class:`~.budget.FairShare`\\ s, by who asked for them. No I/O.

- *Pushed*: a live message a peer sent unasked. Past its share, the node stops reading
  that peer a while: that is the only way to slow a sender nobody asked.
- *Pulled*: a live message whose id this node asked that peer for (``iwant``; at most
  ``max_asks`` ids a peer at a time, each answered once), even past the ask's timeout
  (:data:`~.lazy.LATE_FOR`). Past its share, the node asks that peer for no more ids
  (:meth:`CheckShares.may_ask`) while it goes on reading it.
- *Fetched*: the messages of a catch-up answer (it must match the fetch, and holds at
  most its batch). Past its share, the node waits before it fetches more from that peer,
  while it goes on reading it.

A peer can't send more of the last two than this node asked for, so the asker paces them
itself, and a peer's live messages aren't held up behind what it was asked for. Found by
a tester (tester46): with one share, a new node's catch-up of a 30,000-message log spent
its hub's share at once, the node stopped reading the hub every second ("over its share
of gossip_node_rate: reading paused"), and the hub's live messages waited behind the
backlog: 22-37 s before the new node saw any. Pulls apart from the catch-up: a new node
is told (``ihave``) of its peers' recent messages and asks for those it lacks, while its
catch-up still runs.
"""

from __future__ import annotations

__all__ = ["CheckShares"]

from collections.abc import Hashable

from .budget import FairShare


class CheckShares:
    """
    The checks of new messages: ``rate`` a second pushed, ``rate`` pulled, ``rate``
    fetched, each shared fairly among the peers (and address groups) that spend it.

    Args:
        rate: Messages a second in each share (``gossip_node_rate``).
        window: Seconds of a share's window.

    """

    __slots__ = ("fetched_share", "pulled", "pushed")

    def __init__(self, rate: float, window: float = 1.0) -> None:
        self.pushed = FairShare(rate, window)
        self.pulled = FairShare(rate, window)
        self.fetched_share = FairShare(rate, window)

    def live(self, peer: Hashable, now: float, group: Hashable | None, *, asked: bool) -> float:
        """
        ``peer`` sent one new live message at ``now``; ``asked``: its id was asked of
        this peer (``iwant``) and not received yet, or given up on lately (a late answer).

        Returns:
            The seconds to stop reading ``peer`` for (0: none); always 0 for a message
            asked for (this node asks no more while over: :meth:`may_ask`).

        """
        if asked:  # (spent as asked: see asking())
            return 0.0
        return self.pushed.spend(peer, now, 1.0, group)

    def asking(self, peer: Hashable, now: float, count: int, group: Hashable | None) -> None:
        """This node asks ``peer`` for ``count`` ids at ``now`` (``iwant``): their checks
        are spent now, not as the answers come (review90 F1: spent on arrival, peers that
        announced ids at the start of a second were each asked for ``max_asks`` of them
        while the share was still empty, K identities making K x 500 checks a second)."""
        self.pulled.spend(peer, now, float(count), group)

    def fetched(self, peer: Hashable, now: float, count: int, group: Hashable | None) -> float:
        """``peer`` answered a catch-up fetch with ``count`` new messages at ``now``: the
        seconds to wait before fetching more from it (0: none)."""
        return self.fetched_share.spend(peer, now, float(count), group) if count else 0.0

    def may_ask(self, peer: Hashable, now: float, group: Hashable | None) -> bool:
        """Whether to ask ``peer`` for the ids it announces (``ihave``) at ``now``: not
        while it is over its share of pulls (the ids are left: another peer pushes them,
        or a catch-up round fetches them later)."""
        return self.pulled.wait(peer, now, group) == 0.0
