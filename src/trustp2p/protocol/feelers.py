"""
Feeler dials, free of I/O: when a client dials a URL only to find out whether it
works, and which one.

A client at its target dials no URL that nobody has proven (:mod:`.outbound`), so the
URLs its peer store learned from ``get_peers`` answers stayed untried for as long as it
ran, and a flood of made-up URLs from servers in two or three /16s pushed them out of a
full store (review62 F1, review59 R3: an honest server's 300 kept 44, or 0). As Bitcoin
Core's feeler connections do (one every two minutes, even with every outbound slot
taken), the client dials one such URL every ``feeler_interval``; the store then knows
which work (proven peers are forgotten last, after any number of untried ones) and
which don't (a failed dial is forgotten first).

**When.** One feeler at a time: the next is due ``interval`` seconds after the last
one ended (or none could be dialled), the first ``interval`` after the client started.

**Which.** The tellers (the network group of the server whose answer named a URL
first; for a URL no server named, a peer's own claim, the URL's network group) take
turns at random, each with an equal chance, so that servers of a few networks naming
any number of made-up URLs get no more feelers than one honest server does; within a
teller, the URLs with the fewest failed dials first, then those that servers of several
groups named, then the oldest (the first a full store forgets). A URL is dialled only
if a managed dial could be: its address not busy (dialled, connected, ours), no retry
pending, its host and its peer neither blocked nor connected, its network group below
``max_per_netgroup`` outbound connections, and within the bound on unproven dials
(:class:`~trustp2p.protocol.limits.UnprovenDials`).

"""

from __future__ import annotations

__all__ = ["FeelerPolicy", "Untried"]

import math
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .outbound import Dial, netgroup_of

if TYPE_CHECKING:
    from .outbound import OutboundPolicy, PeerView


@dataclass(frozen=True, slots=True)
class Untried:
    """
    A URL of the peer store that nobody has proven, as a feeler may dial it.

    Attributes:
        url: The store's URL (maybe ending in ``/p2p/<id>``).
        teller: Whose turn it takes: the network group of the first server whose
            ``get_peers`` answer named it; for a URL no server's did (a peer's claim, or
            one stored before tellers), ``host <its own network group>``.
        seconded: Whether servers of several network groups named it.
        failures: Its failed dials in a row.
        first_seen: When the store learned it (the store's clock).

    """

    url: str
    teller: str
    seconded: bool
    failures: int
    first_seen: float


def _order(candidate: Untried) -> tuple[int, bool, float, str]:
    """Within a teller: the fewest failures first, then named by several groups, then
    the oldest."""
    return (candidate.failures, not candidate.seconded, candidate.first_seen, candidate.url)


class FeelerPolicy:
    """
    When to dial a feeler, and which URL. Does no I/O: the shell calls :meth:`start`,
    asks :meth:`wake_in`, then :meth:`choose` with the store's untried URLs, dials the
    :class:`~trustp2p.protocol.outbound.Dial` returned, and reports its end with
    :meth:`ended`.

    Args:
        clock: Current time in seconds (the event loop's, in the node).
        interval: Seconds between two feelers (``feeler_interval``); 0 makes none.
        shuffle: Shuffles a list in place: the tellers' turns (tests pass one that
            keeps the order).

    Raises:
        ValueError: If ``interval`` is negative or not finite.

    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        interval: float,
        shuffle: Callable[[list[str]], None] = random.shuffle,
    ) -> None:
        if not 0 <= interval < math.inf:
            raise ValueError(f"interval must be a finite number of seconds, not {interval}")
        self.clock = clock
        self.interval = interval
        self.shuffle = shuffle
        self.under_way: str | None = None
        """The store URL of the feeler under way, if one is."""
        self._next: float | None = None  # None: not started

    def start(self) -> None:
        """The client started: the first feeler is due an interval from now."""
        self._next = self.clock() + self.interval

    def wake_in(self) -> float | None:
        """Seconds before the next feeler is due (0: now); None if none will be: they
        are off, not started, or one is under way (:meth:`ended` says when it ends)."""
        if self.interval == 0 or self.under_way is not None or self._next is None:
            return None
        return max(0.0, self._next - self.clock())

    def choose(
        self,
        candidates: Iterable[Untried],
        policy: OutboundPolicy,
        connected_ids: Collection[str],
        own_urls: Iterable[str],
        view: PeerView | None,
    ) -> Dial | None:
        """
        The feeler to dial now, if one is due and a candidate may be dialled; it is
        under way, for this policy and ``policy`` (a managed dial: its address busy),
        until :meth:`ended` (and ``policy``'s ``dial_ended``). None: none now; the next
        try is an interval later (sooner if the bound on unproven dials held it).

        Args:
            candidates: The store's untried URLs
                (:meth:`~trustp2p.storage.peerstore.PeerStore.untried`).
            policy: The client's outbound policy: its busy addresses, retries, groups.
            connected_ids: Peers connected now (either way), and our own id.
            own_urls: The URLs we listen on, or found to be ourselves.
            view: The peer store, for blocks and the peers met at URLs.

        """
        wait = self.wake_in()
        if wait is None or wait > 0:
            return None
        now = self.clock()
        url = self._pick(candidates, policy, frozenset(connected_ids), own_urls, view)
        if url is None:
            self._next = now + self.interval
            return None
        if not policy.may_dial(url, view):  # the bound on unproven dials: soon
            self._next = now + min(self.interval, policy.unproven.wait(now) or 1.0)
            return None
        self.under_way = url
        return policy.start_dial(url)

    def _pick(
        self,
        candidates: Iterable[Untried],
        policy: OutboundPolicy,
        connected: frozenset[str],
        own_urls: Iterable[str],
        view: PeerView | None,
    ) -> str | None:
        """A teller at random among those with a URL that may be dialled, and its
        first such URL (see the module docstring)."""
        tellers: dict[str, list[Untried]] = {}
        for candidate in candidates:
            tellers.setdefault(candidate.teller, []).append(candidate)
        busy = policy.busy(own_urls)
        groups = policy.netgroups()
        order = list(tellers)
        self.shuffle(order)
        for teller in order:
            # Failed in this run last: a refusal (1013) counts none in the store.
            for candidate in sorted(
                tellers[teller], key=lambda c: (policy.failures(c.url), _order(c))
            ):
                url = candidate.url
                group = netgroup_of(url)
                if group is not None and groups[group] >= policy.max_per_netgroup:
                    continue
                if policy.is_proven(url, view):
                    continue
                if policy.dialable(url, busy, connected, view):
                    return url
        return None

    def ended(self) -> None:
        """The feeler under way ended, however: the next is due an interval later."""
        self.under_way = None
        self._next = self.clock() + self.interval
