"""
Gossip messages in and out of the message log: the log knows streams (topic and origin
in one key), the router knows messages. :func:`open_log` opens a node's log.
"""

from __future__ import annotations

__all__ = [
    "ANCHOR",
    "OWN_SOURCE",
    "Attribution",
    "anchor_of",
    "carriers_of",
    "claim",
    "delivered",
    "from_logged",
    "log_source",
    "open_log",
    "to_logged",
    "undelivered",
    "witness_of",
]

import base64
import operator
import secrets
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from ..protocol.gossip import DeliveryMarks, GossipMessage, split_stream_key, stream_key
from ..protocol.gossip.via import relay_token, sub_sources
from ..protocol.hosts import netgroup
from ..protocol.shared_text import share
from ..storage.msglog import (
    LOADED,
    LOG_FILE,
    SOURCE_SEPARATOR,
    SUB_LEVELS,
    LoggedMessage,
    MessageLog,
)

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from .node import Node

_ALL = 2**63 - 1  # past any seq

OWN_SOURCE = "(own)"
"""The source the log counts the node's own messages for (see :func:`log_source`)."""


def log_source(node: Node, socket: Socket | None) -> str:
    """
    The source the message log counts a message delivered by ``socket`` for
    (:meth:`~trustp2p.storage.msglog.MessageLog.add` shares a topic among sources):
    its peer's address group, as the node-wide budgets share (a local peer's, unless
    ``limit_loopback``: its own); None (a caller without the peer) the messages read
    from the disk's.
    """
    if socket is None:
        return LOADED
    connections = node.connections
    return connections.share_group(socket) or connections.budget_key(socket)


ANCHOR = "(anchor)"
"""The key of the anchor's own word on a stream's start (see :func:`anchor_of`)."""


def anchor_of(peers: Iterable[Socket]) -> Socket | None:
    """
    Of ``peers`` (in the order they connected), the one asked whatever the draw: the
    longest connected that we dialled (a server's oldest client may be anyone's), else
    the longest connected. Peers arriving later can't displace it: found by attackers
    (a43 F1, a44 F1-F2), identities that served nothing took the catch-up rounds, a
    topic's history and a stream's start from the hub, asked at random.
    """
    first = None
    for socket in peers:
        if not socket.inbound:
            return socket
        if first is None:
            first = socket
    return first


def witness_of(node: Node, socket: Socket) -> str:
    """Whose word a peer's answer about a stream's start is: its network group's (an
    IPv4 /16, an IPv6 /32; a44 F1: three addresses of one /24 were three witnesses), a
    local peer's own (:func:`log_source`)."""
    if node.connections.share_group(socket) is None:  # (local)
        return log_source(node, socket)
    return netgroup(socket.host)


def carriers_of(
    node: Node, peer_topics: Callable[[int], Collection[str]], topic: str
) -> dict[Socket, str]:
    """The peers that carry ``topic``, the longest connected first, and whose word each
    answer is (:func:`witness_of`)."""
    return {s: witness_of(node, s) for s in node.sockets if topic in peer_topics(s.id)}


_TOKENS_MAX = 4096  # sources whose token an Attribution remembers


class Attribution:
    """
    Whose a message is, for a node's log and for the next hop (``via``, see
    :mod:`trustp2p.protocol.gossip.via`): a message delivered by a connection counts
    for the connection's source (:func:`log_source`), then for the sub-sources the
    ``via`` it came with names (up to :data:`~trustp2p.storage.msglog.SUB_LEVELS`);
    the node sends it on with a ``via`` of its own: its token for that source, then
    those sub-sources.

    Found by an attacker (attacker36 F2): with the connection's source alone, behind
    an honest hub every message had the hub's, and 200 throwaway origins injected at
    the hub left an honest origin 49 of its 450 messages at the next node.
    """

    __slots__ = ("_node", "_secret", "_tokens")

    def __init__(self, node: Node) -> None:
        self._node = node
        self._secret = secrets.token_bytes(16)  # (a run's: tokens name no address)
        self._tokens: dict[str, str] = {}  # source -> its token

    def passed_on(
        self, socket: Socket | None, message: GossipMessage, *, live: bool
    ) -> GossipMessage:
        """``message``, delivered by ``socket`` (``live``: pushed or sent on ``iwant``;
        else a catch-up answer's, whose ``via`` is not read), with the ``via`` this node
        sends it on with and counts it by (:meth:`source`); without ``socket`` (the
        node's own, or its log's), none."""
        if socket is None:
            return message.with_via("") if message.via else message
        top = log_source(self._node, socket)
        token = self._tokens.get(top)
        if token is None:
            if len(self._tokens) >= _TOKENS_MAX:
                self._tokens.clear()
            token = self._tokens[top] = relay_token(self._secret, top)
        subs = sub_sources(message.via, SUB_LEVELS) if live else []
        via = ".".join([token, *subs])
        return message if via == message.via else message.with_via(via)

    def source(self, socket: Socket | None, message: GossipMessage) -> str:
        """The source the log counts ``message`` delivered by ``socket`` for (as
        :meth:`passed_on` left it): the socket's, then the sub-sources it came with."""
        top = log_source(self._node, socket)
        if socket is None or not message.via:
            return top
        # Shared: the log keeps it for each origin new to a topic, and the origins
        # that come by one path (a hub's many) share it.
        return share(SOURCE_SEPARATOR.join([top, *sub_sources(message.via, SUB_LEVELS + 1)[1:]]))


def claim(node: Node, log: MessageLog, socket: Socket, topic: str) -> None:
    """``socket``'s peer, an origin, delivered one of its own messages on ``topic``:
    its messages there count for the socket's source from now on
    (:meth:`~trustp2p.storage.msglog.MessageLog.claim`). Its peer id is authenticated
    (a secure connection's)."""
    assert socket.peer_id is not None  # (the caller compared it with the origin)
    log.claim(stream_key(topic, socket.peer_id), topic, log_source(node, socket))


_RECENT_MAX = 1024
_RECENT_DATA_MAX = 4096  # bytes (text_size): a node with small log limits pins at most 4 MiB
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
        # Shared: the nodes of one process keep one copy between them.
        key=share(base64.b64encode(message.key).decode("ascii")),
        signature=share(signature),
        id=message.id,
    )
    if message.data_size <= _RECENT_DATA_MAX:
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


def undelivered(log: MessageLog, topic: str, marks: DeliveryMarks) -> list[GossipMessage]:
    """The messages of ``topic`` kept in ``log`` past the delivered ``marks``, in turn
    (see :func:`delivered`): what a node killed before their handlers ran must deliver.

    O(streams) when nothing is past the marks, the usual case at a ``subscribe()`` on a
    running node (review31: every subscribe scanned the topic's whole log, 1.3 ms on
    10,000 messages)."""
    if all(
        (log.last_seq(stream) or 0) <= marks.delivered(stream) for stream in log.high_water(topic)
    ):
        return []
    return _in_turn(log, topic, lambda stream: (marks.delivered(stream) + 1, _ALL))


def delivered(log: MessageLog, topic: str, marks: DeliveryMarks) -> list[GossipMessage]:
    """
    The messages of ``topic`` kept in ``log`` up to the delivered ``marks``, in the
    order this node delivered them: in ``seq`` order per stream, and across streams in
    the order they were logged, each once the ones before it of its stream were (a
    message held behind a gap comes after the one that filled it). Only a gap given up
    makes it differ (skipped after ``gap_timeout``, or filled by a message that was not
    logged: refused by the validator, or too large): the messages held behind it come
    where they were logged, not where they were delivered.

    Found by a new user: listed stream by stream, a key/value store rebuilt from them
    took an older value of a key set in turn through two nodes.
    """
    return _in_turn(log, topic, lambda stream: (1, marks.delivered(stream)))


def _in_turn(
    log: MessageLog, topic: str, wanted: Callable[[str], tuple[int, int]]
) -> list[GossipMessage]:
    """The messages of ``topic`` whose seq is within ``wanted(stream)``, in turn: in
    the order logged, unless a stream's were logged out of seq order (then see
    :func:`_reordered`). One pass, and a sort only then."""
    chosen: list[tuple[int, LoggedMessage]] = []
    spans: dict[str, tuple[int, int]] = {}
    last: dict[str, int] = {}
    in_seq_order = True
    for position, logged in log.logged_order(topic):
        stream, seq = logged.origin, logged.seq
        span = spans.get(stream)
        if span is None:
            span = spans[stream] = wanted(stream)
        if span[0] <= seq <= span[1]:
            chosen.append((position, logged))
            in_seq_order = in_seq_order and seq > last.get(stream, 0)
            last[stream] = seq
    if not in_seq_order:
        chosen = _reordered(chosen)
    return [from_logged(logged) for _, logged in chosen]


def _reordered(chosen: list[tuple[int, LoggedMessage]]) -> list[tuple[int, LoggedMessage]]:
    """``chosen`` (in the order logged) in seq order per stream, each message placed at
    the highest position among its own and its stream's earlier ones: where the last
    of them was logged, when the node could deliver it."""
    runs: dict[str, list[tuple[int, int, LoggedMessage]]] = {}
    for position, logged in chosen:
        runs.setdefault(logged.origin, []).append((logged.seq, position, logged))
    turns: list[tuple[int, int, LoggedMessage]] = []
    for run in runs.values():
        run.sort(key=_first)
        turn = 0
        for seq, position, logged in run:
            turn = max(turn, position)
            turns.append((turn, seq, logged))
    # Streams never share a turn (it is one of the stream's positions): the seq orders
    # the messages of a stream that share one.
    turns.sort(key=_first_two)
    return [(turn, logged) for turn, _, logged in turns]


_first = operator.itemgetter(0)
_first_two = operator.itemgetter(0, 1)


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
