"""
Two processes with one peer id: a restart, or an identity copied to a second node.

A secure node makes its Noise static key once per start (:class:`~trustp2p.security.
noise.NoiseKey`), so two connections of one peer id under two static keys come from
two processes. One after the other is a restart (the first connection may linger until
the heartbeat finds it dead); both alive is two nodes sharing an identity, most often a
data directory copied to set up a second node. The one-connection-per-peer rule then
drops one of them, over and over, and each node sees its link swap between the two.

Proof that both are alive: after the second process's connection met the first's, the
first connects again (it can't be a replay: the handshake proves the static key's
private half, which only the first process holds), or its open connection is heard from
more than :data:`GRACE` seconds later (a dead process's connection says nothing more),
or answers a ping sent once the second was met.
Sans-I/O; the node says what :meth:`IdentityCopies.met` returns.

"""

from __future__ import annotations

__all__ = ["COPY_REASON", "GRACE", "IdentityCopies", "Meeting"]

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

COPY_REASON = "duplicate connection: that peer id is connected from another process"
"""The close reason of the connection dropped when the two come from two processes."""

GRACE = 1.0
"""Seconds after the second process is met within which what arrives on the first's
connection may have been on its way before: no proof the first is alive."""


class Meeting(enum.Enum):
    """What a connection from a second process of a peer id tells."""

    SECOND = "second"
    """First seen: a restart whose old connection lingers, or a copied identity."""
    COPIED = "copied"
    """Both processes are alive: two nodes share the identity. Say it at WARNING."""
    REPEATED = "repeated"
    """Either of the above again, already said within the window."""


@dataclass(slots=True)
class _Pair:
    older: bytes  # the static key of the process met first
    newer: bytes
    first: float  # when the pair first met
    since: float  # when the pair last met
    copied: bool = False
    said: float | None = None  # when COPIED was last returned


class IdentityCopies:
    """
    The processes met per peer id, to tell a restart from a copied identity.

    Args:
        clock: Seconds, monotonic.
        window: Seconds a meeting is remembered, and between two warnings about one
            peer id.
        max_peers: Peer ids remembered; the oldest meeting is let go first.

    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        window: float = 600.0,
        max_peers: int = 1024,
    ) -> None:
        self._clock = clock
        self._window = window
        self._max_peers = max_peers
        self._pairs: dict[str, _Pair] = {}

    def met(
        self,
        peer_id: str,
        existing: bytes,
        new: bytes,
        existing_heard: float,
        existing_answered: float | None = None,
    ) -> Meeting | None:
        """
        A connection of ``peer_id`` under static key ``new`` while one under
        ``existing``, last heard from at ``existing_heard`` (the clock's time), is
        open; ``existing_answered``: when the last ping it answered was sent, if any.
        None when the keys are one (one process: two dials that crossed, or a redial
        before the old connection closed).
        """
        if existing == new:
            return None
        now = self._clock()
        pair = self._pairs.pop(peer_id, None)  # (put back last: the newest meeting)
        if pair is not None and now - pair.since > self._window:
            pair = None
        if pair is None or {pair.older, pair.newer} != {existing, new}:
            pair = _Pair(older=existing, newer=new, first=now, since=now)
            meeting = Meeting.SECOND
        else:
            # The process met first connects again while the second's is open, or
            # its connection still talks: both are alive.
            pair.copied = (
                pair.copied
                or (pair.older == new and pair.newer == existing)
                or (pair.older == existing and existing_heard > pair.first + GRACE)
                or (
                    pair.older == existing
                    and existing_answered is not None
                    and existing_answered >= pair.first
                )
            )
            pair.since = now
            meeting = Meeting.REPEATED
            if pair.copied and (pair.said is None or now - pair.said > self._window):
                pair.said = now
                meeting = Meeting.COPIED
        self._pairs[peer_id] = pair
        if len(self._pairs) > self._max_peers:
            del self._pairs[next(iter(self._pairs))]
        return meeting

    def proven(self, peer_id: str) -> bool:
        """Whether two processes of ``peer_id`` were proven alive at once, within the
        window."""
        pair = self._pairs.get(peer_id)
        return pair is not None and pair.copied and self._clock() - pair.since <= self._window
