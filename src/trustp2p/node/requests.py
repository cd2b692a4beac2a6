"""
Requests in flight: a future per caller and one timer, over the sans-I/O
:class:`~trustp2p.protocol.deliver.RequestTable`.

"""

from __future__ import annotations

__all__ = ["Requests", "is_error_answer"]

import asyncio
import json
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Final

from ..admin.counters import Metrics
from ..exceptions import ConnectionClosed, PackageTooLarge, RemoteError, RequestTimeout
from ..loop import loop_clock
from ..protocol.close import CloseCode
from ..protocol.connection import ConnectionState
from ..protocol.deliver import (
    ConnId,
    DeliverEvent,
    RequestExpired,
    RequestFailed,
    RequestRerouted,
    RequestTable,
    RerouteUnavailable,
    ResponseReceived,
    ResponseUnmatched,
    WaiterId,
    checked_timeout,
)
from ..protocol.package import (
    REQUEST_TYPES,
    Body,
    Package,
    PackageType,
    build_package,
    check_size,
)
from .peer import INTRODUCTION_WAIT, PeerConnection

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from .connections import Connections

logger = logging.getLogger(__name__)


_OPEN: Final = ConnectionState.OPEN
"""(An enum member read from its class costs 0.4 µs: once per request, 1 % of a round
trip's instructions.)"""


def is_error_answer(body: Body) -> bool:
    """Whether a response body is an error answer: ``{"error": "<text>"}`` and nothing
    else, the shape trustp2p and the original send for requests they can't serve."""
    return len(body) == 1 and type(body.get("error")) is str


class Requests:
    """
    The requests a node sent and waits for.

    Args:
        connections: The node's connections: ``send_nowait`` writes a package without
            waiting and never raises; ``unmatched`` gets responses that match no pending
            request, with the type the request with their tag waits for when they are
            of another type (a HEARTBEAT_PONG with a REQUEST's tag), else ``None``;
            ``get`` gives a connection's peer (the largest package it takes).
        reroute_target: Picks the next connection to reroute a stalled request to, or
            ``None`` on a node without a client role.
        response_timeout: Seconds a request waits by default.
        stalled_timeout: Seconds before a reroutable request is sent elsewhere.
        alt: Our network id, written in each request.
        metrics: The node's counters (requests and their round trips).

    """

    def __init__(
        self,
        connections: Connections,
        *,
        reroute_target: Callable[[Collection[ConnId]], ConnId | None] | None,
        response_timeout: float,
        stalled_timeout: float,
        alt: str,
        metrics: Metrics | None = None,
        max_package_size: int | None = None,
    ) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._clock = clock = loop_clock(loop)
        self._reroute = None if reroute_target is None else self._fitting(reroute_target)
        self._table = RequestTable(
            clock=clock,
            send=connections.send_nowait,
            reroute_target=self._reroute,
            response_timeout=response_timeout,
            stalled_timeout=stalled_timeout,
        )
        self._connections = connections
        self._alt = alt
        self._max_package_size = max_package_size
        self._futures: dict[WaiterId, asyncio.Future[Package]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._metrics = metrics if metrics is not None else Metrics()

    def _fitting(
        self, reroute_target: Callable[[Collection[ConnId]], ConnId | None]
    ) -> Callable[[Collection[ConnId], Package], ConnId | None]:
        """``reroute_target``, passing over the connections whose peer takes smaller
        packages than the request (found in review: it was written to one anyway, which
        closed the connection, 1009)."""

        def target(tried: Collection[ConnId], package: Package) -> ConnId | None:
            skipped = list(tried)
            while (conn_id := reroute_target(skipped)) is not None:
                conn = self._connections.get(conn_id)
                limit = None if conn is None else conn.protocol.peer_max_size
                try:
                    check_size(package, limit, peer=True)
                except PackageTooLarge:
                    skipped.append(conn_id)
                    continue
                return conn_id
            return None

        return target

    async def fit(self, socket: Socket, package: Package) -> None:
        """
        Check ``package`` against the largest package the peer at ``socket`` takes, as
        its introduction said; a secure peer's is waited for first, if it isn't in
        (:meth:`~trustp2p.node.peer.PeerConnection.introduction`).

        Raises:
            PackageTooLarge: If the peer said it takes no package that large.

        """
        if (conn := self._connections.get(socket.id)) is not None:
            if conn.protocol.state is not _OPEN:
                await conn.introduction()
            check_size(package, conn.protocol.peer_max_size, peer=True)

    async def request(
        self,
        socket: Socket,
        event: str,
        body: Body,
        *,
        package_type: PackageType = PackageType.REQUEST,
        reroute: bool = False,
        timeout: float | None = None,
        payload: bytes | None = None,
    ) -> Body:
        """
        Send a request on ``socket`` and wait for its response's body; see
        :meth:`request_package`.
        """
        response = await self.request_package(
            socket,
            event,
            body,
            package_type=package_type,
            reroute=reroute,
            timeout=timeout,
            payload=payload,
        )
        return response.body

    async def request_package(
        self,
        socket: Socket,
        event: str,
        body: Body,
        *,
        package_type: PackageType = PackageType.REQUEST,
        reroute: bool = False,
        timeout: float | None = None,
        payload: bytes | None = None,
    ) -> Package:
        """
        Send a request on ``socket``, ``payload`` beside its body, and wait for the response.

        Raises:
            RemoteError: If the peer answered with an error (``exc.body`` is raw).
            RequestTimeout: If no response arrives within the timeout.
            ConnectionClosed: If the connection is lost first (and can't be rerouted).
            PackageTooLarge: If the request is over ``max_package_size``, or the peer's (not sent).
            ValueError: If ``package_type`` is not a request type.

        """
        if package_type not in REQUEST_TYPES:
            raise ValueError(f"{package_type!r} is not a request type")
        package = build_package(package_type, event, body, alt=self._alt, payload=payload or b"")
        check_size(package, self._max_package_size)  # before the table holds it
        left = timeout  # (a RequestTimeout says the one asked: tester42 F6)
        if socket.write_paused:  # wait for room (the caller's burst slows it down), timed
            socket, left = await self._room(socket, package, reroute, timeout)
        if socket.closed:
            raise ConnectionClosed(socket.close_code, socket.close_reason)
        if (conn := self._connections.get(socket.id)) is not None:  # fit(), written out
            if conn.protocol.state is not _OPEN:  # (waited for within its timeout)
                conn, left = await self._introduced(conn, package, reroute, left, timeout)
                socket = conn.socket
            check_size(package, conn.protocol.peer_max_size, peer=True)
        now = self._clock()
        waiter = self._table.request(socket.id, package, reroute=reroute, timeout=left, now=now)
        future: asyncio.Future[Package] = self._loop.create_future()
        self._futures[waiter] = future
        self._arm(now + (self._table.response_timeout if left is None else left), reroute, now)
        (metrics := self._metrics).requests_sent += 1
        try:
            answer = await future
        except RequestTimeout as exc:
            metrics.requests_timed_out += 1
            raise (exc if left == timeout else self._timeout(package, timeout)) from None
        except ConnectionClosed:
            metrics.requests_failed += 1
            raise
        finally:
            if self._futures.pop(waiter, None) is not None:
                self._table.cancel(waiter)  # cancelled: nobody waits any more
        if "error" in answer.body and is_error_answer(answer.body):
            metrics.requests_failed += 1
            raise RemoteError(event, package.tag, answer.body)
        metrics.requests_answered += 1
        metrics.request_seconds.observe(self._clock() - now)
        return answer

    async def _room(
        self, socket: Socket, package: Package, reroute: bool, timeout: float | None
    ) -> tuple[Socket, float]:
        """
        Wait for room to write ``package`` on ``socket``, within ``timeout``
        (``response_timeout`` if None); return the socket it goes on and the time left.
        With ``reroute``, the request goes to the next server if this one closes
        meanwhile (review83 F1) or makes no room within ``stalled_timeout`` (review83 F2:
        it waited out its whole timeout on the full link, another server idle).
        Found by a tester (t45 F3): the wait went uncounted, and a request with
        ``timeout=60`` on a busy slow link raised after 111.7 s. The node's own requests
        wait for room before they ask (``Socket.drain()``): theirs is the old behaviour
        (review82 R4).

        Raises:
            RequestTimeout: If there was no room within the timeout (counted as sent and
                timed out, as a request whose introduction took the whole timeout).

        """
        asked = checked_timeout(timeout, self._table.response_timeout)  # (review83 F3)
        end = self._clock() + asked
        stall = self._table.stalled_timeout if reroute and self._reroute is not None else None
        tried = [socket.id]
        while True:
            wait = end - self._clock()
            final = stall is None or wait <= stall
            try:
                async with asyncio.timeout(wait if final or stall is None else stall):
                    await socket.drain()
            except TimeoutError:
                if final:
                    raise self._timed_out(package, timeout) from None
            except ConnectionClosed:
                if not reroute:
                    raise
            else:
                if not (socket.closed and reroute):
                    break
            following = self._next_server(tried, package)
            if following is None:
                if socket.closed:
                    break  # (the caller raises ConnectionClosed)
                continue  # no other server: wait on here (and look again after a while)
            reason = "connection lost" if socket.closed else "no room to send"
            self._metrics.requests_rerouted += 1
            _log_reroute(RequestRerouted(package, socket.id, following.socket.id, reason))
            socket = following.socket
            tried.append(socket.id)
        return socket, self._time_left(end, package, timeout)

    def _next_server(self, tried: list[ConnId], package: Package) -> PeerConnection | None:
        """The connection a rerouted request waiting for room goes on next, if any."""
        target = None if self._reroute is None else self._reroute(tried, package)
        return None if target is None else self._connections.get(target)

    def _time_left(self, end: float, package: Package, timeout: float | None) -> float:
        """Seconds left until ``end`` of a request's ``timeout`` spent waiting.

        Raises:
            RequestTimeout: If none is left (review82 R2: 0 s went to the table, and
                ``ValueError`` was raised).

        """
        if (left := end - self._clock()) > 0:
            return left
        raise self._timed_out(package, timeout)

    def _timed_out(self, package: Package, timeout: float | None) -> RequestTimeout:
        """A request that took its whole ``timeout`` before it could be sent: counted as
        sent and timed out (review82 R3: the timeouts stay a part of the requests sent)."""
        self._metrics.requests_sent += 1
        self._metrics.requests_timed_out += 1
        return self._timeout(package, timeout)

    def _timeout(self, package: Package, timeout: float | None) -> RequestTimeout:
        """The error of a request that took ``timeout``: it names the timeout asked for,
        not what was left of it after a wait (tester42 F6)."""
        asked = self._table.response_timeout if timeout is None else timeout
        return RequestTimeout(package.event, package.tag, asked)

    async def _introduced(
        self,
        conn: PeerConnection,
        package: Package,
        reroute: bool,
        left: float | None,
        timeout: float | None,
    ) -> tuple[PeerConnection, float | None]:
        """
        Wait for ``conn``'s peer introduction, within ``left`` of the request's
        ``timeout``; return the connection the request goes on and the time left. With
        ``reroute``, a connection that closes meanwhile passes the request to the next
        server (found in review: it raised ConnectionClosed with another server
        connected).

        Raises:
            RequestTimeout: If the wait took the whole ``timeout`` (found in review: the
                table was given 0 s, and raised ValueError; review82 R1: after a wait for
                room, the introduction was given the whole timeout again).

        """
        checked_timeout(timeout, 0.0)  # (before the wait: review87 R1)
        end = None if left is None else self._clock() + left
        tried: list[ConnId] = []
        while True:
            wait = INTRODUCTION_WAIT if end is None else min(INTRODUCTION_WAIT, end - self._clock())
            try:
                await conn.introduction(wait)
                if tried:  # a server rerouted to: it may take less (review44 F4)
                    check_size(package, conn.protocol.peer_max_size, peer=True)
                break
            except (ConnectionClosed, PackageTooLarge):
                tried.append(conn.socket.id)
                target = self._reroute(tried, package) if reroute and self._reroute else None
                following = None if target is None else self._connections.get(target)
                if following is None:
                    raise
                self._metrics.requests_rerouted += 1  # (review87 R2)
                reason = "connection lost" if conn.socket.closed else "too large for the peer"
                _log_reroute(RequestRerouted(package, conn.socket.id, following.socket.id, reason))
                conn = following
        if end is None:
            return conn, None
        return conn, self._time_left(end, package, timeout)

    def receive_response(self, socket: Socket, package: Package) -> None:
        """A RESPONSE or HEARTBEAT_PONG arrived on ``socket``: only a RESPONSE answers a
        REQUEST, only a HEARTBEAT_PONG a HEARTBEAT_PING."""
        self._process(self._table.receive_response(socket.id, package))

    def connection_lost(self, socket: Socket) -> None:
        """Fail or reroute what was pending on ``socket``."""
        self._process(self._table.connection_lost(socket.id), socket)
        self._schedule_timer()  # rerouted requests may have new deadlines

    def close(self) -> None:
        """The node stops: every waiting caller gets :exc:`ConnectionClosed`."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ConnectionClosed(CloseCode.GOING_AWAY, "node stopping"))
        self._futures.clear()

    def _arm(self, deadline: float, reroute: bool, now: float) -> None:
        """A request sent at ``now`` waits until ``deadline`` (a reroutable one, until
        ``stalled_timeout``): the timer fires by the earliest (usually an earlier one's)."""
        if reroute:
            deadline = min(deadline, now + self._table.stalled_timeout)
        if self._timer is None or deadline < self._timer_when:
            self._schedule_timer()

    def _schedule_timer(self) -> None:
        """Make the timer fire at the table's next deadline (answered requests leave
        earlier deadlines behind: the timer may then fire for nothing, which is cheap)."""
        deadline = self._table.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_when = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._process(self._table.tick())
        self._schedule_timer()

    def _process(self, events: list[DeliverEvent], closed: Socket | None = None) -> None:
        """Turn the request table's events into results for the waiting callers."""
        futures = self._futures
        for event in events:
            if type(event) is ResponseReceived:
                first = True
                for waiter in event.waiters:
                    future = futures.pop(waiter, None)
                    if future is not None and not future.done():
                        # Each caller gets its own copy of the body.
                        package = event.package
                        future.set_result(package if first else _copy(package))
                        first = False
            elif type(event) is ResponseUnmatched:
                self._connections.unmatched(event.conn, event.package, event.expected)
            elif type(event) is RequestExpired:
                future = futures.pop(event.waiter, None)
                if future is not None and not future.done():
                    request = event.request
                    future.set_exception(RequestTimeout(request.event, request.tag, event.timeout))
            elif type(event) is RequestFailed:
                code = closed.close_code if closed is not None else None
                reason = closed.close_reason if closed is not None else ""
                for waiter in event.waiters:
                    future = futures.pop(waiter, None)
                    if future is not None and not future.done():
                        future.set_exception(ConnectionClosed(code, reason))
            else:
                if type(event) is RequestRerouted:
                    self._metrics.requests_rerouted += 1
                _log_reroute(event)


def _log_reroute(event: DeliverEvent) -> None:
    if type(event) is RequestRerouted:
        logger.debug(
            "= request %r (tag %s) %s: rerouted from #%d to #%d",
            event.request.event,
            event.request.tag,
            event.reason,
            event.from_conn,
            event.to_conn,
        )
    elif type(event) is RerouteUnavailable:
        logger.debug(
            "= request %r (tag %s) stalled on #%d; no other server to reroute to, still waiting",
            event.request.event,
            event.request.tag,
            event.conn,
        )


def _copy(package: Package) -> Package:
    """A package with a fresh copy of ``package``'s body."""
    body: Body = json.loads(package.body_json) if package.body_json else dict(package.body)
    return Package(
        package.type,
        package.event,
        body,
        package.tag,
        package.version,
        package.alt,
        package.body_json,
        package.payload,
    )
