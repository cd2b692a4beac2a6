"""
Gossip messages in and out of the message log: the log knows streams (topic and origin
in one key), the router knows messages. :func:`open_log` opens a node's log.
"""

from __future__ import annotations

__all__ = ["delivered", "from_logged", "open_log", "to_logged", "undelivered"]

import base64
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..protocol.gossip import DeliveryMarks, GossipMessage, split_stream_key, stream_key
from ..storage.msglog import LOG_FILE, LoggedMessage, MessageLog

if TYPE_CHECKING:
    from .node import Node

_ALL = 2**63 - 1  # past any seq

_RECENT_MAX = 1024
_RECENT_DATA_MAX = 4096  # characters: a node with small log limits pins at most 4 MiB
# The records made last, by message id (oldest first): see to_logged().
_recent: dict[str, LoggedMessage] = {}


def to_logged(message: GossipMessage) -> LoggedMessage:
    """
    A message as the log keeps it.

    The records of the last 1024 messages (of up to 4096 characters of data) are
    remembered by id, and a message with the same id, timestamp and signature gets the
    same record (it is frozen): the nodes of one process (a simulation) log one record
    of each message between them, not one each. The id stands for the topic, origin,
    seq and data; the origin for the key.
    """
    signature = base64.b64encode(message.signature).decode("ascii")
    logged = _recent.get(message.id)
    if (
        logged is not None
        and logged.signature == signature
        and logged.timestamp == message.timestamp
    ):
        return logged
    logged = LoggedMessage(
        topic=message.topic,
        origin=stream_key(message.topic, message.origin),
        seq=message.seq,
        timestamp=float(message.timestamp),
        data=message.data,
        # Interned: the nodes of one process keep one copy between them.
        key=sys.intern(base64.b64encode(message.key).decode("ascii")),
        signature=sys.intern(signature),
        id=message.id,
    )
    if len(message.data) <= _RECENT_DATA_MAX:
        if len(_recent) >= _RECENT_MAX:
            del _recent[next(iter(_recent))]
        _recent[message.id] = logged
    return logged


def from_logged(logged: LoggedMessage) -> GossipMessage:
    """A logged message as the router knows it (its ``body`` is read from its
    ``data`` when asked for)."""
    return GossipMessage(
        logged.topic,
        split_stream_key(logged.origin)[1],
        logged.seq,
        int(logged.timestamp),
        logged.data,
        base64.b64decode(logged.key),
        base64.b64decode(logged.signature),
        logged.id,
    )


def undelivered(log: MessageLog, topic: str, marks: DeliveryMarks) -> Iterator[GossipMessage]:
    """The messages of ``topic`` kept in ``log`` past the delivered ``marks``, in seq
    order per stream: what a node killed before their handlers ran must deliver."""
    return _kept_from(log, topic, lambda stream: marks.delivered(stream) + 1)


def delivered(log: MessageLog, topic: str, marks: DeliveryMarks) -> Iterator[GossipMessage]:
    """The messages of ``topic`` kept in ``log`` up to the delivered ``marks``, in seq
    order per stream."""
    return _kept_from(log, topic, lambda stream: 1, marks.delivered)


def _kept_from(
    log: MessageLog,
    topic: str,
    start: Callable[[str], int],
    end: Callable[[str], int] = lambda stream: _ALL,
) -> Iterator[GossipMessage]:
    for stream in log.high_water(topic):
        first, last = start(stream), end(stream)
        while first <= last:
            batch = log.range(stream, first, last)
            yield from (from_logged(logged) for logged in batch if logged.topic == topic)
            if not batch:
                break
            first = batch[-1].seq + 1


async def open_log(node: Node, wall_clock: Callable[[], float]) -> MessageLog:
    """Open ``node``'s message log, with its options: in its data directory, or in
    memory (its ``store_shelf``, or nowhere) without a peer store."""
    options = node.options
    data_dir = node.data_dir if options.peer_store and options.store_shelf is None else None
    path = None if data_dir is None else data_dir / LOG_FILE
    return await MessageLog.open(
        path,
        max_messages=options.log_max_messages,
        max_age=options.log_max_age,
        max_bytes=options.log_max_bytes,
        clock=wall_clock,
        shelf=options.store_shelf,
    )
