"""
What a node says about the gossip messages it drops unseen for their timestamp
(``Gossip.too_old``): the log line, with the numbers an operator needs.

"""

from __future__ import annotations

__all__ = ["too_old_line"]

from ..protocol.gossip import GossipMessage, Stale


def too_old_line(
    message: GossipMessage, why: Stale, now: float, forgotten_before: float, clock_skew: float
) -> tuple[str, tuple[object, ...]]:
    """
    The log line (``%``-style) and its arguments for ``message``, dropped because it is
    ``"expired"`` or ``"forgotten"`` (see :meth:`~trustp2p.protocol.gossip.Streams.stale`);
    ``now`` and ``forgotten_before`` are wall-clock seconds.
    """
    ts = message.timestamp / 1000
    where: tuple[object, ...] = (message.seq, message.origin, message.topic, now - ts)
    if why == "expired":
        return "! message %d of %s on %r dropped: timestamped %.0f s ago, past log_max_age", where
    text = (
        "! message %d of %s on %r dropped: timestamped %.0f s ago, %.0f s before the delivery"
        " marks this node forgot (over %.0f s: is the origin's clock behind?)"
    )
    return text, (*where, forgotten_before - ts, clock_skew)
