"""
The router's memory of its meshes, free of I/O: since when each peer is in a topic's
mesh and what it delivered there first (whom to keep when a mesh is pruned), and the
prune backoffs (whom not to graft, and which grafts to refuse).

A prune backoff is GossipSub v1.1's ``prune_backoff`` (60 s there and here): once a
peer and we parted on a topic (we pruned it, refused its graft or left the topic, or
it pruned us), neither side grafts the other on that topic for the backoff. A graft
that comes within it is *early*: the router refuses it without answering, so that a
peer that grafts again at once gets one PRUNE a backoff, not one a graft (found by an
attacker: 40 connections that grafted again on every PRUNE made 150,649 exchanges).

Nodes before this rule graft again at their next heartbeat, once; they don't graft a
peer again until they prune it themselves (they think it in their mesh). So the first
early graft within a backoff is only counted; the next ones are a protocol error, which
the node counts against the peer as an invalid package (an honest peer never sends
two). Our own grafts wait a little longer than the backoff (:data:`BACKOFF_SLACK`), so
that the peer, which started its backoff when our PRUNE or its own arrived, sees none
of ours as early.

"""

from __future__ import annotations

__all__ = ["BACKOFF_SLACK", "FIRST_DELIVERY_CAP", "MeshBook"]

import math
import random
from collections.abc import Iterable

from .control import PeerKey

BACKOFF_SLACK = 0.1
"""Our own grafts wait this share of ``prune_backoff`` past the backoff (6 s of 60 s):
room for the PRUNE's trip, so that the peer's backoff is over by then too."""

FIRST_DELIVERY_CAP = 60
"""Most messages delivered first that count in a mesh peer's score (see
:meth:`MeshBook.ranked`): past it, a peer gains seniority only by staying."""


class _Member:
    """A peer in a topic's mesh: since when, and the messages it delivered first."""

    __slots__ = ("delivered", "joined")

    def __init__(self, joined: float) -> None:
        self.joined = joined
        self.delivered = 0


class _Backoff:
    """A peer and we parted on a topic: until when, and its early grafts since."""

    __slots__ = ("early", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.early = 0


class MeshBook:
    """
    Mesh seniority and prune backoffs, per peer and topic. Does no I/O: the router
    passes the clock's time in; peers are opaque keys.

    Args:
        prune_backoff: Seconds after a PRUNE (either way) during which the peer and we
            don't graft each other on that topic; 0 turns backoffs off.

    Raises:
        ValueError: If ``prune_backoff`` is negative or not finite.

    """

    __slots__ = ("_backoffs", "_members", "prune_backoff")

    def __init__(self, prune_backoff: float = 60.0) -> None:
        if not 0 <= prune_backoff < math.inf:
            raise ValueError(
                f"prune_backoff must be a finite number of seconds, not {prune_backoff}"
            )
        self.prune_backoff = prune_backoff
        self._members: dict[PeerKey, dict[str, _Member]] = {}  # peer -> topic -> member
        self._backoffs: dict[PeerKey, dict[str, _Backoff]] = {}  # peer -> topic -> backoff

    # Seniority

    def joined(self, topic: str, peer: PeerKey, now: float) -> None:
        """``peer`` entered ``topic``'s mesh at ``now``: its score starts from nothing."""
        self._members.setdefault(peer, {})[topic] = _Member(now)

    def delivered(self, topic: str, peer: PeerKey) -> None:
        """``peer`` was the first to bring us a (valid) message of ``topic``."""
        member = self._members.get(peer, {}).get(topic)
        if member is not None:
            member.delivered += 1

    def ranked(
        self, topic: str, peers: Iterable[PeerKey], now: float, rng: random.Random
    ) -> list[PeerKey]:
        """
        ``peers`` of ``topic``'s mesh, the one to keep first, the one to prune last.

        A peer's score is the seconds it has been in the mesh, plus one for each
        message it delivered to us first there, at most :data:`FIRST_DELIVERY_CAP`
        (GossipSub's time in mesh and capped first deliveries, without weights). So the
        newest peers are pruned first, a relay that brings messages first earns up to a
        minute of seniority, and connections made to take the mesh can't push out a
        peer that has been in it for over a minute. Equal scores are in random order.
        """
        members = self._members.get
        order = list(peers)
        rng.shuffle(order)

        def score(peer: PeerKey) -> float:
            member = (members(peer) or {}).get(topic)
            if member is None:
                return 0.0
            return now - member.joined + min(member.delivered, FIRST_DELIVERY_CAP)

        return sorted(order, key=score, reverse=True)

    # Backoffs

    def pruned(self, topic: str, peer: PeerKey, now: float) -> None:
        """We pruned ``peer`` from ``topic`` (or refused its graft), or it pruned us:
        a backoff starts afresh."""
        if self.prune_backoff > 0:
            self._backoffs.setdefault(peer, {})[topic] = _Backoff(now + self.prune_backoff)

    def may_graft(self, topic: str, peer: PeerKey, now: float) -> bool:
        """Whether we may graft ``peer`` on ``topic``: its backoff, if any, is over with
        :data:`BACKOFF_SLACK` to spare."""
        backoff = self._backoffs.get(peer, {}).get(topic)
        return backoff is None or now >= backoff.until + BACKOFF_SLACK * self.prune_backoff

    def early_graft(self, topic: str, peer: PeerKey, now: float) -> int:
        """
        ``peer`` grafted ``topic``: 0 if not within a backoff, else how many early
        grafts it made in this backoff, this one included. An early graft starts the
        backoff again, as in GossipSub.
        """
        backoff = self._backoffs.get(peer, {}).get(topic)
        if backoff is None or now >= backoff.until:
            return 0
        backoff.until = now + self.prune_backoff
        backoff.early += 1
        return backoff.early

    # Forgetting

    def expire(self, now: float) -> None:
        """Drop the backoffs over (ours included, slack and all)."""
        end = BACKOFF_SLACK * self.prune_backoff
        for peer, backoffs in list(self._backoffs.items()):
            for topic, backoff in list(backoffs.items()):
                if now >= backoff.until + end:
                    del backoffs[topic]
            if not backoffs:
                del self._backoffs[peer]

    def forget_topic(self, topic: str) -> None:
        """We left ``topic``: its seniority goes (its backoffs stay, to be honoured)."""
        for members in self._members.values():
            members.pop(topic, None)

    def forget_peer(self, peer: PeerKey) -> None:
        """``peer``'s connection closed: everything about it goes."""
        self._members.pop(peer, None)
        self._backoffs.pop(peer, None)
