"""
Shares of the delivery backlog: the messages that wait for a topic's validator or
handlers, and whose are dropped rather than their peer held (the node's queues are
:mod:`trustp2p.node.gossip_delivery`; this module only does the arithmetic).

Past the bound, a topic's share is the max-min fair level of the bound among the topics
(:func:`fair_level`): the level ``L`` where the topics' waiting bytes, each counted up to
``L``, add up to the bound. Within a topic over its share, each origin's share is an
even part of the topic's share among the origins that have messages waiting (not their
max-min level: that takes a pass over every origin, and up to 22,000 of them may wait,
at each message). A live message whose origin is over its share is *shed*: dropped
unseen, and fetched later by catch-up, rather than its peer held. A peer held stops
every other topic, request and ping it carries; a flood of one origin relayed by an
honest peer held that peer for as long as the topic took to drain (attacker43 F2:
another topic's messages came 15-20 s late, and the hub once dropped the victim for a
pong that waited).

"""

from __future__ import annotations

__all__ = ["fair_level", "over_level", "sheds"]

from collections.abc import Mapping


def over_level(sizes: Mapping[str, int], key: str, bound: int) -> bool:
    """Whether ``key`` holds more than the max-min fair level of ``bound``: the level
    ``L`` where ``sizes``, each counted up to ``L``, add up to ``bound``."""
    mine = sizes.get(key, 0)
    return sum(min(size, mine) for size in sizes.values()) > bound


def fair_level(sizes: Mapping[str, int], bound: int) -> int:
    """
    The max-min fair level of ``bound`` among ``sizes``.

    Returns:
        The level ``L`` where ``sizes``, each counted up to ``L``, add up to
        ``bound`` (rounded down); the largest size if they add up to no more.

    """
    left, count = bound, len(sizes)
    for size in sorted(sizes.values()):
        if size * count >= left:
            return left // count
        left -= size
        count -= 1
    return max(sizes.values(), default=0)


def sheds(
    waiting: int, topics: Mapping[str, int], topic: str, mine: int, origins: int, bound: int
) -> bool:
    """
    Whether a live message is shed (see the module) rather than its peer held.

    Args:
        waiting: Bytes waiting in all topics, the message counted.
        topics: Bytes waiting per topic, the message counted.
        topic: The message's topic.
        mine: Bytes of the message's origin waiting in ``topic``, the message counted.
        origins: Origins with messages waiting in ``topic``, the message's counted.
        bound: Bytes past which peers are held (``MAX_WAITING_BYTES``).

    Returns:
        True if more than ``bound`` waits, ``topic`` is over its share of it, and the
        origin over an even part of that share. A topic within its share sheds
        nothing (its peers are held only past twice the bound, every topic's), nor
        does an origin within its part: its peer is held as before. Of a topic over
        its share, the origin with the most waiting is always over its part.

    """
    if waiting <= bound:
        return False
    level = fair_level(topics, bound)
    return topics.get(topic, 0) > level and mine * origins > level
