"""
Request/response bookkeeping, free of I/O.

:class:`RequestTable` keeps the requests a node has sent and not yet seen answered,
keyed by connection and tag. It is given a clock and a ``send`` callable, and returns
:data:`DeliverEvent` objects that say what happened; the node turns them into results
and exceptions for the callers waiting on :meth:`~trustp2p.Role.request`.

Each caller of :meth:`RequestTable.request` gets a :data:`WaiterId`. Identical requests
(same tag) to the same connection while one is pending share one entry and go on the
wire once; every waiter gets the response. Each waiter has its own deadline. (A request
with a payload has a random tag: it is never merged.)

Only the request's answer type answers it (:data:`~trustp2p.protocol.package.ANSWER_TYPE`:
a RESPONSE a REQUEST, a HEARTBEAT_PONG a HEARTBEAT_PING). A response of the other type with
a pending request's tag is unmatched, and the request waits on.

"""

from __future__ import annotations

__all__ = [
    "NO_HANDLER",
    "ConnId",
    "DeliverEvent",
    "RequestExpired",
    "RequestFailed",
    "RequestRerouted",
    "RequestTable",
    "RerouteUnavailable",
    "ResponseReceived",
    "ResponseUnmatched",
    "WaiterId",
    "checked_timeout",
]

import itertools
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Generic, NewType, TypeVar

from .package import Package, PackageType, Tag

ConnId = NewType("ConnId", int)
"""An opaque connection handle; the node uses :attr:`Socket.id`."""

WaiterId = NewType("WaiterId", int)
"""One caller waiting for a response."""


@dataclass(frozen=True, slots=True, init=False)
class ResponseReceived:
    """A response arrived; every waiter gets ``package.body``."""

    waiters: tuple[WaiterId, ...]
    conn: ConnId
    package: Package

    # Written out, as connection.py's actions are: compiled, once per response.
    def __init__(self, waiters: tuple[WaiterId, ...], conn: ConnId, package: Package) -> None:
        object.__setattr__(self, "waiters", waiters)
        object.__setattr__(self, "conn", conn)
        object.__setattr__(self, "package", package)


@dataclass(frozen=True, slots=True)
class RequestExpired:
    """A waiter's deadline passed without a response."""

    waiter: WaiterId
    request: Package
    timeout: float


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The connection of a request was lost and there is nowhere to reroute it."""

    waiters: tuple[WaiterId, ...]
    request: Package
    conn: ConnId


@dataclass(frozen=True, slots=True)
class RequestRerouted:
    """A request was sent again, to another connection."""

    request: Package
    from_conn: ConnId
    to_conn: ConnId
    reason: str


@dataclass(frozen=True, slots=True)
class RerouteUnavailable:
    """A rerouting request stalled but no other connection was available; it waits on."""

    request: Package
    conn: ConnId


@dataclass(frozen=True, slots=True)
class ResponseUnmatched:
    """
    A response whose tag matches no pending request on its connection, or whose type
    doesn't answer the request with its tag.

    ``expected`` is the type that request waits for (the response's type is another),
    or ``None`` when the tag matches no pending request.

    """

    conn: ConnId
    package: Package
    expected: PackageType | None = None


DeliverEvent = (
    ResponseReceived
    | RequestExpired
    | RequestFailed
    | RequestRerouted
    | RerouteUnavailable
    | ResponseUnmatched
)

K = TypeVar("K")


class _Deadlines(Generic[K]):
    """
    Deadlines grouped by duration.

    With a monotonic clock, deadlines of one duration come due in insertion order, so
    each group is an ordered dict: adding, removing and finding the next deadline are
    O(1) per group. A heap would keep every answered request until its deadline passed.

    """

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[float, OrderedDict[K, float]] = {}

    def add(self, key: K, deadline: float, duration: float) -> None:
        group = self._groups.get(duration)
        if group is None:
            group = self._groups[duration] = OrderedDict()
        group[key] = deadline
        group.move_to_end(key)

    def remove(self, key: K, duration: float) -> None:
        group = self._groups.get(duration)
        if group is not None:
            group.pop(key, None)
            if not group:
                del self._groups[duration]

    def next(self) -> float | None:
        heads = [next(iter(group.values())) for group in self._groups.values()]
        return min(heads) if heads else None

    def pop_due(self, now: float) -> list[K]:
        due: list[K] = []
        for duration, group in list(self._groups.items()):
            while group:
                key, deadline = next(iter(group.items()))
                if deadline > now:
                    break
                del group[key]
                due.append(key)
            if not group:
                del self._groups[duration]
        return due


def checked_timeout(timeout: float | None, default: float) -> float:
    """A request's ``timeout`` (``default`` if None).

    Raises:
        TypeError: If it is not an int or a float (``True`` is neither).
        ValueError: If it is not positive.

    """
    if timeout is None:
        return default
    if type(timeout) is not float and type(timeout) is not int:
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout:g}")
    return timeout


def _answer_type(request_type: PackageType) -> PackageType:
    """ANSWER_TYPE's, by comparisons: cheaper than a lookup, once per request sent."""
    if request_type is PackageType.REQUEST:
        return PackageType.RESPONSE
    if request_type is PackageType.HEARTBEAT_PING:
        return PackageType.HEARTBEAT_PONG
    raise ValueError(f"{request_type.name} is not a request type")


NO_HANDLER = "no handler for "
"""How the error a node answers a request it has no handler for begins
(:mod:`trustp2p.protocol.connection`): a rerouting request goes on past it."""


def _unhandled(response: Package) -> bool:
    """Whether ``response`` is that error (:data:`NO_HANDLER`)."""
    error = response.body.get("error")
    return isinstance(error, str) and error.startswith(NO_HANDLER)


class _Entry:
    """One request on the wire, with everyone waiting for its response."""

    __slots__ = ("answer", "id", "package", "pending", "reroute", "tried", "waiters")

    def __init__(
        self, id: int, package: Package, answer: PackageType, conn: ConnId, reroute: bool
    ) -> None:
        self.id = id
        self.package = package
        self.answer = answer  # the only type that answers it
        self.reroute = reroute
        self.tried: list[ConnId] = [conn]  # in the order they were tried
        self.pending: set[ConnId] = {conn}  # connections it is outstanding on
        self.waiters: dict[WaiterId, float] = {}  # waiter -> its timeout


class RequestTable:
    """
    Pending requests, keyed by connection and tag. Does no I/O.

    Args:
        clock: Returns the current time in seconds; must be monotonic.
        send: Called to put a package on the wire to a connection. It must not block
            and must not raise: if the connection is gone, the node reports it with
            :meth:`connection_lost`.
        reroute_target: Given the connections a request was already sent to and the
            request, returns another connection to reroute it to (one that takes a
            package that size), or ``None``. Without it, requests never reroute.
        response_timeout: Default time a waiter waits for a response, in seconds.
        stalled_timeout: Time after which a rerouting request is sent to the next
            connection, in seconds.

    After each call to a method, call :meth:`next_deadline` and arrange to call
    :meth:`tick` then.

    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        send: Callable[[ConnId, Package], None],
        reroute_target: Callable[[Collection[ConnId], Package], ConnId | None] | None = None,
        response_timeout: float = 300.0,
        stalled_timeout: float = 5.0,
    ) -> None:
        if response_timeout <= 0:
            raise ValueError(f"response_timeout must be positive, not {response_timeout:g}")
        if stalled_timeout <= 0:
            raise ValueError(f"stalled_timeout must be positive, not {stalled_timeout:g}")
        self._clock = clock
        self._send = send
        self._reroute_target = reroute_target
        self.response_timeout = response_timeout
        self.stalled_timeout = stalled_timeout
        self._by_conn: dict[ConnId, dict[Tag, _Entry]] = {}
        self._by_waiter: dict[WaiterId, _Entry] = {}
        self._waiter_deadlines: _Deadlines[WaiterId] = _Deadlines()
        self._stall_deadlines: _Deadlines[_Entry] = _Deadlines()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        """Number of waiters."""
        return len(self._by_waiter)

    def pending_on(self, conn: ConnId) -> int:
        """Number of requests outstanding on a connection."""
        return len(self._by_conn.get(conn, ()))

    def request(
        self,
        conn: ConnId,
        package: Package,
        *,
        reroute: bool = False,
        timeout: float | None = None,
        now: float | None = None,
    ) -> WaiterId:
        """
        Send a request, or join an identical one already pending on ``conn``.

        Args:
            conn: Where to send it.
            package: The request; its tag identifies it.
            reroute: Send it to the next connection if it stalls or its connection is
                lost. Joining a pending request with ``reroute=True`` turns rerouting on
                for it.
            timeout: How long this waiter waits, in seconds; defaults to
                ``response_timeout``.
            now: The time on this table's clock, if the caller has just read it.

        Returns:
            The waiter, to match with the events that resolve it.

        Raises:
            ValueError: If ``package`` is not a request with a tag, or ``timeout`` is not
                positive.

        """
        timeout = checked_timeout(timeout, self.response_timeout)
        if not package.tag:
            raise ValueError("a request needs a tag")
        answer = _answer_type(package.type)
        if reroute and self._reroute_target is None:
            raise ValueError("this table can't reroute: it has no reroute_target")
        if now is None:
            now = self._clock()
        table = self._by_conn.get(conn)
        if table is None:
            table = self._by_conn[conn] = {}
        entry = table.get(package.tag)
        if entry is None:
            entry = table[package.tag] = _Entry(next(self._ids), package, answer, conn, reroute)
            if reroute:
                self._stall_deadlines.add(entry, now + self.stalled_timeout, self.stalled_timeout)
            self._send(conn, package)
        elif reroute and not entry.reroute:
            entry.reroute = True
            self._stall_deadlines.add(entry, now + self.stalled_timeout, self.stalled_timeout)
        waiter = WaiterId(next(self._ids))
        entry.waiters[waiter] = timeout
        self._by_waiter[waiter] = entry
        self._waiter_deadlines.add(waiter, now + timeout, timeout)
        return waiter

    def cancel(self, waiter: WaiterId) -> None:
        """
        Forget a waiter, e.g. when its caller was cancelled.

        When it was the last waiter, the request is forgotten: a late response is then
        reported as :class:`ResponseUnmatched`.

        """
        entry = self._by_waiter.pop(waiter, None)
        if entry is None:
            return
        timeout = entry.waiters.pop(waiter)
        self._waiter_deadlines.remove(waiter, timeout)
        if not entry.waiters:
            self._forget(entry)

    def receive_response(self, conn: ConnId, package: Package) -> list[DeliverEvent]:
        """
        Match a response received on ``conn`` by its tag and type.

        The first response wins: the request is no longer pending anywhere. A response
        whose type doesn't answer the request with its tag (a HEARTBEAT_PONG with a
        REQUEST's tag, a RESPONSE with a HEARTBEAT_PING's) is unmatched; the request
        waits on.

        """
        table = self._by_conn.get(conn)
        entry = table.get(package.tag) if table is not None else None
        if entry is None:
            return [ResponseUnmatched(conn, package)]
        if package.type is not entry.answer:
            return [ResponseUnmatched(conn, package, entry.answer)]
        if entry.reroute and _unhandled(package):
            moved = self._pass_on(entry, conn)
            if moved is not None:
                return moved
        waiters = tuple(entry.waiters)
        self._forget(entry)
        return [ResponseReceived(waiters, conn, package)]

    def _pass_on(self, entry: _Entry, conn: ConnId) -> list[DeliverEvent] | None:
        """A rerouting request's server has no handler for it (a tester: a client's
        servers met by peer exchange needn't run its threads, and the first of them
        answered every rerouted request with that error): on to the next server, or
        on waiting for another it is pending on; ``None`` if there is neither (the
        error is the answer)."""
        target = self._next_target(entry)
        if target is None and entry.pending == {conn}:
            return None
        entry.pending.discard(conn)
        table = self._by_conn[conn]
        del table[entry.package.tag]
        if not table:
            del self._by_conn[conn]
        if target is None:
            return []
        self._resend(entry, target)
        return [RequestRerouted(entry.package, conn, target, "no handler there")]

    def connection_lost(self, conn: ConnId) -> list[DeliverEvent]:
        """
        Handle the loss of a connection.

        Its rerouting requests go to the next connection at once; the others fail,
        unless they are still outstanding on another connection.

        """
        events: list[DeliverEvent] = []
        table = self._by_conn.pop(conn, None)
        if table is None:
            return events
        for entry in table.values():
            entry.pending.discard(conn)
            if entry.pending:
                continue
            if entry.reroute:
                target = self._next_target(entry)
                if target is not None:
                    self._resend(entry, target)
                    events.append(RequestRerouted(entry.package, conn, target, "connection lost"))
                    continue
            waiters = tuple(entry.waiters)
            self._forget(entry)
            events.append(RequestFailed(waiters, entry.package, conn))
        return events

    def tick(self) -> list[DeliverEvent]:
        """Expire waiters and reroute stalled requests that are due."""
        now = self._clock()
        events: list[DeliverEvent] = []
        for waiter in self._waiter_deadlines.pop_due(now):
            entry = self._by_waiter.pop(waiter)
            timeout = entry.waiters.pop(waiter)
            events.append(RequestExpired(waiter, entry.package, timeout))
            if not entry.waiters:
                self._forget(entry)
        for entry in self._stall_deadlines.pop_due(now):
            target = self._next_target(entry)
            if target is None:
                events.append(RerouteUnavailable(entry.package, entry.tried[-1]))
            else:
                events.append(RequestRerouted(entry.package, entry.tried[-1], target, "stalled"))
                self._resend(entry, target)
            if entry.waiters:  # else it was merged into another entry
                # Check again later: another server may have connected meanwhile.
                deadline = now + self.stalled_timeout
                self._stall_deadlines.add(entry, deadline, self.stalled_timeout)
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has work to do next, or ``None``."""
        waiters = self._waiter_deadlines.next()
        stalls = self._stall_deadlines.next()
        if waiters is None:
            return stalls
        if stalls is None:
            return waiters
        return min(waiters, stalls)

    def _next_target(self, entry: _Entry) -> ConnId | None:
        assert self._reroute_target is not None
        return self._reroute_target(entry.tried, entry.package)

    def _resend(self, entry: _Entry, conn: ConnId) -> None:
        entry.tried.append(conn)
        tag = entry.package.tag
        table = self._by_conn.get(conn)
        if table is None:
            table = self._by_conn[conn] = {}
        existing = table.get(tag)
        if existing is None:
            table[tag] = entry
            entry.pending.add(conn)
            self._send(conn, entry.package)
        else:
            # An identical request is already pending there: the first answer resolves
            # both, so ours joins it rather than going on the wire twice.
            self._merge(existing, entry)

    def _merge(self, into: _Entry, entry: _Entry) -> None:
        tag = entry.package.tag
        for conn in entry.pending:
            if conn not in into.pending:
                self._by_conn[conn][tag] = into
                into.pending.add(conn)
        entry.pending.clear()
        into.tried.extend(conn for conn in entry.tried if conn not in into.tried)
        for waiter, timeout in entry.waiters.items():
            into.waiters[waiter] = timeout
            self._by_waiter[waiter] = into
        entry.waiters.clear()
        if entry.reroute:
            self._stall_deadlines.remove(entry, self.stalled_timeout)
            if not into.reroute:
                into.reroute = True
                deadline = self._clock() + self.stalled_timeout
                self._stall_deadlines.add(into, deadline, self.stalled_timeout)

    def _forget(self, entry: _Entry) -> None:
        tag = entry.package.tag
        for conn in entry.pending:
            table = self._by_conn.get(conn)
            if table is not None and table.get(tag) is entry:
                del table[tag]
                if not table:
                    del self._by_conn[conn]
        entry.pending.clear()
        for waiter, timeout in entry.waiters.items():
            self._by_waiter.pop(waiter, None)
            self._waiter_deadlines.remove(waiter, timeout)
        entry.waiters.clear()
        if entry.reroute:
            self._stall_deadlines.remove(entry, self.stalled_timeout)
