"""
Failures of the threads' handlers and hooks, of gossip validators and of subscribers: each is
counted (``trustp2p_handler_failures_total{kind,event}``) and logged at ERROR with its
traceback, within a log budget of its own handler's (10 lines a minute, the rest at
DEBUG and counted in a line at the end of the minute). A peer chooses how often a
handler runs: with no budget, one bug in a gossip handler logged 4,000 lines a second
on every node that ran it (tester39 F3); with one budget for every handler, the first
bug's lines hid a second, different one (tester39 F6); a hook that raised logged a
traceback for every connection, and wasn't counted.

The budgets are keyed by what the node registered (a thread's event, topic or hook, a
topic's validator or subscriber), never by what a peer sends: their number is bounded.

"""

from __future__ import annotations

__all__ = ["failed", "gossip_failed", "gossip_where"]

import logging
from typing import TYPE_CHECKING, Any

from ..identity import short_id

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..protocol.gossip import GossipMessage
    from .node import Node


def failed(
    node: Node,
    log: Any,
    kind: str,
    event: str,
    what: str,
    message: str,
    *args: object,
    exc_info: bool = True,
) -> None:
    """A handler failed: count it under ``(kind, event)``, and log ``message % args`` at
    ERROR on ``log`` within the budget of ``what`` (the handler, as its lines name it),
    with the traceback of the exception being handled if ``exc_info``."""
    node.metrics.handler_failed(kind, event)
    node.connections.inbound.log(
        log, logging.ERROR, what, message, *args, stacklevel=2, exc_info=exc_info
    )


def gossip_where(message: GossipMessage, socket: Socket | None) -> str:
    """Which message of its topic, for a log line: ``"message 17 of tpab12cd34 from
    PEER"`` (its seq and origin; no ``from``: the node's own, or caught up and its
    peer gone)."""
    where = f"message {message.seq} of {short_id(message.origin)}"
    return where if socket is None else f"{where} from {socket.peer}"


def gossip_failed(
    node: Node,
    logger: logging.Logger,
    kind: str,
    what: str,
    message: GossipMessage,
    socket: Socket | None,
) -> None:
    """``what`` (``"gossip handler of 'chat' in app.py"``, ``"validator of 'chat'"``...),
    of ``kind`` (``"gossip"``, ``"validator"``, ``"subscriber"``), failed on ``message``
    from ``socket``: see :func:`failed`; the line names the message, so that the bug
    can be found (tester39 F3)."""
    where = gossip_where(message, socket)
    failed(node, logger, kind, message.topic, what, "! %s failed on %s", what, where)
