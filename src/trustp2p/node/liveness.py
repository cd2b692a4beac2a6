"""
The node's heartbeat round: it carries out the liveness rules of
:mod:`trustp2p.protocol.liveness` on every connection, on both sides, whatever threads
run.

Every ``heartbeat_interval`` seconds plus up to ``heartbeat_jitter``, each connection
that may have something to do (a ping due or outstanding: ``Liveness.next_check``) is
asked for its verdict: a ping is sent, or a peer that left its ping
unanswered is dropped at once (the connection is aborted: a dead link can't complete a
closing handshake, and aborting fails or reroutes its pending requests right away).

A connection in doubt is probed (:meth:`Heartbeat.probe`): pinged at once and checked
again when its probe time runs out, without waiting for the next round.

"""

from __future__ import annotations

__all__ = ["LOOP_BLOCKED", "LOST_PEER", "PROBE_TIME", "Heartbeat", "LoopWatchdog"]

import asyncio
import contextvars
import logging
import random
import time
import weakref
from typing import TYPE_CHECKING

from ..admin import current_node
from ..exceptions import ConnectionClosed
from ..protocol.actions import Lost, Send
from ..protocol.close import CloseCode
from ..protocol.log_budget import LogBudget
from ..protocol.loop_lag import LoopLag

if TYPE_CHECKING:
    from .node import Node
    from .peer import PeerConnection

LOST_PEER = "lost peer"
"""The close reason sent to a peer we give up for dead (the original's)."""

LOOP_BLOCKED = (
    "! the event loop was blocked for %.1f s: a handler or thread that doesn't await"
    " (time.sleep, a sync HTTP or database call), or the process was suspended"
    " (SIGSTOP, a paused VM)? Peers may have dropped this node"
    " (no pong: their heartbeat); run blocking code with asyncio.to_thread()"
)
"""The WARNING of :class:`LoopWatchdog` (``%.1f``: the seconds blocked)."""

PROBE_TIME = 3.0
"""Seconds of silence after which a probed peer is dead (at most
``heartbeat_response_timeout``): a round trip on a working link takes far less."""


class Heartbeat:
    """
    Runs the heartbeat round of a node (``node.tasks`` owns the task).

    Args:
        node: The node whose connections are checked.

    """

    def __init__(self, node: Node) -> None:
        self._node = node

    async def run(self) -> None:
        """Check every connection each round, until cancelled."""
        options = self._node.options
        while True:
            await asyncio.sleep(
                options.heartbeat_interval + random.uniform(0, options.heartbeat_jitter)
            )
            if self._node.running:
                self.check()

    def check(self) -> None:
        """One round: carry out each connection's liveness verdict."""
        now = asyncio.get_running_loop().time()  # the protocols' clock
        for conn in self._node.connections:
            if now < conn.protocol.liveness.next_check:
                continue  # no ping due or outstanding: its check would do nothing
            self._check(conn)
        self._node.clock_watch.check()  # (a step of our clock: review64 R1)

    def probe(self, conn: PeerConnection) -> float:
        """
        Doubt ``conn``'s peer now: ping it at once, and drop it if its ping stays
        unanswered for :data:`PROBE_TIME` seconds (at most
        ``heartbeat_response_timeout``), checked then rather than at the next round.

        Returns:
            The probe's time, in seconds.

        """
        liveness = conn.protocol.liveness
        timeout = min(PROBE_TIME, liveness.timings.timeout)
        already = liveness.probe_deadline is not None
        liveness.probe(asyncio.get_running_loop().time(), timeout)
        if not already:  # (one task per probe)
            self._check(conn)
            self._node.tasks.spawn(self._probed(conn, timeout), f"probe {conn.socket.peer}")
        return timeout

    async def _probed(self, conn: PeerConnection, timeout: float) -> None:
        """Check a probed connection when its probe time runs out, until a pong ends
        the probe or the connection closes."""
        liveness = conn.protocol.liveness
        loop = asyncio.get_running_loop()
        while (deadline := liveness.probe_deadline) is not None and not conn.socket.closed:
            # (not before a tenth of the probe time: a connection whose ping can't be
            # sent yet isn't checked in a busy loop)
            await asyncio.sleep(max(deadline - loop.time(), timeout / 10))
            if not conn.socket.closed:
                self._check(conn)

    def _check(self, conn: PeerConnection) -> None:
        """Carry out ``conn``'s liveness verdict now."""
        node = self._node
        socket = conn.socket
        actions = conn.protocol.heartbeat(
            last_bytes=socket.last_seen,
            backlog=socket.bytes_in_flight,
            written=socket.stats.bytes_out,
            reading_paused=not conn.can_read(),  # throttled, inbox full, or held
            path=socket.path_view,
        )
        for action in actions:
            if type(action) is Send:
                try:
                    node.send_package(socket, action.package)
                except ConnectionClosed:
                    pass  # on_close tells the rest
            elif type(action) is Lost:
                self._drop(conn, action.reason)

    def _drop(self, conn: PeerConnection, reason: str) -> None:
        socket = conn.socket
        node = self._node
        node.metrics.lost_peers += 1  # every one; the lines of a flood of them are bounded
        message, level = "! lost peer: %s", logging.WARNING
        node.connections.inbound.note(conn.log, socket, "lost peer", message, reason, level=level)
        # Tell a peer that is alive but doesn't answer why, if the close frame gets
        # through; then drop the connection without waiting for an answer.
        socket.close_soon(CloseCode.GOING_AWAY, LOST_PEER)
        socket.abort()


class LoopWatchdog:
    """
    Says when an event loop was blocked (the rule: :class:`LoopLag
    <trustp2p.protocol.loop_lag.LoopLag>`, with the least ``loop_block_warning`` of its
    nodes): a WARNING, one a minute at most (the others at DEBUG, then counted). Its
    peers only see that a node stopped answering; the node itself said nothing
    (tester39 F4). One per loop, a timer, for the nodes running on it (one per node,
    a 1,000-node simulation ran 1,000 timers a second, and one block was said 1,000
    times).
    """

    __slots__ = ("__weakref__", "_lag", "_nodes", "_scheduled", "log_budget")

    def __init__(self, threshold: float) -> None:
        self._lag = LoopLag(threshold, clock=time.monotonic)
        # Held by the loop's timer only (the table below holds this weakly): a node
        # never stopped is let go with its loop (review58: the table held the loop, its
        # clock and task, and every node on it). Nodes that stopped are let go at the
        # next wake. (Not a WeakSet: a compiled Node takes no weak reference.)
        self._nodes: dict[Node, None] = {}
        self._scheduled = False
        self.log_budget = LogBudget(lines=1, window=60.0)

    @staticmethod
    def watch(node: Node) -> None:
        """Watch the running loop for ``node`` (started), while it runs."""
        loop = asyncio.get_running_loop()
        dog = _WATCHDOGS.get(id(loop))
        if dog is None:
            dog = LoopWatchdog(node.options.loop_block_warning)
            _WATCHDOGS[id(loop)] = dog
        dog._nodes[node] = None
        if not dog._scheduled:
            dog._schedule()

    @staticmethod
    def unwatch(node: Node) -> None:
        """``node`` stops: let go of it now (a stopped node is freed at once: a soak
        tester's finding), not at the next wake."""
        dog = _WATCHDOGS.get(id(asyncio.get_running_loop()))
        if dog is not None:
            dog.forget(node)

    def forget(self, node: Node) -> None:
        """Watch no more for ``node``."""
        self._nodes.pop(node, None)

    def _schedule(self) -> None:
        self._scheduled = True
        # In a context of its own, not the first node's start (review59: its WARNING
        # went to that node's status page, stopped or not, and held its context).
        context = contextvars.Context()
        asyncio.get_running_loop().call_later(self._lag.sleep(), self._woke, context=context)

    def _woke(self) -> None:
        """Measure how late this woke; again in a second or so while a node runs (the
        least ``loop_block_warning`` of those running)."""
        blocked = self._lag.woke()
        running = [node for node in self._nodes if node.running]
        self._nodes = dict.fromkeys(running)
        if blocked is not None and running:  # (said as the oldest running node)
            current_node.set(running[0].context_key)
            self.log_budget.log(
                running[0].log, logging.WARNING, "loop blocked", LOOP_BLOCKED, blocked
            )
        self.log_budget.summarise()
        if not running:
            self._scheduled = False  # (a node that starts again schedules it)
            return
        threshold = min(node.options.loop_block_warning for node in running)
        if threshold != self._lag.threshold:
            self._lag = LoopLag(threshold, clock=time.monotonic)
        self._schedule()


_WATCHDOGS: weakref.WeakValueDictionary[int, LoopWatchdog] = weakref.WeakValueDictionary()
"""Each loop's watchdog, by the loop's id: alive while its loop's timer holds it."""
