"""
What catch-up may fetch from a peer, in bytes of messages as they go on the wire
(:func:`~.catchup.wire_size`, or the payload's in memory if more): a round (the fetches
planned from one peer's marks) at most a :class:`RoundBudget`; the gaps a peer's live
messages reveal, at most a budget a peer renewed every interval (:class:`PeerBudgets`).
And what a node takes or gives all peers together, shared fairly among them
(:class:`FairShare`): the live messages it checks, the catch-up answers it serves. No
I/O.

"""

from __future__ import annotations

__all__ = [
    "MAX_RETRY_AFTER",
    "FairShare",
    "PeerBudgets",
    "RoundBudget",
    "busy_answer",
    "retry_after",
]

import re
from collections.abc import Hashable, Iterable
from typing import Any

from .catchup import wire_size
from .message import GossipMessage


class RoundBudget:
    """
    What a round of fetches may still take, in bytes of messages (:meth:`spend`);
    then the round ends, and the rest waits for a later one. The node gives a round its
    ``log_max_bytes`` (a log of small messages takes a few): a peer claiming seq 2**40
    and serving valid batches held a round for good, no periodic round came after it,
    and the node downloaded 7.2 GB in 130 s (found by a tester).

    Args:
        size: The bytes it begins with.
        began: When it began (for :class:`PeerBudgets`).

    """

    __slots__ = ("began", "left", "size")

    def __init__(self, size: int, began: float = 0.0) -> None:
        if size < 1:
            raise ValueError(f"a round's budget must be at least 1 byte, not {size}")
        self.size = self.left = size  # the bytes it began with, and those left
        self.began = began

    @property
    def spent(self) -> bool:
        return self.left <= 0

    def spend(self, messages: Iterable[GossipMessage]) -> None:
        """Count the messages a batch brought: each its bytes on the wire, or its
        payload's in memory (:func:`~trustp2p.protocol.jsontext.text_size`, the unit of
        ``log_max_bytes``) if more (review50 R7: for text of mixed widths a round
        fetched up to 4 times what the log keeps, which dropped the rest at once)."""
        self.left -= sum(max(wire_size(m), m.data_size) for m in messages)


class PeerBudgets:
    """
    Per peer, what the gaps it reveals may make the node fetch from it: ``size`` bytes
    every ``interval`` seconds. A peer that sent one message of a new origin far ahead,
    each second, and served the gap's 1,000 messages, made a node download 1.68 GB in
    60 s from two connections (found by a tester).
    """

    __slots__ = ("_budgets", "interval", "size")

    def __init__(self, size: int, interval: float) -> None:
        self.size = size
        self.interval = interval
        self._budgets: dict[Hashable, RoundBudget] = {}

    def get(self, peer: Hashable, now: float) -> RoundBudget:
        """``peer``'s budget at ``now``: a new one once ``interval`` passed."""
        budget = self._budgets.get(peer)
        if budget is None or now - budget.began >= self.interval:
            budget = self._budgets[peer] = RoundBudget(self.size, began=now)
        return budget

    def forget(self, peer: Hashable) -> None:
        """``peer`` left."""
        self._budgets.pop(peer, None)


class FairShare:
    """
    A node-wide budget of ``rate`` a second (live messages, or bytes of catch-up
    answers), shared max-min fairly among the peers that spend it: in each ``window``
    seconds, once the node has spent ``rate * window``, a peer that took more than an
    even share of that (split among the peers that spent any in the window) waits for
    the next window; a peer within its share doesn't, until the node has spent twice
    that, when every peer does (unless ``capped`` is false: then a peer within its
    share never waits). Each peer's own budget (``gossip_rate``, ``request_rate``)
    bounds it apart from this.

    Found by an attacker: the per-peer budget alone let two throwaway identities send
    2,000 one-message origins a second, past what a node checks (about 3,000 a second
    here); every subscriber checked and delivered them all too, and an honest origin's
    5 messages a second waited behind them for up to 8 s.
    """

    __slots__ = ("_counts", "_ends", "_group_of", "_groups", "_members", "_total", "capped",
                 "rate", "window")  # fmt: skip

    def __init__(self, rate: float, window: float = 1.0, *, capped: bool = True) -> None:
        if not rate > 0 or not window > 0:
            raise ValueError(f"rate and window must be positive, not {rate}, {window}")
        self.rate = rate
        self.window = window
        self.capped = capped
        self._counts: dict[Hashable, float] = {}  # per peer, spent this window
        self._groups: dict[Hashable, float] = {}  # per group, spent this window
        self._group_of: dict[Hashable, Hashable] = {}  # peer -> its group
        self._members: dict[Hashable, int] = {}  # group -> peers that spent
        self._total = 0.0
        self._ends = float("-inf")  # when this window ends

    def spend(
        self, peer: Hashable, now: float, amount: float = 1.0, group: Hashable | None = None
    ) -> float:
        """
        ``peer`` spent ``amount`` more at ``now`` (one message, or an answer's bytes):
        the seconds it should wait before it spends more (0: none). Peers of one
        ``group`` (an address: identities are free, addresses less so) share one
        group's share, evenly; without one, a peer is a group of its own.
        """
        if now >= self._ends:
            ended = self._ends
            # Windows follow each other, or one begins now after a quiet spell.
            self._ends = ended + self.window if now < ended + self.window else now + self.window
            for spent in (self._counts, self._groups, self._group_of, self._members):
                spent.clear()
            self._total = 0.0
        if peer not in self._counts:
            group = peer if group is None else ("group", group)
            self._group_of[peer] = group
            self._members[group] = self._members.get(group, 0) + 1
        self._counts[peer] = self._counts.get(peer, 0.0) + amount
        group = self._group_of[peer]
        self._groups[group] = self._groups.get(group, 0.0) + amount
        self._total += amount
        return self.wait(peer, now, group)

    def wait(self, peer: Hashable, now: float, group: Hashable | None = None) -> float:
        """The seconds ``peer`` (of ``group``, as :meth:`spend` is told) should wait at
        ``now`` before it spends more (0: none), spending nothing."""
        allowed = self.rate * self.window
        if now >= self._ends or self._total <= allowed:
            return 0.0
        # Within its share, but never past twice the rate: found in review, identities
        # each sending less than an even share took a node to about twice the rate.
        if peer in self._group_of:
            group = self._group_of[peer]
        else:  # (review36: a new id of an address over its share was answered)
            group = peer if group is None else ("group", group)
        share = allowed / max(len(self._groups), 1)  # the group's
        count = self._counts.get(peer, 0.0)
        within = (
            self._groups.get(group, 0.0) <= share and count * self._members.get(group, 1) <= share
        )
        if within and (not self.capped or self._total <= 2 * allowed):
            return 0.0
        return self._ends - now


MAX_RETRY_AFTER = 2.0
"""The longest a busy answer makes an asker wait before it asks again (a node's share
windows last a second)."""

_BUSY = re.compile(r"busy: .*; ask again in ([0-9]+(?:\.[0-9]+)?) s")


def busy_answer(wait: float) -> dict[str, Any]:
    """The answer to a catch-up request from an asker past its share of the node's
    ``catchup_serve_rate``: an error answer (``{"error": text}`` and nothing else, as
    every peer reads one) whose text says when to ask again."""
    return {"error": f"busy: over its share of catch-up answers; ask again in {wait:.1f} s"}


def retry_after(answer: dict[str, Any]) -> float | None:
    """The seconds a busy answer (:func:`busy_answer`) asks us to wait before asking
    again, at most :data:`MAX_RETRY_AFTER`; None for any other answer."""
    error = answer.get("error")
    match = _BUSY.fullmatch(error) if isinstance(error, str) else None
    return None if match is None else min(float(match[1]), MAX_RETRY_AFTER)
