"""
Which peer ids each address has shown with a clean record, and the addresses that refuse
new ids. No I/O: the node tells what happened, with the time; the rule answers.

Peer ids are free (a key generation each), so an address whose peers keep offending
earns a block (:class:`~trustp2p.protocol.scoring.Offences`). Behind one NAT, a carrier
NAT or a shared IPv6 /64, that block shut the honest peers of the address out too: nine
throwaway ids with a few invalid packages each kept a NAT's address refused for five
minutes, again and again, with an honest peer of it connected (found by an attacker,
attacker37 N2). An address with honest history, an id that proved itself from it before
the offences began and sent nothing invalid, is not blocked then: its *new* ids are
refused for the block's duration (:meth:`KnownIds.restrict`), and the ids it showed
before still come in (:meth:`KnownIds.refused_for`). The attacker keeps only the ids it
had connected, clean, before its first offence; each is blocked by its id at its own
first offence, and makes no new ones there.

An id is known from the moment its connection from the address opens (its id proven:
secure mode) while it is connected, and :data:`KNOWN_ID_MEMORY` after its last
connection from there closed; an invalid package, or a block of the id, forgets it
(:meth:`KnownIds.tainted`). Addresses count as
:func:`~trustp2p.protocol.hosts.address_key` makes them (an IPv6 address as its /64),
as the offences do.

"""

from __future__ import annotations

__all__ = ["KNOWN_ID_MEMORY", "MAX_KNOWN_IDS", "NEW_IDS_REFUSED", "KnownIds"]

import math
from dataclasses import dataclass

from .hosts import address_key

KNOWN_ID_MEMORY = 3600.0
"""Seconds an id stays known for its address after its last connection from there
closed: a known peer that reconnects within an hour of leaving is let in while the
address refuses new ids."""

MAX_KNOWN_IDS = 10_000
"""(address, id) pairs remembered at most; the least recently seen of those not
connected are forgotten first (an id connected now stays)."""

NEW_IDS_REFUSED = "too many new ids from your address"
"""The first words of the close reason of a new id refused (1013, with the seconds
left: "too many new ids from your address: try again in 299 s")."""


@dataclass(slots=True)
class _Seen:
    first: float  # when first seen from the address (since last forgotten)
    last: float  # when last seen: a connection opened or closed
    open: int = 0  # its connections from the address open now


class KnownIds:
    """
    The ids each address has shown with a clean record, and the addresses refusing new
    ones.

    Args:
        memory: Seconds an id stays known after its last connection closed.
        max_tracked: (address, id) pairs remembered at most, and addresses refusing
            new ids at most (the earliest restricted are forgotten first).

    """

    def __init__(
        self, *, memory: float = KNOWN_ID_MEMORY, max_tracked: int = MAX_KNOWN_IDS
    ) -> None:
        if not memory > 0 or max_tracked < 1:
            raise ValueError(f"need memory > 0 and max_tracked >= 1, not {memory}, {max_tracked}")
        self.memory = memory
        self.max_tracked = max_tracked
        # (address key, id) -> when seen; least recently touched first.
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._restricted: dict[str, tuple[float, float]] = {}  # key -> (known by, until)

    def _fresh(self, seen: _Seen, now: float) -> bool:
        return seen.open > 0 or now - seen.last < self.memory

    def opened(self, address: str, peer_id: str, now: float) -> None:
        """A connection from ``address`` proved ``peer_id`` and opened at ``now``."""
        key = (address_key(address), peer_id)
        seen = self._seen.pop(key, None)
        if seen is None or not self._fresh(seen, now):
            seen = _Seen(now, now)
        seen.open += 1
        seen.last = now
        self._seen[key] = seen
        if len(self._seen) > self.max_tracked:
            # The least recently seen not connected; the connected are the node's
            # connections, a few hundred to pass over at most.
            oldest = next((k for k, s in self._seen.items() if not s.open), None)
            del self._seen[next(iter(self._seen)) if oldest is None else oldest]

    def closed(self, address: str, peer_id: str, now: float) -> None:
        """A connection of ``peer_id`` from ``address`` closed at ``now``."""
        key = (address_key(address), peer_id)
        seen = self._seen.pop(key, None)
        if seen is None:
            return  # tainted, or forgotten
        seen.open = max(0, seen.open - 1)
        seen.last = now
        self._seen[key] = seen

    def tainted(self, address: str, peer_id: str) -> None:
        """``peer_id`` sent something invalid from ``address``, or was blocked: it is
        no longer known there (a connection of it that opens later starts afresh)."""
        self._seen.pop((address_key(address), peer_id), None)

    def honest(self, address: str, before: float, now: float, offender: str = "") -> int:
        """How many ids of ``address``, ``offender`` aside, are known at ``now`` and
        were first seen from it by ``before`` (the first offence of its window)."""
        key = address_key(address)
        return sum(
            1
            for (k, peer_id), seen in self._seen.items()
            if k == key and peer_id != offender and seen.first <= before and self._fresh(seen, now)
        )

    def restricted(self, address: str, now: float) -> bool:
        """Whether ``address`` refuses new ids at ``now``: its honest history is spent
        for as long (review52 R1: ids an attacker connected clean in advance, offending
        one after another while it was restricted, kept its own address unblocked, each
        crossing a new restriction); a crossing then blocks it. Once the restriction is
        over, a crossing restricts it again (review55 R1: blocked then, for the rest of
        the window, a NAT's honest peers were refused half the time again)."""
        restriction = self._restricted.get(address_key(address))
        return restriction is not None and now < restriction[1]

    def restrict(self, address: str, since: float, until: float) -> None:
        """Until ``until``, ``address`` refuses the ids it didn't show,
        clean, by ``since`` (a restriction already there is extended, and keeps its
        earlier ``since``)."""
        key = address_key(address)
        old = self._restricted.pop(key, None)
        if old is not None:
            since, until = min(since, old[0]), max(until, old[1])
        self._restricted[key] = (since, until)
        if len(self._restricted) > self.max_tracked:
            del self._restricted[next(iter(self._restricted))]

    def refused_for(self, address: str, peer_id: str, now: float) -> float | None:
        """
        Seconds left of the restriction of ``address`` if it refuses ``peer_id`` at
        ``now`` (an id it didn't show, clean, before the restriction's offences began,
        or forgot since), else ``None``.
        """
        key = address_key(address)
        restriction = self._restricted.get(key)
        if restriction is None:
            return None
        since, until = restriction
        if now >= until:
            del self._restricted[key]
            return None
        seen = self._seen.get((key, peer_id))
        if seen is not None and seen.first <= since and self._fresh(seen, now):
            return None
        return until - now

    def refusal(self, left: float) -> str:
        """The close reason of a new id refused with ``left`` seconds to wait."""
        return f"{NEW_IDS_REFUSED}: try again in {math.ceil(left)} s"
