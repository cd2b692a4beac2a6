"""
What the router and the node exchange besides messages: the control talks' names and the
checks of what a peer sends in them, the actions the router asks of the node, and the
router's counters. No I/O.

"""

from __future__ import annotations

__all__ = [
    "GOSSIP_EVENTS",
    "IHAVE",
    "IWANT",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_PEER_TOPICS",
    "GossipStats",
    "PeerKey",
    "RouterAction",
    "check_ids",
    "check_own_topics",
    "check_subscriptions",
    "check_topics",
]

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ...exceptions import GossipError
from .batch import GRAFT, MAX_TOPICS_PER_TALK, PRUNE, SUBSCRIPTIONS
from .message import GossipMessage, check_own_topic, check_topic

MAX_PEER_TOPICS = 1000
"""Most topics a peer may subscribe to, all talks together: past it, a subscription is
a protocol error, so that a peer can't grow our memory without bound (at most about
0.4 MB a peer with the longest topics). A node subscribes to this many topics at most
itself."""

PeerKey = Hashable
"""How the router names a peer: the node uses the connection id."""

# Control talks of the router (TALK packages); the first three are in .batch.
IHAVE = "gossip/ihave"  # {"topic": topic, "ids": [id]}
IWANT = "gossip/iwant"  # {"ids": [id]}
GOSSIP_EVENTS = (SUBSCRIPTIONS, GRAFT, PRUNE, IHAVE, IWANT)
"""The events of the router's control talks, in this order."""

MAX_MESSAGE_ID_LENGTH = 64
"""Longest message id a peer may send in ``ihave`` or ``iwant``, in characters (ours
have 22)."""


@dataclass(slots=True)
class GossipStats:
    """Counters of one router."""

    published: int = 0
    received: int = 0  # messages received, new or not
    new: int = 0  # first receipts
    duplicates: int = 0  # receipts of a message already seen
    forwarded: int = 0  # copies sent on, eagerly
    invalid: int = 0  # forged, altered or malformed
    oversized: int = 0  # valid, but too large for our catch-up answers: dropped
    hop_limited: int = 0  # not forwarded for the hop limit
    ihave_sent: int = 0
    iwant_sent: int = 0
    served: int = 0  # messages sent in answer to iwant
    ihave_ignored: int = 0  # ids announced and not asked for: the peer had max_asks open
    iwant_unanswered: int = 0  # asks timed out: the peer broke its promise (lazy.BROKEN_FOR)
    early_grafts: int = 0  # grafts within a prune backoff: refused, unanswered


@dataclass(frozen=True, slots=True)
class RouterAction:
    """What the node must do: send to a peer, or penalise one."""

    kind: Literal["talk", "message", "penalize"]
    peer: PeerKey
    event: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    message: GossipMessage | None = None


def check_topics(value: object) -> list[str]:
    """A talk's list of topics, checked.

    Raises:
        GossipError: If it isn't a list of at most :data:`MAX_TOPICS_PER_TALK` topics.

    """
    if not isinstance(value, list) or len(value) > MAX_TOPICS_PER_TALK:
        raise GossipError(f"topics must be a list of at most {MAX_TOPICS_PER_TALK} strings")
    for topic in value:
        check_topic(topic)
    return value


def check_own_topics(topics: Sequence[object], where: str) -> None:
    """Topics a node is told to carry (an option, ``where``): each one a topic it may
    subscribe to, at most :data:`MAX_PEER_TOPICS` of them.

    Raises:
        ValueError: If one isn't, naming ``where`` and the topic.

    """
    for topic in topics:
        try:
            check_own_topic(topic)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}, not {topic!r:.80}") from None
    if len(set(topics)) > MAX_PEER_TOPICS:
        raise ValueError(f"{where}: a node carries {MAX_PEER_TOPICS} topics at most")


def check_ids(value: object, limit: int) -> list[str]:
    """A talk's list of message ids, checked.

    Raises:
        GossipError: If it isn't a list of at most ``limit`` ids of at most
            :data:`MAX_MESSAGE_ID_LENGTH` characters.

    """
    if not isinstance(value, list) or len(value) > limit:
        raise GossipError(f"ids must be a list of at most {limit} strings")
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_MESSAGE_ID_LENGTH:
            raise GossipError("invalid message id")
    return value


def check_subscriptions(body: dict[str, Any], topics: set[str]) -> tuple[list[str], list[str]]:
    """A SUBSCRIPTIONS talk's topics subscribed and unsubscribed, checked against the
    peer's ``topics`` so far.

    Raises:
        GossipError: If a list is malformed, a topic is in both, or the peer would be
            past :data:`MAX_PEER_TOPICS`.

    """
    subscribe = check_topics(body.get("subscribe", []))
    unsubscribe = check_topics(body.get("unsubscribe", []))
    if set(subscribe) & set(unsubscribe):
        raise GossipError("a topic both subscribed and unsubscribed")
    new = len(set(subscribe) - topics)  # a topic subscribed again counts once
    if len(topics) + new - len(topics.intersection(unsubscribe)) > MAX_PEER_TOPICS:
        raise GossipError(f"{len(topics)} + {new} subscriptions exceed {MAX_PEER_TOPICS}")
    return subscribe, unsubscribe
