"""
Peer scoring: when a peer's packages call for a block, how long a block lasts, and how
much we like a peer. No I/O; time comes from the caller.

The peer store counts packages (:meth:`~trustp2p.storage.peerstore.PeerStore.record_packages`)
and keeps blocks; this module decides. A node counts every package it receives, good or
invalid, in a *window* per peer; when the window's counts cross the :class:`BlockPolicy`,
the node blocks the peer for ``block_duration`` seconds and the window starts afresh.

"""

from __future__ import annotations

__all__ = [
    "HANDSHAKE_BLOCK",
    "OFFENCE_WINDOW",
    "OFFENDING_CONNECTIONS",
    "SUCCESS_SPACING",
    "Block",
    "BlockPolicy",
    "Offences",
    "PackageCounts",
    "peer_score",
]

import math
from dataclasses import dataclass
from typing import NamedTuple

from .hosts import address_key


class PackageCounts(NamedTuple):
    """
    Packages counted from one peer since its window started (a tuple: one is made per
    package received).

    Attributes:
        good: Valid packages.
        invalid: Invalid packages (undecodable, malformed, over a rate, failed handshakes).

    """

    good: int
    invalid: int


@dataclass(frozen=True, slots=True)
class Block:
    """
    A block of a peer id or an address.

    Attributes:
        until: When it ends, in the clock's seconds.
        reason: Why, for the record.

    """

    until: float
    reason: str

    def active(self, now: float) -> bool:
        """Whether the block still holds at ``now``: it ends at ``until``, exclusive."""
        return self.until > now


@dataclass(frozen=True, slots=True)
class BlockPolicy:
    """
    When a peer's packages make it a peer to block, and for how long.

    Args:
        invalid_ratio: The policy is crossed when invalid packages outnumber good ones
            by more than this ratio (0.1: more than one invalid package per ten good).
        min_packages: ...once at least this many packages (good + invalid) were counted,
            so that one bad package from a new peer is not enough (10).
        block_duration: How long a block lasts, in seconds (1 h).

    Raises:
        ValueError: If a value is out of range.

    """

    invalid_ratio: float = 0.1
    min_packages: int = 10
    block_duration: float = 3600.0

    def __post_init__(self) -> None:
        if not (self.invalid_ratio >= 0 and math.isfinite(self.invalid_ratio)):
            raise ValueError(f"invalid_ratio must not be negative, not {self.invalid_ratio}")
        if self.min_packages < 1:
            raise ValueError(f"min_packages must be at least 1, not {self.min_packages}")
        if not (self.block_duration > 0 and math.isfinite(self.block_duration)):
            raise ValueError(
                f"block_duration must be a positive number of seconds, not {self.block_duration}"
            )

    def crossed(self, counts: PackageCounts) -> bool:
        """
        Whether a window's package counts call for a block.

        True when ``good + invalid >= min_packages`` and ``invalid > invalid_ratio *
        max(good, min_packages)``: the ratio is taken over ``min_packages`` at least, so
        that the first packages' one mistake blocks no one (found by a tester: one
        gossip message an application's validator rejected blocked its honest publisher
        for an hour when it was the 10th package counted, 1 > 0.1 * 9, and not when it
        was the 9th or the 11th). The caller then blocks the peer and starts its window
        afresh, so that the policy reports the peer again only if it keeps misbehaving.
        """
        good, invalid = counts
        at_least = max(good, self.min_packages)
        return good + invalid >= self.min_packages and invalid > self.invalid_ratio * at_least

    def block(self, reason: str, now: float, duration: float | None = None) -> Block:
        """
        A block starting at ``now``.

        Args:
            reason: Why, for the record.
            now: The clock's time, in seconds.
            duration: Seconds; by default ``block_duration``.

        Raises:
            ValueError: If ``duration`` isn't a positive number of seconds.

        """
        if duration is None:
            duration = self.block_duration
        elif not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"duration must be a positive number of seconds, not {duration}")
        return Block(now + duration, reason)


HANDSHAKE_BLOCK = 300.0
"""Seconds an address is blocked for at most when its inbound handshakes keep failing
(``min_packages`` of them, none good). A failed handshake proves no peer id, so every
peer behind one NAT, VPN exit or carrier-grade NAT shares the count: a short block
stops a flood of them without shutting the address out for ``block_duration``."""


OFFENDING_CONNECTIONS = 3
"""Connections of one address that must cross the policy, within :data:`OFFENCE_WINDOW`,
before the address itself is blocked."""

OFFENCE_WINDOW = 600.0
"""Seconds; see :data:`OFFENDING_CONNECTIONS`."""


class Offences:
    """
    Who pays for bad input when there is no peer id (plain mode): the connection, and
    the address only when several of its connections offend.

    A connection whose own packages cross the :class:`BlockPolicy` is closed; its
    address is blocked only once ``threshold`` of its connections (of distinct peers,
    where they have ids) did so within ``window`` seconds. Peers sharing an address
    (behind one NAT, or all on loopback) don't pay for one another's bad input, and an
    address that keeps sending it is still shut out.

    Args:
        threshold: Offending connections that get an address blocked.
        window: Seconds within which they must offend.
        max_tracked: Addresses remembered at most; the oldest are forgotten first.

    """

    def __init__(
        self,
        threshold: int = OFFENDING_CONNECTIONS,
        window: float = OFFENCE_WINDOW,
        *,
        max_tracked: int = 10_000,
    ) -> None:
        if threshold < 1 or not window > 0:
            raise ValueError(f"need threshold >= 1 and window > 0, not {threshold}, {window}")
        self.threshold = threshold
        self.window = window
        self.max_tracked = max_tracked
        self._times: dict[str, list[tuple[float, str | None]]] = {}

    def first(self, address: str, now: float) -> float | None:
        """When the earliest offence of ``address`` still counted at ``now`` was."""
        times = [t for t, _ in self._times.get(address_key(address), ()) if now - t < self.window]
        return min(times, default=None)

    def offended(self, address: str, now: float, offender: str | None = None) -> bool:
        """
        A connection from ``address`` crossed the policy at ``now``; True when the
        address is to be blocked (its count then starts afresh).

        ``offender`` is the peer's id, if it has one: the offences of one id count
        once, so that a peer blocked, unblocked and offending again doesn't get its
        address blocked alone. Offences without an id count each. An IPv6 address
        counts as its /64, as the per-address limits take it
        (:func:`~trustp2p.protocol.hosts.address_key`): found in review, a peer
        rotating addresses within its /64 never reached the count on one.
        """
        address = address_key(address)
        times = [
            (t, who)
            for t, who in self._times.pop(address, ())
            if now - t < self.window and (who is None or who != offender)
        ]
        times.append((now, offender))
        if len(times) >= self.threshold:
            return True
        if len(self._times) >= self.max_tracked:
            del self._times[next(iter(self._times))]
        self._times[address] = times
        return False


FAILURE_COST = 2.0
"""What a failed dial costs in :func:`peer_score`, in successful connections: the
first of a row only (the store counts one an outage)."""

SUCCESS_SPACING = 3600.0
"""Seconds after a counted success of a peer before another counts: a connection we
dialled, or this long of one held open. A peer we dialled once could close each link
to be dialled again, a point each time (review: 40 ids churning so outranked every
honest peer and took every slot after a restart); a peer that stays earns as much
(review38: a link held for months earned one point)."""


def peer_score(successes: int, failures: int, invalid_packages: int) -> float:
    """
    How much we like a peer; higher is better, 0 for a peer never tried.

    ``successes - 2 * failures - invalid_packages``: a successful connection we
    dialled, or an hour it stayed open, is a point (one an hour at most:
    :data:`SUCCESS_SPACING`), an outage (failed dials in a row) costs two
    (:data:`FAILURE_COST`), and an invalid package costs a point, so that a peer near
    the block policy scores well below zero. Good packages add nothing: volume is
    cheap to send, so it mustn't buy dial priority (attackers' tests: ids that sent
    1,200 valid talks each scored 12-30 against honest peers' 1-3; capped at a point,
    100 talks each still put 40 ids ahead of every quiet honest peer, and a restarted
    node dialled only them).
    """
    return successes - FAILURE_COST * failures - invalid_packages
