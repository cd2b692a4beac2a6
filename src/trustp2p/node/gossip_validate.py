"""
What runs on each gossip message before and at its delivery: a topic's validator and
its verdict (:class:`Validation`), then the threads' handlers and the subscribers
(:func:`call_handlers`). :class:`~trustp2p.node.gossip.Gossip` calls them one message
of a topic at a time, in order, and carries out the verdicts.

"""

from __future__ import annotations

__all__ = [
    "GossipHandler",
    "Validation",
    "Validator",
    "blamed_for",
    "call_handlers",
    "judge",
    "rejected",
]

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NoReturn

from ..drivers.base import Socket
from ..protocol.gossip import GossipMessage
from ..protocol.package import PackageType
from .dispatch import cancelled
from .failures import gossip_failed, gossip_where
from .gossip_delivery import stopping_here, turn_here

if TYPE_CHECKING:
    from .node import Node

# The gossip service's logger: these records keep the name they had in gossip.py.
logger = logging.getLogger("trustp2p.node.gossip")


class Validation(enum.Enum):
    """A validator's verdict on a message."""

    ACCEPT = "accept"  # deliver and forward
    IGNORE = "ignore"  # drop it quietly
    REJECT = "reject"  # drop it; count it against the peer that sent it (blamed_for)


Validator = Callable[[GossipMessage], "Validation | Awaitable[Validation]"]
GossipHandler = Callable[[GossipMessage], "Awaitable[None] | None"]


def blamed_for(socket: Socket, message: GossipMessage) -> bool:
    """Whether the peer on ``socket`` answers for ``message``, which a validator
    rejected: if it is the message's origin (authenticated as such), or if it dialled
    us. A peer this node dialled may be a hub that doesn't run the topic's rules (a
    hub of ``relay_topics`` passes on whatever its clients publish: found by an
    attacker, any client of a hub had the hub blocked for an hour by every client that
    rejected what it sent through it); one that dialled us can't claim that, or it
    would send junk signed by a fresh key each time and never be blamed (review33)."""
    return socket.inbound or (socket.peer_id is not None and socket.peer_id == message.origin)


def rejected(node: Node, socket: Socket, message: GossipMessage) -> None:
    """``message`` from ``socket`` was rejected by its validator: held against the
    peer if :func:`blamed_for`, else said (budgeted), naming its origin."""
    if blamed_for(socket, message):
        node.penalize(socket, f"gossip message rejected by the validator of {message.topic!r}")
        return
    said = "[%s] ! message %d of %s on %r rejected by its validator: relayed by this peer,"
    said += " which we dialled: not held against it"
    where = (socket.peer, message.seq, message.origin, message.topic)
    node.connections.inbound.log(logger, logging.WARNING, "rejected", said, *where)


async def judge(
    node: Node, validator: Validator | None, message: GossipMessage, socket: Socket | None
) -> Validation:
    """The verdict of ``validator`` (None: accepted) on ``message`` from ``socket``; a
    validator that fails, or returns something else than a :class:`Validation`, ignores
    it (counted, and logged within its budget: see :mod:`.failures`). One left running
    past the stop (:meth:`~.gossip_delivery.TopicQueues.abandon`): its verdict is
    dropped."""
    try:
        verdict = validator(message) if validator is not None else Validation.ACCEPT
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if type(verdict) is not Validation:  # (True, None...): ignored, as a failure
            raise TypeError(f"returned {verdict!r}, not a Validation")
    except Exception:
        what = f"validator of {message.topic!r}"
        gossip_failed(node, logger, "validator", what, message, socket)
        verdict = Validation.IGNORE
    if (turn := turn_here()) is not None and turn.left:
        _left_ended(f"validator of {message.topic!r}", message, socket)
    return verdict


async def call_handlers(
    node: Node,
    subscribers: Mapping[str, Iterable[GossipHandler]],
    message: GossipMessage,
    socket: Socket | None,
) -> int:
    """Deliver ``message``: to the threads' handlers of its topic on ``node``, then to
    the topic's ``subscribers`` as they are once those ran (a handler may subscribe or
    unsubscribe: review30; one subscribed by a subscriber gets the next message); each
    failure is counted and logged (within its budget: see :mod:`.failures`), and the
    others still run. Returns how many were called."""
    topic = message.topic
    called = 0
    for thread, handler in node.handlers.get(PackageType.GOSSIP, topic):
        what = f"gossip handler of {topic!r} in {thread.path or type(thread).__name__}"
        await _call(node, "gossip", what, message, socket, handler, socket, message)
        called += 1
    for callback in tuple(subscribers.get(topic, ())):
        what = f"gossip subscriber of {topic!r}"
        await _call(node, "subscriber", what, message, socket, callback, message)
        called += 1
    return called


async def _call(
    node: Node,
    kind: str,
    what: str,
    message: GossipMessage,
    socket: Socket | None,
    function: Callable[..., object],
    *args: object,
) -> None:
    """Call ``function(*args)``, sync or async, on ``message``; what it raises is its
    failure. Cancelled (the node stopped, and it ran past ``close_timeout``): said,
    since its message is delivered again after a restart (its mark wasn't moved), but
    not for a handler that stopped its node (its message counted as delivered), nor
    for one left running past the stop (see :func:`_left_ended`)."""
    if (turn := turn_here()) is not None:
        turn.what = what  # (named if it is left running past the stop)
    try:
        result = function(*args)
        if inspect.isawaitable(result):
            await result
    except (Exception, asyncio.CancelledError) as exc:
        if cancelled(exc) and turn is not None and turn.left:
            _left_ended(what, message, socket, exc)
        if cancelled(exc) and stopping_here():
            logger.info(  # (review60: the handler running then, not always the stopper)
                "x %s cancelled: the node was stopped from the delivery of %s, which counts"
                " as delivered",
                what,
                gossip_where(message, socket),
            )
            raise
        if cancelled(exc):
            logger.warning(
                "x %s cancelled by the stop, on %s: it gets the message again after a restart",
                what,
                gossip_where(message, socket),
            )
            raise
        gossip_failed(node, logger, kind, what, message, socket)
    if turn is not None and turn.left:
        if turn.keep is not None:  # (returned: its message counts as delivered)
            turn.keep()
        _left_ended(what, message, socket)


def _left_ended(
    what: str, message: GossipMessage, socket: Socket | None, exc: BaseException | None = None
) -> NoReturn:
    """
    The validator or handler ``what`` on ``message``, left running past the stop (its
    turn's :attr:`~.gossip_delivery.Turn.left`), ended: said at INFO, and
    :exc:`asyncio.CancelledError` raised (``exc``, the one it ended with, if any), so
    that nothing of its turn goes on in a node that stopped: no next handler, no
    verdict carried out (review63 F2: its message, delivered, then went on its way).
    """
    how = "ended" if exc is None else "ended cancelled"
    logger.info("x %s, left running at the stop, %s, on %s", what, how,
                gossip_where(message, socket))  # fmt: skip
    if exc is not None:
        raise exc
    raise asyncio.CancelledError
