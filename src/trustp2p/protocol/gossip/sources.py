"""
Which peers relayed new messages to this node first, lately, free of I/O: every other
periodic catch-up round goes to one of them (see :meth:`.catchup.CatchUp.choose`),
drawn by weight.

A peer (the node counts its address group's) earns a credit of 1 for each message of
another origin it was the first to bring, live and accepted (for a topic with a
validator, once the validator accepted it); credits halve every ``half_life`` seconds
(the ``catchup_interval``) and are capped at :data:`MAX_CREDIT`, as GossipSub scores its
peers' first deliveries. A peer whose credit fell below :data:`MIN_CREDIT` (one
message more than two half-lives ago) is no source. A publisher's own messages earn it
nothing: found in review (review71 F3), a message a minute of its own made an identity
that served nothing a source, and a few such identities took the honest relay's share
of the rounds.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Generic, TypeVar

__all__ = ["MAX_CREDIT", "MIN_CREDIT", "RelaySources"]

MAX_CREDIT = 32.0
"""A peer's credit stops growing here: a burst long past weighs no more than a steady
relay's last minute."""

MIN_CREDIT = 0.25
"""Below this a peer is no source (one message, two half-lives ago)."""

K = TypeVar("K")
P = TypeVar("P")


class RelaySources(Generic[K]):
    """
    The credit of each peer, or group of peers, that relayed new messages first (keys
    are peers or their groups).

    Args:
        half_life: Seconds in which a credit halves (more than 0).
    """

    __slots__ = ("_credits", "_half_life")

    def __init__(self, half_life: float) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be more than 0, not {half_life!r}")
        self._half_life = half_life
        self._credits: dict[K, tuple[float, float]] = {}  # peer -> (credit, as of when)

    def relayed(self, peer: K, now: float) -> None:
        """``peer`` was the first to bring a new message of another origin."""
        self._credits[peer] = (min(MAX_CREDIT, self.weight(peer, now) + 1.0), now)

    def weight(self, peer: K, now: float) -> float:
        """``peer``'s credit at ``now``; 0 if it is no source."""
        credit, since = self._credits.get(peer, (0.0, now))
        halved: float = 0.5 ** (max(0.0, now - since) / self._half_life)
        credit *= halved
        if credit < MIN_CREDIT:
            self._credits.pop(peer, None)
            return 0.0
        return credit

    def weigh(self, members: Mapping[P, K], now: float) -> list[tuple[P, float]]:
        """Those of ``members`` (connections, and the key each earns credit for: its
        address group) whose key is a source, each with an even share of its key's
        credit (found in review, review75: seven identities relaying spam to each other
        each took the cap, as much as the honest relay); the keys that are no sources
        at ``now`` are forgotten, those not asked for too."""
        for key in list(self._credits):
            self.weight(key, now)
        shares = collections.Counter(members.values())
        weighed = ((m, self.weight(key, now) / shares[key]) for m, key in members.items())
        return [(member, weight) for member, weight in weighed if weight > 0]

    def __len__(self) -> int:
        return len(self._credits)
