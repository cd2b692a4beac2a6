"""
Publish/subscribe by gossip, free of I/O (the node's shell is :mod:`trustp2p.node.gossip`):

- :mod:`.message`: signed messages, their ids, and decoding them with every number
  bounded;
- :mod:`.router`: where each message goes (meshes, lazy announcements, the seen-cache),
  with :mod:`.control` (its talks, actions and counters), :mod:`.mesh` (mesh
  seniority and prune backoffs) and :mod:`.copies` (ids shed, or not sent on for their
  hops);
- :mod:`.streams`: each origin's messages delivered exactly once, in order, with gaps
  skipped after ``gap_timeout``;
- :mod:`.backlog`: shares of the delivery backlog, and whose messages are shed;
- :mod:`.checks`: the node's checks of new messages, pushed apart from those it asked for;
- :mod:`.catchup`: what to ask peers for after missing messages, in batches, and how to
  read their answers; :mod:`.origins`: the origins gone lately, whose gaps wait for them.

Every module takes its clocks from the caller and never awaits.

"""

from __future__ import annotations

from .backlog import OriginTurns, over_level, shed_level
from .budget import MAX_RETRY_AFTER, FairShare, PeerBudgets, RoundBudget, busy_answer, retry_after
from .catchup import (
    DEFAULT_ANSWER_BYTES,
    FETCH,
    FETCH_ALONE,
    HWM,
    MAX_FETCH_SEQS,
    MAX_FETCHES,
    MAX_GAP_RANGES,
    MAX_GAP_SEQS,
    MAX_HWM_ORIGINS,
    MAX_HWM_TOPICS,
    MESSAGE_OVERHEAD,
    CatchUp,
    Fetch,
    FetchRange,
    HeldView,
    answer_size_limit,
    decode_answer_bounds,
    decode_fetch_request,
    decode_hwm_answer,
    decode_hwm_request,
    fetch_answer,
    gap_fetch,
    hwm_answer,
    message_size_limit,
    order_fetches,
    payload_size,
    plan_fetches,
    wire_size,
)
from .checks import CheckShares
from .copies import SHED_FOR
from .hwm import HWM_STALE, HwmMarks, best_marks, fit_marks
from .message import (
    MAX_HOPS,
    MAX_SEQ,
    MAX_TIMESTAMP,
    MAX_TOPIC_LENGTH,
    GossipMessage,
    check_int,
    check_topic,
    message_id,
    payload_text,
    sign_message,
)
from .origins import ORIGIN_GRACE, OriginsGone
from .pacing import PublishPacing
from .router import (
    GOSSIP_EVENTS,
    GRAFT,
    IHAVE,
    IWANT,
    MAX_MESSAGE_ID_LENGTH,
    MAX_PEER_TOPICS,
    MAX_TOPICS_PER_TALK,
    PRUNE,
    SUBSCRIPTIONS,
    GossipRouter,
    GossipStats,
    PeerKey,
    RouterAction,
)
from .sources import MAX_CREDIT, MIN_CREDIT, RelaySources
from .streams import (
    CLOCK_SKEW,
    DEFAULT_MAX_HELD,
    DEFAULT_MAX_HELD_BYTES,
    HELD_MESSAGE_OVERHEAD,
    Deliver,
    DeliveryMarks,
    GapSkipped,
    ReleaseMarks,
    Stale,
    StreamEvent,
    Streams,
    split_stream_key,
    stream_key,
)

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_ANSWER_BYTES",
    "DEFAULT_MAX_HELD",
    "DEFAULT_MAX_HELD_BYTES",
    "FETCH",
    "FETCH_ALONE",
    "GOSSIP_EVENTS",
    "GRAFT",
    "HELD_MESSAGE_OVERHEAD",
    "HWM",
    "HWM_STALE",
    "IHAVE",
    "IWANT",
    "MAX_CREDIT",
    "MAX_FETCHES",
    "MAX_FETCH_SEQS",
    "MAX_GAP_RANGES",
    "MAX_GAP_SEQS",
    "MAX_HOPS",
    "MAX_HWM_ORIGINS",
    "MAX_HWM_TOPICS",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_PEER_TOPICS",
    "MAX_RETRY_AFTER",
    "MAX_SEQ",
    "MAX_TIMESTAMP",
    "MAX_TOPICS_PER_TALK",
    "MAX_TOPIC_LENGTH",
    "MESSAGE_OVERHEAD",
    "MIN_CREDIT",
    "ORIGIN_GRACE",
    "PRUNE",
    "SHED_FOR",
    "SUBSCRIPTIONS",
    "CatchUp",
    "CheckShares",
    "Deliver",
    "DeliveryMarks",
    "FairShare",
    "Fetch",
    "FetchRange",
    "GapSkipped",
    "GossipMessage",
    "GossipRouter",
    "GossipStats",
    "HeldView",
    "HwmMarks",
    "OriginTurns",
    "OriginsGone",
    "PeerBudgets",
    "PeerKey",
    "PublishPacing",
    "RelaySources",
    "ReleaseMarks",
    "RoundBudget",
    "RouterAction",
    "Stale",
    "StreamEvent",
    "Streams",
    "answer_size_limit",
    "best_marks",
    "busy_answer",
    "check_int",
    "check_topic",
    "decode_answer_bounds",
    "decode_fetch_request",
    "decode_hwm_answer",
    "decode_hwm_request",
    "fetch_answer",
    "fit_marks",
    "gap_fetch",
    "hwm_answer",
    "message_id",
    "message_size_limit",
    "order_fetches",
    "over_level",
    "payload_size",
    "payload_text",
    "plan_fetches",
    "retry_after",
    "shed_level",
    "sign_message",
    "split_stream_key",
    "stream_key",
    "wire_size",
]
