"""RequestTable, driven by hand: a fake clock, a list of sends, no event loop."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

import pytest

from tests.conftest import FakeClock
from trustp2p.protocol.deliver import (
    ConnId,
    RequestExpired,
    RequestFailed,
    RequestRerouted,
    RequestTable,
    RerouteUnavailable,
    ResponseReceived,
    ResponseUnmatched,
)
from trustp2p.protocol.package import (
    ANSWER_TYPE,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Package,
    PackageType,
    build_package,
)

C1, C2, C3 = ConnId(1), ConnId(2), ConnId(3)
REQ = build_package(PackageType.REQUEST, "ask", {"q": 1})
OTHER = build_package(PackageType.REQUEST, "ask", {"q": 2})


def answer(request: Package, body: dict[str, Any] | None = None) -> Package:
    return build_package(PackageType.RESPONSE, request.event, body or {"a": 1}, tag=request.tag)


class Router:
    """A reroute_target that records what it was asked and offers the first untried conn."""

    def __init__(self, *conns: ConnId) -> None:
        self.conns = list(conns)
        self.asked: list[list[ConnId]] = []

    def __call__(self, tried: Collection[ConnId], package: Package) -> ConnId | None:
        self.asked.append(list(tried))
        return next((conn for conn in self.conns if conn not in tried), None)


@pytest.fixture
def sent() -> list[tuple[ConnId, Package]]:
    return []


@pytest.fixture
def table(clock: FakeClock, sent: list[tuple[ConnId, Package]]) -> RequestTable:
    return RequestTable(clock=clock, send=lambda conn, p: sent.append((conn, p)))


@pytest.fixture
def router() -> Router:
    return Router(C1, C2)


@pytest.fixture
def rtable(clock: FakeClock, sent: list[tuple[ConnId, Package]], router: Router) -> RequestTable:
    """A table that reroutes, with stalled_timeout=5 and response_timeout=300."""
    return RequestTable(
        clock=clock, send=lambda conn, p: sent.append((conn, p)), reroute_target=router
    )


def assert_empty(table: RequestTable, *conns: ConnId) -> None:
    assert len(table) == 0
    assert table.next_deadline() is None
    assert [table.pending_on(conn) for conn in conns] == [0] * len(conns)


# Sending and matching


def test_request_sends_once(table: RequestTable, sent: list[Any], clock: FakeClock) -> None:
    assert table.next_deadline() is None
    table.request(C1, REQ)
    assert sent == [(C1, REQ)]
    assert (len(table), table.pending_on(C1), table.pending_on(C2)) == (1, 1, 0)
    assert table.next_deadline() == clock.now + 300.0


def test_identical_request_to_same_conn_is_deduplicated(
    table: RequestTable, sent: list[Any]
) -> None:
    first = table.request(C1, REQ)
    second = table.request(C1, REQ)
    assert first != second
    assert sent == [(C1, REQ)]
    assert (len(table), table.pending_on(C1)) == (2, 1)
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseReceived((first, second), C1, response)]
    assert_empty(table, C1)


def test_identical_request_to_other_conn_is_sent_again(
    table: RequestTable, sent: list[Any]
) -> None:
    first = table.request(C1, REQ)
    second = table.request(C2, REQ)
    assert sent == [(C1, REQ), (C2, REQ)]
    response = answer(REQ)
    assert table.receive_response(C2, response) == [ResponseReceived((second,), C2, response)]
    assert (len(table), table.pending_on(C1), table.pending_on(C2)) == (1, 1, 0)
    assert table.receive_response(C1, response) == [ResponseReceived((first,), C1, response)]
    assert_empty(table, C1, C2)


def test_different_requests_are_matched_by_tag(table: RequestTable) -> None:
    first = table.request(C1, REQ)
    second = table.request(C1, OTHER)
    assert table.pending_on(C1) == 2
    response = answer(OTHER)
    assert table.receive_response(C1, response) == [ResponseReceived((second,), C1, response)]
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseReceived((first,), C1, response)]


def test_first_response_wins(table: RequestTable) -> None:
    waiter = table.request(C1, REQ)
    first, duplicate = answer(REQ, {"n": 1}), answer(REQ, {"n": 2})
    assert table.receive_response(C1, first) == [ResponseReceived((waiter,), C1, first)]
    assert table.receive_response(C1, duplicate) == [ResponseUnmatched(C1, duplicate)]


def test_unmatched_responses(table: RequestTable) -> None:
    table.request(C1, REQ)
    unknown_tag = answer(OTHER)
    assert table.receive_response(C1, unknown_tag) == [ResponseUnmatched(C1, unknown_tag)]
    wrong_conn = answer(REQ)
    assert table.receive_response(C2, wrong_conn) == [ResponseUnmatched(C2, wrong_conn)]
    assert (len(table), table.pending_on(C1)) == (1, 1)


def test_only_the_answer_type_answers(table: RequestTable) -> None:
    ping = build_package(PackageType.HEARTBEAT_PING, "ping", {})
    request_waiter = table.request(C1, REQ)
    ping_waiter = table.request(C1, ping)
    # A pong with the request's tag, a response with the ping's: neither answers.
    pong = build_package(PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, tag=REQ.tag)
    assert table.receive_response(C1, pong) == [ResponseUnmatched(C1, pong, PackageType.RESPONSE)]
    response = build_package(PackageType.RESPONSE, "ping", {}, tag=ping.tag)
    assert table.receive_response(C1, response) == [
        ResponseUnmatched(C1, response, PackageType.HEARTBEAT_PONG)
    ]
    assert (len(table), table.pending_on(C1)) == (2, 2)  # both wait on
    # Their own answer types still answer them.
    right = answer(REQ)
    assert table.receive_response(C1, right) == [ResponseReceived((request_waiter,), C1, right)]
    pong = build_package(PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, tag=ping.tag)
    assert table.receive_response(C1, pong) == [ResponseReceived((ping_waiter,), C1, pong)]
    assert_empty(table, C1)


def test_each_request_type_is_answered_by_its_answer_type(table: RequestTable) -> None:
    # The table's own comparisons agree with the ANSWER_TYPE the rest of the node reads.
    for request_type, answer_type in ANSWER_TYPE.items():
        request = build_package(request_type, "e", {"for": request_type.name})
        waiter = table.request(C1, request)
        others = [t for t in RESPONSE_TYPES if t is not answer_type]
        for other in others:
            wrong = build_package(other, "e", {}, tag=request.tag)
            assert table.receive_response(C1, wrong) == [ResponseUnmatched(C1, wrong, answer_type)]
        right = build_package(answer_type, "e", {}, tag=request.tag)
        assert table.receive_response(C1, right) == [ResponseReceived((waiter,), C1, right)]
    assert set(ANSWER_TYPE) == REQUEST_TYPES and set(ANSWER_TYPE.values()) == RESPONSE_TYPES


# Deadlines


def test_each_waiter_expires_at_its_own_deadline(table: RequestTable, clock: FakeClock) -> None:
    start = clock.now
    first = table.request(C1, REQ, timeout=10)
    clock.advance(3)
    second = table.request(C1, REQ, timeout=10)
    assert table.next_deadline() == start + 10

    clock.advance(6.5)
    assert table.tick() == []
    clock.advance(0.5)
    assert table.tick() == [RequestExpired(first, REQ, 10)]
    assert (len(table), table.pending_on(C1)) == (1, 1)
    assert table.next_deadline() == start + 13

    clock.advance(3)
    assert table.tick() == [RequestExpired(second, REQ, 10)]
    assert_empty(table, C1)
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseUnmatched(C1, response)]


def test_waiters_with_different_timeouts(table: RequestTable, clock: FakeClock) -> None:
    start = clock.now
    slow = table.request(C1, REQ, timeout=20)
    fast = table.request(C1, REQ, timeout=5)
    other = table.request(C2, OTHER)
    assert table.next_deadline() == start + 5
    clock.advance(5)
    assert table.tick() == [RequestExpired(fast, REQ, 5)]
    assert table.next_deadline() == start + 20
    clock.advance(1000)
    assert table.tick() == [RequestExpired(slow, REQ, 20), RequestExpired(other, OTHER, 300.0)]
    assert_empty(table, C1, C2)


def test_response_timeout_option(clock: FakeClock, sent: list[tuple[ConnId, Package]]) -> None:
    table = RequestTable(clock=clock, send=lambda c, p: sent.append((c, p)), response_timeout=2)
    waiter = table.request(C1, REQ)
    assert table.next_deadline() == clock.now + 2
    clock.advance(2)
    assert table.tick() == [RequestExpired(waiter, REQ, 2)]


def test_answered_request_leaves_no_deadline(table: RequestTable, clock: FakeClock) -> None:
    table.request(C1, REQ, timeout=1)
    table.receive_response(C1, answer(REQ))
    clock.advance(10)
    assert table.tick() == []
    assert_empty(table, C1)


# Cancellation


def test_cancel_one_waiter_keeps_the_other(table: RequestTable, clock: FakeClock) -> None:
    first = table.request(C1, REQ, timeout=10)
    second = table.request(C1, REQ, timeout=20)
    table.cancel(first)
    assert (len(table), table.pending_on(C1)) == (1, 1)
    assert table.next_deadline() == clock.now + 20
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseReceived((second,), C1, response)]


def test_cancel_last_waiter_forgets_request(table: RequestTable) -> None:
    waiter = table.request(C1, REQ)
    table.cancel(waiter)
    assert_empty(table, C1)
    table.cancel(waiter)  # cancelling twice is harmless
    assert len(table) == 0
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseUnmatched(C1, response)]


# Rerouting


def test_stalled_request_is_rerouted(
    rtable: RequestTable, sent: list[Any], clock: FakeClock, router: Router
) -> None:
    start = clock.now
    waiter = rtable.request(C1, REQ, reroute=True)
    assert rtable.next_deadline() == start + 5
    clock.advance(4.9)
    assert rtable.tick() == []
    clock.advance(0.1)
    assert rtable.tick() == [RequestRerouted(REQ, C1, C2, "stalled")]
    assert router.asked == [[C1]]
    assert sent == [(C1, REQ), (C2, REQ)]
    assert (len(rtable), rtable.pending_on(C1), rtable.pending_on(C2)) == (1, 1, 1)
    assert rtable.next_deadline() == start + 10

    response = answer(REQ)
    assert rtable.receive_response(C2, response) == [ResponseReceived((waiter,), C2, response)]
    assert_empty(rtable, C1, C2)
    late = answer(REQ)
    assert rtable.receive_response(C1, late) == [ResponseUnmatched(C1, late)]


def test_a_server_without_the_handler_passes_a_rerouted_request_on(
    clock: FakeClock, sent: list[tuple[ConnId, Package]]
) -> None:
    """Found by a tester: the next server a stalled request went to had no handler
    for it (a server met by peer exchange runs other threads), and its error ended the
    request, although the third server ran the handler."""
    router = Router(C1, C2, C3)
    table = RequestTable(clock=clock, send=lambda c, p: sent.append((c, p)), reroute_target=router)
    waiter = table.request(C1, REQ, reroute=True)
    clock.advance(5)
    assert table.tick() == [RequestRerouted(REQ, C1, C2, "stalled")]
    unhandled = answer(REQ, {"error": "no handler for REQUEST 'ask'"})
    assert table.receive_response(C2, unhandled) == [
        RequestRerouted(REQ, C2, C3, "no handler there")
    ]  # at once, not at the next stall
    assert sent == [(C1, REQ), (C2, REQ), (C3, REQ)]
    assert (table.pending_on(C1), table.pending_on(C2), table.pending_on(C3)) == (1, 0, 1)
    assert table.receive_response(C3, unhandled) == []  # none left: C1 may still answer
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseReceived((waiter,), C1, response)]
    assert_empty(table, C1, C2, C3)


def test_the_last_server_without_the_handler_gives_its_error(rtable: RequestTable) -> None:
    waiter = rtable.request(C1, REQ, reroute=True)
    unhandled = answer(REQ, {"error": "no handler for REQUEST 'ask'"})
    assert rtable.receive_response(C1, unhandled) == [
        RequestRerouted(REQ, C1, C2, "no handler there")
    ]
    assert rtable.receive_response(C2, unhandled) == [ResponseReceived((waiter,), C2, unhandled)]
    other_error = answer(REQ, {"error": "busy"})  # any other answer is the answer
    waiter = rtable.request(C1, REQ, reroute=True)
    assert rtable.receive_response(C1, other_error) == [
        ResponseReceived((waiter,), C1, other_error)
    ]
    waiter = rtable.request(C1, REQ)  # and without reroute, no handler is the answer
    assert rtable.receive_response(C1, unhandled) == [ResponseReceived((waiter,), C1, unhandled)]
    assert_empty(rtable, C1, C2)


def test_response_from_first_conn_after_reroute_wins(
    rtable: RequestTable, clock: FakeClock
) -> None:
    waiter = rtable.request(C1, REQ, reroute=True)
    clock.advance(5)
    rtable.tick()
    response = answer(REQ)
    assert rtable.receive_response(C1, response) == [ResponseReceived((waiter,), C1, response)]
    assert rtable.receive_response(C2, response) == [ResponseUnmatched(C2, response)]


def test_reroute_excludes_tried_conns(clock: FakeClock, sent: list[tuple[ConnId, Package]]) -> None:
    router = Router(C1, C2, C3)
    table = RequestTable(clock=clock, send=lambda c, p: sent.append((c, p)), reroute_target=router)
    table.request(C1, REQ, reroute=True)
    clock.advance(5)
    assert table.tick() == [RequestRerouted(REQ, C1, C2, "stalled")]
    clock.advance(5)
    assert table.tick() == [RequestRerouted(REQ, C2, C3, "stalled")]
    clock.advance(5)
    assert table.tick() == [RerouteUnavailable(REQ, C3)]
    assert router.asked == [[C1], [C1, C2], [C1, C2, C3]]
    assert sent == [(C1, REQ), (C2, REQ), (C3, REQ)]
    assert [table.pending_on(conn) for conn in (C1, C2, C3)] == [1, 1, 1]


def test_reroute_waits_for_a_target(
    rtable: RequestTable, sent: list[Any], clock: FakeClock, router: Router
) -> None:
    router.conns = [C1]
    waiter = rtable.request(C1, REQ, reroute=True)
    clock.advance(5)
    assert rtable.tick() == [RerouteUnavailable(REQ, C1)]
    assert (len(rtable), rtable.pending_on(C1)) == (1, 1)
    assert rtable.next_deadline() == clock.now + 5
    clock.advance(5)
    assert rtable.tick() == [RerouteUnavailable(REQ, C1)]

    router.conns = [C1, C2]  # a server connected meanwhile
    clock.advance(5)
    assert rtable.tick() == [RequestRerouted(REQ, C1, C2, "stalled")]
    assert sent == [(C1, REQ), (C2, REQ)]
    response = answer(REQ)
    assert rtable.receive_response(C2, response) == [ResponseReceived((waiter,), C2, response)]


def test_joining_with_reroute_turns_rerouting_on(
    rtable: RequestTable, sent: list[Any], clock: FakeClock
) -> None:
    start = clock.now
    first = rtable.request(C1, REQ)
    assert rtable.next_deadline() == start + 300
    clock.advance(1)
    second = rtable.request(C1, REQ, reroute=True)
    assert rtable.next_deadline() == start + 6
    clock.advance(5)
    assert rtable.tick() == [RequestRerouted(REQ, C1, C2, "stalled")]
    response = answer(REQ)
    assert rtable.receive_response(C2, response) == [
        ResponseReceived((first, second), C2, response)
    ]
    assert sent == [(C1, REQ), (C2, REQ)]


def test_reroute_onto_identical_pending_request_merges(
    rtable: RequestTable, sent: list[Any], clock: FakeClock
) -> None:
    rerouting = rtable.request(C1, REQ, reroute=True)
    plain = rtable.request(C2, REQ)
    clock.advance(5)
    assert rtable.tick() == [RequestRerouted(REQ, C1, C2, "stalled")]
    assert sent == [(C1, REQ), (C2, REQ)]  # not sent to C2 a second time
    assert (len(rtable), rtable.pending_on(C1), rtable.pending_on(C2)) == (2, 1, 1)
    response = answer(REQ)
    assert rtable.receive_response(C1, response) == [
        ResponseReceived((plain, rerouting), C1, response)
    ]
    assert_empty(rtable, C1, C2)


# Lost connections


def test_connection_lost_fails_requests(table: RequestTable) -> None:
    first = table.request(C1, REQ)
    second = table.request(C1, REQ)
    other = table.request(C2, OTHER)
    assert table.connection_lost(C1) == [RequestFailed((first, second), REQ, C1)]
    assert (len(table), table.pending_on(C1), table.pending_on(C2)) == (1, 0, 1)
    response = answer(REQ)
    assert table.receive_response(C1, response) == [ResponseUnmatched(C1, response)]
    assert table.connection_lost(C1) == []
    assert table.connection_lost(C2) == [RequestFailed((other,), OTHER, C2)]
    assert_empty(table, C1, C2)


def test_connection_lost_reroutes_at_once(
    rtable: RequestTable, sent: list[Any], clock: FakeClock, router: Router
) -> None:
    waiter = rtable.request(C1, REQ, reroute=True)
    assert rtable.connection_lost(C1) == [RequestRerouted(REQ, C1, C2, "connection lost")]
    assert router.asked == [[C1]]
    assert sent == [(C1, REQ), (C2, REQ)]
    assert (rtable.pending_on(C1), rtable.pending_on(C2)) == (0, 1)
    response = answer(REQ)
    assert rtable.receive_response(C2, response) == [ResponseReceived((waiter,), C2, response)]
    assert_empty(rtable, C1, C2)


def test_connection_lost_without_target_fails(rtable: RequestTable, router: Router) -> None:
    router.conns = []
    waiter = rtable.request(C1, REQ, reroute=True)
    assert rtable.connection_lost(C1) == [RequestFailed((waiter,), REQ, C1)]
    assert_empty(rtable, C1)


def test_connection_lost_while_pending_elsewhere_keeps_waiting(
    rtable: RequestTable, router: Router, clock: FakeClock
) -> None:
    waiter = rtable.request(C1, REQ, reroute=True)
    clock.advance(5)
    rtable.tick()
    assert rtable.connection_lost(C1) == []
    assert router.asked == [[C1]]  # not asked again
    assert (len(rtable), rtable.pending_on(C1), rtable.pending_on(C2)) == (1, 0, 1)
    response = answer(REQ)
    assert rtable.receive_response(C2, response) == [ResponseReceived((waiter,), C2, response)]


# Misuse


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"response_timeout": 0}, "response_timeout must be positive, not 0"),
        ({"response_timeout": -1.5}, "response_timeout must be positive, not -1.5"),
        ({"stalled_timeout": 0}, "stalled_timeout must be positive, not 0"),
    ],
)
def test_table_options_are_checked(
    clock: FakeClock, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RequestTable(clock=clock, send=lambda c, p: None, **kwargs)


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (0, "timeout must be positive, not 0"),
        (-1, "timeout must be positive, not -1"),
        (math.nan, "timeout must be positive, not nan"),
    ],
)
def test_request_timeout_must_be_positive(
    table: RequestTable, sent: list[Any], timeout: float, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        table.request(C1, REQ, timeout=timeout)
    assert (sent, len(table)) == ([], 0)


def test_request_needs_tag(table: RequestTable, sent: list[Any]) -> None:
    talk = build_package(PackageType.TALK, "hi", {})
    with pytest.raises(ValueError, match=r"^a request needs a tag$"):
        table.request(C1, talk)
    assert (sent, len(table)) == ([], 0)


def test_request_needs_request_type(table: RequestTable, sent: list[Any]) -> None:
    response = answer(REQ)
    with pytest.raises(ValueError, match=r"^RESPONSE is not a request type$"):
        table.request(C1, response)
    assert (sent, len(table)) == ([], 0)


def test_reroute_needs_reroute_target(table: RequestTable, sent: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"^this table can't reroute: it has no reroute_target$"):
        table.request(C1, REQ, reroute=True)
    assert (sent, len(table)) == ([], 0)


# Bookkeeping


def test_many_requests_leave_nothing_behind(
    rtable: RequestTable, sent: list[Any], clock: FakeClock
) -> None:
    requests = [build_package(PackageType.REQUEST, "n", {"i": i}) for i in range(300)]
    conns = [(C1, C2, C3)[i % 3] for i in range(300)]
    waiters = []
    for i, (conn, request) in enumerate(zip(conns, requests, strict=True)):
        waiters.append(rtable.request(conn, request, reroute=i % 2 == 0, timeout=1 + i % 7))
        waiters.append(rtable.request(conn, request, timeout=3))  # a second waiter on each
    assert (len(rtable), len(sent)) == (600, 300)

    events: list[Any] = []
    for conn, request in zip(conns[:100], requests[:100], strict=True):
        events += rtable.receive_response(conn, answer(request))
    cancelled = waiters[200:400:2]
    for waiter in cancelled:
        rtable.cancel(waiter)
    clock.advance(5)
    events += rtable.tick()
    events += rtable.connection_lost(C3)
    clock.advance(10)
    events += rtable.tick()
    events += rtable.connection_lost(C1) + rtable.connection_lost(C2)
    assert_empty(rtable, C1, C2, C3)

    # Every waiter was resolved exactly once: answered, cancelled, expired or failed.
    resolved = list(cancelled)
    for event in events:
        if isinstance(event, (ResponseReceived, RequestFailed)):
            resolved += event.waiters
        elif isinstance(event, RequestExpired):
            resolved.append(event.waiter)
    assert sorted(resolved) == sorted(waiters)
    assert sum(isinstance(event, ResponseReceived) for event in events) == 100
