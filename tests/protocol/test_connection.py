"""The per-connection protocol, on a fake clock: no sockets, no event loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from trustp2p.exceptions import PackageError
from trustp2p.identity import Identity
from trustp2p.protocol.actions import (
    Action,
    Block,
    Close,
    DeliverGossip,
    DeliverResponse,
    Dispatch,
    Ignore,
    Introduced,
    Lost,
    Penalty,
    PingAnswered,
    SelfDial,
    Send,
    Throttle,
    Unhandled,
)
from trustp2p.protocol.close import CloseCode
from trustp2p.protocol.connection import (
    GOSSIP_BYTES_PER_TOKEN,
    MAX_ERROR_EVENT_CHARS,
    MAX_ERROR_TEXT_CHARS,
    WARN_INVALID,
    ConnectionProtocol,
    ConnectionState,
    body_cost,
    error_answer,
    gossip_cost,
)
from trustp2p.protocol.gossip import sign_message
from trustp2p.protocol.handshake import (
    HANDSHAKE_MAGIC,
    HELLO_EVENT,
    SECURE_PEER,
    VERSION_EVENT,
    version_body,
)
from trustp2p.protocol.limits import TokenBucket
from trustp2p.protocol.package import Package, PackageType, build_package, decode, encode
from trustp2p.protocol.path import WriteStall

from ..conftest import FakeClock

PEER = "tpaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
VERSION = version_body(library_version="0.1.0")
HANDLED = {(PackageType.REQUEST, "echo"), (PackageType.TALK, "chat")}


class Matching:
    """A container of the (package type, event) pairs ``predicate`` accepts."""

    def __init__(self, predicate: Callable[[PackageType, str], bool]) -> None:
        self.predicate = predicate

    def __contains__(self, key: object) -> bool:
        package_type, event = key  # type: ignore[misc]
        return self.predicate(package_type, event)


EVERYTHING = Matching(lambda package_type, event: True)
# The original's heartbeat, as captured (shared/protocol/README.md).
ORIGINAL_PING = (
    "0a03312e30120131180a220470696e672a027b7d"
    "322c5a4772334a426a6d4232476a336a4c38305442547654585472694d64486f70623348766a683275317a6b553d"
)
ORIGINAL_PONG = (
    "0a03312e30120131180b2204706f6e672a0f7b22736c656570223a66616c73657d"
    "322c5a4772334a426a6d4232476a336a4c38305442547654585472694d64486f70623348766a683275317a6b553d"
)


def ours() -> Package:
    return build_package(PackageType.TALK, VERSION_EVENT, VERSION)


def protocol(
    clock: Callable[[], float],
    *,
    secure: bool = False,
    budget: TokenBucket | None = None,
    start: bool = True,
    **options: Any,
) -> ConnectionProtocol:
    """A connection on ``clock``, started unless ``start`` is false; ``options``
    override the other arguments of :class:`ConnectionProtocol`."""
    arguments: dict[str, Any] = {
        "secure": secure,
        "peer_id": PEER if secure else None,
        "introduction": ours(),
        "clock": clock,
        "handled": HANDLED,
        "request_budget": budget,
    }
    arguments.update(options)
    connection = ConnectionProtocol(**arguments)
    if start:
        assert connection.start() == [Send(arguments["introduction"])]
    return connection


def hello(peer_id: str = PEER, urls: object = ("ws://127.0.0.1:1/",)) -> bytes:
    body = {**VERSION, "peer_id": peer_id, "listen_urls": list(urls)}  # type: ignore[call-overload]
    return encode(build_package(PackageType.TALK, HELLO_EVENT, body))


def request(event: str = "echo", body: dict[str, object] | None = None) -> bytes:
    return encode(build_package(PackageType.REQUEST, event, body or {}))


def throttle_delay(action: object) -> float:
    """The delay of a Throttle action (compared with pytest.approx by the caller)."""
    assert isinstance(action, Throttle)
    return action.delay


def test_states_from_start_to_closed(clock: FakeClock) -> None:
    connection = protocol(clock, start=False, handled=())
    assert connection.state is ConnectionState.HANDSHAKING
    assert connection.start() == [Send(ours())]
    assert connection.state is ConnectionState.INTRODUCED
    assert connection.start() == []  # once
    connection.receive_data(encode(ours()))
    assert connection.state is ConnectionState.OPEN
    connection.close()
    assert connection.state is ConnectionState.CLOSING
    assert connection.receive_data(request()) == []  # nothing dispatched once closing
    connection.connection_lost()
    assert connection.state is ConnectionState.CLOSED
    connection.close()
    assert connection.state is ConnectionState.CLOSED


def test_plain_version_talk_introduces_the_peer(clock: FakeClock) -> None:
    connection = protocol(clock)
    actions = connection.receive_data(encode(ours()))
    assert actions == [Introduced(VERSION, [])]
    assert connection.peer_version == VERSION and connection.last_valid
    assert connection.peer_max_size is None  # it didn't say


def test_the_peers_introduction_says_its_largest_package(clock: FakeClock) -> None:
    connection = protocol(clock)
    body = version_body(library_version="0.1.0", max_package_size=4096)
    connection.receive_data(encode(build_package(PackageType.TALK, VERSION_EVENT, body)))
    assert connection.peer_max_size == 4096


def test_plain_peer_that_never_introduces_itself_still_works(clock: FakeClock) -> None:
    """The shipped original never sends a decodable version talk."""
    connection = protocol(clock)
    [action] = connection.receive_data(request())
    assert type(action) is Dispatch and action.package.event == "echo"
    assert connection.state is ConnectionState.OPEN


def test_empty_text_frame_of_the_original_is_ignored(clock: FakeClock) -> None:
    connection = protocol(clock)
    [action] = connection.receive_data("")
    assert type(action) is Ignore and "empty text frame" in action.reason
    assert connection.invalid == 0 and not connection.last_valid
    # It is the original's introduction: the peer finished its handshake.
    assert connection.state is ConnectionState.OPEN


NONCE = "5f1c9a7e2b3d4c6a"


def test_our_own_nonce_means_we_dialled_ourselves(clock: FakeClock) -> None:
    ours_with_nonce = build_package(
        PackageType.TALK, VERSION_EVENT, version_body(library_version="0.1.0", nonce=NONCE)
    )
    connection = protocol(
        clock, start=False, introduction=ours_with_nonce, handled=EVERYTHING, nonce=NONCE
    )
    connection.start()
    # Our own version talk comes back: the other end of this connection is us.
    assert connection.receive_data(encode(ours_with_nonce)) == [
        SelfDial(CloseCode.NORMAL_CLOSURE, "dialled ourselves")
    ]
    assert connection.state is ConnectionState.CLOSING
    assert connection.invalid == 0  # nobody is at fault
    assert connection.receive_data(request()) == []


def test_another_nonce_or_none_is_another_node(clock: FakeClock) -> None:
    for body in (version_body(library_version="0.1.0", nonce="0123456789abcdef"), VERSION):
        connection = protocol(clock, start=False, handled=EVERYTHING, nonce=NONCE)
        connection.start()
        talk = build_package(PackageType.TALK, VERSION_EVENT, body)
        assert connection.receive_data(encode(talk)) == [Introduced(body, [])]


def test_the_nonce_is_a_new_key_of_the_version_body() -> None:
    assert version_body(library_version="0.1.0", nonce=NONCE) == {**VERSION, "nonce": NONCE}
    assert "nonce" not in VERSION


def test_empty_text_frame_on_a_secure_connection_is_invalid(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    [action] = connection.receive_data("")
    assert type(action) is Penalty
    assert connection.invalid == 1


def test_secure_hello_introduces_the_peer_with_its_urls(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    actions = connection.receive_data(hello())
    assert len(actions) == 1 and type(actions[0]) is Introduced
    assert actions[0].listen_urls == ["ws://127.0.0.1:1"]
    assert connection.listen_urls == ["ws://127.0.0.1:1"]
    assert connection.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    "data",
    [request(), encode(build_package(PackageType.TALK, "chat", {}))],
    ids=["request", "talk"],
)
def test_secure_mode_accepts_nothing_before_hello(clock: FakeClock, data: bytes) -> None:
    connection = protocol(clock, secure=True)
    actions = connection.receive_data(data)
    assert [type(a) for a in actions] == [Penalty, Close]
    close = actions[1]
    assert isinstance(close, Close)
    assert close.code == CloseCode.POLICY_VIOLATION
    assert close.reason.endswith("before hello")
    assert connection.state is ConnectionState.CLOSING


def test_secure_mode_refuses_a_version_talk_instead_of_hello(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    [action] = connection.receive_data(encode(ours()))
    assert action == Penalty("version talk on a secure connection: hello expected")
    assert connection.state is ConnectionState.INTRODUCED


def test_hello_naming_another_peer_blocks(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    actions = connection.receive_data(hello(peer_id="tp" + "b" * 32))
    assert actions == [Block("hello names another peer id")]
    assert connection.state is ConnectionState.CLOSING


def test_invalid_listen_urls_are_penalised_but_introduce(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    actions = connection.receive_data(hello(urls=["ws://x:1"] * 9))
    assert [type(a) for a in actions] == [Penalty, Introduced]
    assert "exceeds the limit of 8" in actions[0].reason  # type: ignore[union-attr]
    assert connection.listen_urls == []


def test_incompatible_version_closes_with_the_reason(clock: FakeClock) -> None:
    connection = protocol(clock)
    body = {**VERSION, "protocol_version": "2.0"}
    data = encode(build_package(PackageType.TALK, VERSION_EVENT, body))
    actions = connection.receive_data(data)
    assert actions == [
        Close(
            CloseCode.PROTOCOL_ERROR,
            "protocol version 2.0 is incompatible: the closing node speaks major version 1,"
            " the other 2",
        )
    ]


@pytest.mark.parametrize("secure", [False, True])
def test_an_introduction_from_another_network_closes_with_the_reason(
    clock: FakeClock, secure: bool
) -> None:
    # Before, the package's own alt made it an invalid package like any other: the peer
    # was counted against, never told why, and blocked in the end.
    connection = protocol(clock, secure=secure)
    event = HELLO_EVENT if secure else VERSION_EVENT
    body = {**VERSION, "alt": "2"}
    data = encode(build_package(PackageType.TALK, event, body, alt="2"))
    actions = connection.receive_data(data)
    reason = "network alt '2' is another network: the closing node runs on '1'"
    assert actions == [Close(CloseCode.PROTOCOL_ERROR, reason)]


def test_a_second_introduction_is_ignored(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    connection.receive_data(hello())
    [action] = connection.receive_data(hello(urls=["ws://127.0.0.2:2"]))
    assert type(action) is Ignore
    assert connection.listen_urls == ["ws://127.0.0.1:1"]


@pytest.mark.parametrize(("version", "alt"), [("2.0", "1"), ("1.0", "2")])
def test_package_of_another_version_or_network_is_invalid(
    clock: FakeClock, version: str, alt: str
) -> None:
    connection = protocol(clock)
    package = build_package(PackageType.REQUEST, "echo", {}, version=version, alt=alt)
    actions = connection.receive_data(encode(package))
    assert [type(a) for a in actions] == [Penalty, Send]
    answer = actions[1].package  # type: ignore[union-attr]
    assert answer.type is PackageType.RESPONSE and answer.tag == package.tag
    assert answer.body["error"].startswith("package of protocol version")


def test_minor_version_differences_are_accepted(clock: FakeClock) -> None:
    connection = protocol(clock)
    package = build_package(PackageType.REQUEST, "echo", {}, version="1.7")
    [action] = connection.receive_data(encode(package))
    assert type(action) is Dispatch


def test_routing_by_type(clock: FakeClock) -> None:
    connection = protocol(clock)
    response = build_package(PackageType.RESPONSE, "echo", {}, tag="t")
    gossip = build_package(PackageType.GOSSIP, "chat", {})
    talk = build_package(PackageType.TALK, "chat", {})
    unknown_talk = build_package(PackageType.TALK, "other", {})
    assert connection.receive_package(response) == [DeliverResponse(response)]
    assert connection.receive_package(gossip) == [DeliverGossip(gossip)]
    assert connection.receive_package(talk) == [Dispatch(talk)]
    # Dropped, but not silently: the node counts and logs an Unhandled.
    assert connection.receive_package(unknown_talk) == [Unhandled(unknown_talk)]


def test_unhandled_request_is_answered_with_an_error(clock: FakeClock) -> None:
    connection = protocol(clock)
    data = request("nope")
    [action] = connection.receive_data(data)
    assert isinstance(action, Send)
    assert action.package.body == {"error": "no handler for REQUEST 'nope'"}
    assert action.package.tag == decode(data).tag
    assert connection.invalid == 0


def test_invalid_packages_are_counted_and_requests_answered(clock: FakeClock) -> None:
    connection = protocol(clock)
    good = decode(request())
    broken = Package(PackageType.REQUEST, "echo", {}, tag=good.tag, body_json="[1]")
    actions = connection.receive_data(encode(broken))
    assert [type(a) for a in actions] == [Penalty, Send]
    assert actions[0] == Penalty("invalid package: body is not a JSON object but an array")
    answer = actions[1].package  # type: ignore[union-attr]
    assert answer.body == {"error": "invalid request: body is not a JSON object but an array"}
    assert answer.tag == good.tag


def test_a_request_whose_event_is_not_utf8_is_answered(clock: FakeClock) -> None:
    # Found by an attacker's test: no answer, and the requester waited its whole
    # response_timeout (300 s by default).
    connection = protocol(clock)
    good = decode(request())
    frame = encode(Package(PackageType.REQUEST, "ab", {}, tag=good.tag))
    actions = connection.receive_data(frame.replace(b"\x22\x02ab", b"\x22\x02\xff\xfe", 1))
    assert [type(a) for a in actions] == [Penalty, Send]
    answer = actions[1].package  # type: ignore[union-attr]
    assert answer.body == {"error": "invalid request: event is not valid UTF-8"}
    assert answer.tag == good.tag


def test_an_invalid_response_fails_its_request_at_once(clock: FakeClock) -> None:
    # Found by a tester against the original, whose RESPONSE bodies may be JSON arrays:
    # the response was refused and the request waited for its timeout (300 s by
    # default). The request fails now, saying why; the response still counts invalid.
    connection = protocol(clock)
    broken = Package(PackageType.RESPONSE, "echo", {}, tag="T", body_json="[1]")
    actions = connection.receive_data(encode(broken))
    assert [type(a) for a in actions] == [Penalty, DeliverResponse]
    answer = actions[1].package  # type: ignore[union-attr]
    assert (answer.type, answer.event, answer.tag) == (PackageType.RESPONSE, "echo", "T")
    assert answer.body == {"error": "invalid response: body is not a JSON object but an array"}
    assert connection.invalid == 1
    # A pong, a talk or a response without a tag: nothing to fail.
    for package_type, tag in ((PackageType.HEARTBEAT_PONG, "T"), (PackageType.RESPONSE, "")):
        broken = Package(package_type, "echo", {}, tag=tag, body_json="[1]")
        assert [type(a) for a in connection.receive_data(encode(broken))] == [Penalty]


def test_invalid_packages_warn_then_go_quiet(clock: FakeClock) -> None:
    connection = protocol(clock)
    penalties = []
    for _ in range(WARN_INVALID + 2):
        [penalty] = connection.receive_data(b"\xff")
        assert isinstance(penalty, Penalty)
        penalties.append((penalty.warn, penalty.last_warning))
    assert penalties[: WARN_INVALID - 1] == [(True, False)] * (WARN_INVALID - 1)
    assert penalties[WARN_INVALID - 1] == (True, True)
    assert penalties[WARN_INVALID:] == [(False, False)] * 2
    assert connection.invalid == WARN_INVALID + 2


def test_oversized_package_is_invalid(clock: FakeClock) -> None:
    connection = protocol(clock, start=False, handled=EVERYTHING, max_package_size=100)
    [penalty, *_] = connection.receive_data(request(body={"x": "y" * 200}))
    assert isinstance(penalty, Penalty) and "exceeds" in penalty.reason


def test_secure_handshake_bytes_on_a_plain_node_close_with_the_reason(clock: FakeClock) -> None:
    connection = protocol(clock)
    actions = connection.receive_data(HANDSHAKE_MAGIC + b"\x00" * 32)
    assert actions == [Close(CloseCode.POLICY_VIOLATION, SECURE_PEER)]
    assert connection.invalid == 0


def test_penalise_from_a_thread_counts(clock: FakeClock) -> None:
    connection = protocol(clock)
    assert connection.penalise("bad my_url") == [Penalty("bad my_url")]
    assert connection.invalid == 1


def test_request_budget_throttles_and_never_refuses(clock: FakeClock) -> None:
    budget = TokenBucket(rate=10.0, burst=2, now=clock())
    connection = protocol(clock, budget=budget)
    assert [type(a) for a in connection.receive_data(request())] == [Dispatch]
    assert [type(a) for a in connection.receive_data(request())] == [Dispatch]
    actions = connection.receive_data(request())
    assert actions[0] == Dispatch(decode(request()))  # still served
    assert throttle_delay(actions[1]) == pytest.approx(0.1)
    actions = connection.receive_data(request())
    assert throttle_delay(actions[1]) == pytest.approx(0.2)
    clock.advance(0.2)  # the debt is paid: within budget again
    assert [type(a) for a in connection.receive_data(request())] == [Dispatch, Throttle]
    clock.advance(1.0)
    assert [type(a) for a in connection.receive_data(request())] == [Dispatch]
    assert connection.invalid == 0


def test_gossip_spends_a_budget_of_its_own(clock: FakeClock) -> None:
    # Found by an attacker's test: one connection sent 50,000 validly signed messages
    # in 6.5 s (a signature check each), with no budget at all. Gossip has its own
    # (gossip_rate 1000/s by default): a busy relay isn't slowed by its requests' one.
    requests = TokenBucket(rate=10.0, burst=1, now=clock())
    gossip = TokenBucket(rate=10.0, burst=2, now=clock())
    connection = protocol(clock, budget=requests, gossip_budget=gossip)
    message = encode(build_package(PackageType.GOSSIP, "chat", {}))
    assert [type(a) for a in connection.receive_data(message)] == [DeliverGossip]
    assert [type(a) for a in connection.receive_data(message)] == [DeliverGossip]
    actions = connection.receive_data(message)
    assert [type(a) for a in actions] == [DeliverGossip, Throttle]
    assert throttle_delay(actions[1]) == pytest.approx(0.1)
    assert [type(a) for a in connection.receive_data(request())] == [Dispatch]  # untouched
    assert connection.invalid == 0


def test_a_costly_answer_charges_the_request_budget(clock: FakeClock) -> None:
    budget = TokenBucket(rate=10.0, burst=5, now=clock())
    connection = protocol(clock, budget=budget)
    assert connection.charge(4.0) == []  # 1 token left
    [throttle] = connection.charge(3.0)
    assert throttle_delay(throttle) == pytest.approx(0.2)
    assert protocol(clock).charge(100.0) == []  # no budget: no limit


def test_talks_spend_the_request_budget(clock: FakeClock) -> None:
    # A flood of talks, handled or not, slows the peer down as a flood of requests does.
    budget = TokenBucket(rate=10.0, burst=2, now=clock())
    connection = protocol(clock, budget=budget, handled={(PackageType.TALK, "note")})
    note = encode(build_package(PackageType.TALK, "note", {}))
    unknown = encode(build_package(PackageType.TALK, "unknown", {}))
    assert [type(a) for a in connection.receive_data(note)] == [Dispatch]
    assert [type(a) for a in connection.receive_data(unknown)] == [Unhandled]
    assert throttle_delay(connection.receive_data(note)[1]) == pytest.approx(0.1)
    assert throttle_delay(connection.receive_data(request())[1]) == pytest.approx(0.2)  # shared
    assert connection.invalid == 0


def test_system_packages_spend_the_request_budget(clock: FakeClock) -> None:
    # Found by an attacker: SYSTEM packages never spent it (2.7 M in 20 s, unthrottled).
    budget = TokenBucket(rate=10.0, burst=2, now=clock())
    connection = protocol(clock, budget=budget)
    system = encode(build_package(PackageType.SYSTEM, "anything", {}))
    connection.receive_data(system)
    connection.receive_data(system)
    assert throttle_delay(connection.receive_data(system)[-1]) == pytest.approx(0.1)


def test_bodies_of_many_values_cost_more_of_the_budget(clock: FakeClock) -> None:
    # Found by an attacker: 1 MB bodies of [[],[],...] took 80 ms of the event loop each
    # to read, and cost one token like any package: 100 of them a second per peer id.
    # attacker49 F2: with only the brackets counted, 1 MiB of ["x","x",...] took 43 ms.
    budget = TokenBucket(rate=10.0, burst=10, now=clock())
    connection = protocol(clock, budget=budget, handled={(PackageType.TALK, "note")})
    lists = encode(build_package(PackageType.TALK, "note", {"x": [[]] * 3000}))
    text = encode(build_package(PackageType.TALK, "note", {"x": "a" * 100_000}))
    strings = encode(build_package(PackageType.TALK, "note", {"x": ["x"] * 2000}))
    assert [type(a) for a in connection.receive_data(lists)] == [Dispatch]  # 1 + 6 tokens
    assert [type(a) for a in connection.receive_data(text)] == [Dispatch]  # 1: no values
    actions = connection.receive_data(strings)  # 1 + 2 tokens, 2 left: 1 short
    assert throttle_delay(actions[1]) == pytest.approx(0.1)
    actions = connection.receive_data(lists)
    assert throttle_delay(actions[1]) == pytest.approx(0.8)  # 1 short before, 7 more


def test_a_body_read_the_slow_way_pays_for_its_values(clock: FakeClock) -> None:
    # Found in review (r66 A1): one 19-digit integer sends a body to the standard
    # library's reader; 1 MiB of floats with one took 101-117 ms, at one token.
    budget = TokenBucket(rate=10.0, burst=30, now=clock())
    connection = protocol(clock, budget=budget, handled={(PackageType.TALK, "note")})
    slow = encode(build_package(PackageType.TALK, "note", {"x": [10**20], "f": [1.5] * 5000}))
    fast = encode(build_package(PackageType.TALK, "note", {"x": [10**15], "f": [1.5] * 5000}))
    assert [type(a) for a in connection.receive_data(fast)] == [Dispatch]  # 1 + 5: orjson's
    assert connection.slow_read == 0
    assert [type(a) for a in connection.receive_data(slow)] == [Dispatch]  # 1 + 5 + 10 tokens
    assert connection.slow_read == 5003  # its commas and colons, plus one
    actions = connection.receive_data(slow)  # 8 tokens left: 8 short
    assert throttle_delay(actions[1]) == pytest.approx(0.8)
    # A package that fails to decode doesn't keep the last one's count (review68 A3).
    assert connection.receive_data(b"\x00junk")
    assert connection.slow_read == 0


def test_a_long_string_read_the_slow_way_costs_little(clock: FakeClock) -> None:
    # review68 A2: charged by its characters, an honest body of 64-bit ids (a 19-digit
    # run sends it the slow way) paid 25 times what it costs: strings read fast there too.
    budget = TokenBucket(rate=10.0, burst=10, now=clock())
    connection = protocol(clock, budget=budget, handled={(PackageType.TALK, "note")})
    body = {"ids": [2**63], "text": "a" * 100_000}  # (a list: the exactness check reads it)
    ids = encode(build_package(PackageType.TALK, "note", body))
    for _ in range(10):
        assert [type(a) for a in connection.receive_data(ids)] == [Dispatch]  # 1 token each
    assert connection.slow_read == 4  # one comma, two colons, plus one


def test_a_gossip_package_read_the_slow_way_pays_for_its_values(clock: FakeClock) -> None:
    # review68 A1: junk beside `data` with one 19-digit integer was read the slow way
    # (104 ms a MiB), and charged nothing for it.
    gossip = TokenBucket(rate=10.0, burst=100, now=clock())
    connection = protocol(clock, gossip_budget=gossip)
    body = {"data": "{}", "x": [10**20], "f": [1.5] * 5000}
    junk = encode(build_package(PackageType.GOSSIP, "chat", body))
    actions = connection.receive_data(junk)  # 1 + 1 (its 20 KB) + 100 for its values
    assert throttle_delay(actions[1]) == pytest.approx(0.2)


def test_a_gossip_package_pays_for_its_size(clock: FakeClock) -> None:
    # Found by an attacker: one valid 200 KB message sent again and again on one
    # connection, a token each, took 98 % of the node's core (193 MB/s, each read,
    # parsed and hashed before it showed itself a copy).
    gossip = TokenBucket(rate=10.0, burst=26, now=clock())
    connection = protocol(clock, gossip_budget=gossip)
    big = encode(build_package(PackageType.GOSSIP, "chat", {"data": "a" * 200_000}))
    for _ in range(2):  # 1 + 12 tokens each: 200,000 // 16,384
        assert [type(a) for a in connection.receive_data(big)] == [DeliverGossip]
    actions = connection.receive_data(big)
    assert throttle_delay(actions[1]) == pytest.approx(1.3)
    small = encode(build_package(PackageType.GOSSIP, "chat", {"data": "a" * 16_000}))
    assert len(decode(small).body_json) < GOSSIP_BYTES_PER_TOKEN  # one token, as before
    assert throttle_delay(connection.receive_data(small)[1]) == pytest.approx(1.4)


def test_a_gossip_package_pays_for_its_bytes_not_its_characters(clock: FakeClock) -> None:
    """attacker37 N3: the size was counted in characters, and a duplicate flood of
    4-byte characters got 59 MB/s through (ASCII: 18.5)."""
    gossip = TokenBucket(rate=10.0, burst=26, now=clock())
    connection = protocol(clock, gossip_budget=gossip)
    wide = encode(build_package(PackageType.GOSSIP, "chat", {"data": "\U0001f600" * 50_000}))
    for _ in range(2):  # 1 + 12 tokens each, as 200,000 bytes of ASCII (before: 1 + 3)
        assert [type(a) for a in connection.receive_data(wide)] == [DeliverGossip]
    assert throttle_delay(connection.receive_data(wide)[1]) == pytest.approx(1.3)


def test_a_gossip_package_pays_for_the_containers_outside_its_data(clock: FakeClock) -> None:
    # Found by an attacker: counting the brackets in data (the application's body, a
    # string) charged honest relays for what they passed on, and their subscribers
    # stopped reading them. Found in review: counting none let junk beside it through.
    gossip = TokenBucket(rate=10.0, burst=40, now=clock())
    connection = protocol(clock, gossip_budget=gossip)
    brackets = encode(build_package(PackageType.GOSSIP, "chat", {"data": "[" * 15_000}))
    junk = encode(build_package(PackageType.GOSSIP, "chat", {"data": "{}", "x": [[]] * 3000}))
    for _ in range(30):  # one token each: the budget's 40 hold them
        assert [type(a) for a in connection.receive_data(brackets)] == [DeliverGossip]
    actions = connection.receive_data(junk)  # 1 + 30 tokens
    assert throttle_delay(actions[1]) == pytest.approx(2.1)
    assert gossip_cost('{"data":"[[["}', "[[[") == 0
    # Found in review: brackets escaped in data (\u005b) cancelled junk beside it, and
    # a key given twice hid it from a look at the values.
    escaped = '{"data":"' + "\\u005b" * 300 + '","x":' + "[" * 150 + "]" * 150 + "}"
    assert gossip_cost(escaped, "[" * 300) == 1
    twice = '{"data":"","x":[' + "[]," * 299 + '[]],"x":1}'
    assert gossip_cost(twice, "") == 3
    # Found in the next review: text that only looks like an escape, written by an
    # origin in data, made every relay pay for it.
    message = sign_message(Identity.generate(), "chat", 1, 1, {"t": "\\u005b" * 1000})
    relayed = encode(build_package(PackageType.GOSSIP, "chat", message.to_body(hops=2)))
    body = decode(relayed).body
    assert gossip_cost(decode(relayed).body_json, body["data"]) == 0


@pytest.mark.parametrize(
    ("body_json", "cost"),
    [
        ("", 0),
        ("[" * 1999, 0),  # too short to hold 1,000 containers: not counted
        ("[" * 2000, 2),
        ("{" * 1000 + " " * 1000, 1),
        ('{"x":"' + "a" * 10**6 + '"}', 0),
        ('{"x":[' + "[]," * 2499 + "[]]}", 5),  # 2,502 containers, 2,500 commas and colons
        ('{"x":"' + "a," * 1999 + '"}', 2),  # (in strings too)
        ('{"x":[' + "1," * 2999 + "1]}", 3),
    ],
)
def test_body_cost_counts_a_token_per_thousand_values(body_json: str, cost: int) -> None:
    assert body_cost(body_json) == cost


def test_the_peers_introduction_is_kept_small(clock: FakeClock) -> None:
    # Found by an attacker: a 1 MB hello was kept for the connection's life, and its
    # program string copied into every status answer.
    connection = protocol(clock)
    body = {**VERSION, "program": "p" * 10_000, "junk": [{}] * 1000, "program_version": [1]}
    connection.receive_data(encode(build_package(PackageType.TALK, VERSION_EVENT, body)))
    kept = {key: value for key, value in VERSION.items() if key != "program_version"}
    assert connection.peer_version == {**kept, "program": "p" * 100}  # a list: not kept


def test_the_clock_is_read_once_per_message(clock: FakeClock) -> None:
    """last_seen is the arrival time, and the request budget goes by it."""
    readings: list[float] = []

    def counting_clock() -> float:
        readings.append(clock())
        return clock()

    budget = TokenBucket(rate=10.0, burst=1, now=clock())
    connection = protocol(counting_clock, budget=budget)
    clock.advance(5.0)
    readings.clear()
    assert [type(a) for a in connection.receive_data(request())] == [Dispatch]
    assert throttle_delay(connection.receive_data(request())[1]) == pytest.approx(0.1)
    assert readings == [clock(), clock()]
    assert connection.last_seen == clock()
    clock.advance(1.0)
    connection.receive_package(decode(request()))
    assert connection.last_seen == clock()


def test_budget_is_shared_by_a_peers_connections(clock: FakeClock) -> None:
    """Reconnecting doesn't refill it: the node hands every connection of one peer the
    same bucket."""
    budget = TokenBucket(rate=1.0, burst=1, now=clock())
    first = protocol(clock, budget=budget)
    assert [type(a) for a in first.receive_data(request())] == [Dispatch]
    second = protocol(clock, budget=budget)
    assert [type(a) for a in second.receive_data(request())] == [Dispatch, Throttle]


def heartbeat(
    connection: ConnectionProtocol, *, last_bytes: float | None = None, backlog: int = 0
) -> list[Action]:
    return connection.heartbeat(
        last_bytes=connection.last_seen if last_bytes is None else last_bytes,
        backlog=lambda: backlog,
        reading_paused=False,
    )


def test_heartbeat_pings_on_schedule_with_the_originals_ping(clock: FakeClock) -> None:
    connection = protocol(clock)
    connection.start()
    assert heartbeat(connection) == []
    clock.advance(10.0)  # LivenessTimings().interval
    (send,) = heartbeat(connection)
    assert isinstance(send, Send)
    assert encode(send.package) == bytes.fromhex(ORIGINAL_PING)
    assert connection.liveness.outstanding == clock()
    assert heartbeat(connection) == []  # one ping outstanding at a time


def test_a_pong_answers_our_ping_and_reaches_the_request_table(clock: FakeClock) -> None:
    connection = protocol(clock)
    connection.start()
    clock.advance(10.0)
    (send,) = heartbeat(connection)
    assert isinstance(send, Send)
    clock.advance(0.25)
    pong = build_package(PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, tag=send.package.tag)
    actions = connection.receive_data(encode(pong))
    assert [type(a) for a in actions] == [PingAnswered, DeliverResponse]
    assert actions[0] == PingAnswered(0.25)
    assert connection.liveness.outstanding is None
    assert connection.last_seen == clock()
    assert connection.answered_ping  # the node charges the peer nothing for it
    # Another pong (to a thread's ping, or a late one) goes to the request table only,
    # as does a pong before any ping of ours.
    assert [type(a) for a in connection.receive_data(encode(pong))] == [DeliverResponse]
    assert not connection.answered_ping
    fresh = protocol(clock)
    fresh.start()
    assert [type(a) for a in fresh.receive_data(encode(pong))] == [DeliverResponse]
    assert not fresh.answered_ping


def test_a_peer_that_leaves_our_ping_unanswered_is_lost(clock: FakeClock) -> None:
    connection = protocol(clock)
    connection.start()
    connection.receive_data(encode(ours()))  # (it introduced itself)
    clock.advance(10.0)
    heartbeat(connection)
    for _ in range(2):
        clock.advance(4.0)
        # It talks, but complete packages are no excuse.
        connection.receive_data(encode(build_package(PackageType.TALK, "chat", {})))
        assert heartbeat(connection) == []
    clock.advance(4.0)
    assert heartbeat(connection) == [Lost("no pong within 10 s")]
    assert connection.state is ConnectionState.CLOSING
    assert heartbeat(connection) == []


@pytest.mark.parametrize("first", [b"", "talk"])
def test_an_original_peer_answers_our_ping_by_anything_it_says(
    clock: FakeClock, first: object
) -> None:
    # Found by a tester (t43 F1): the original's server answers no ping; a peer we
    # dialled that never introduced itself (its empty text frame, or a package first)
    # is one.
    connection = protocol(clock, inbound=False)
    connection.start()
    talk = encode(build_package(PackageType.TALK, "chat", {}))
    connection.receive_data("" if first == b"" else talk)
    clock.advance(13.0)  # (interval, and a period more: we dialled)
    (ping,) = heartbeat(connection)
    assert isinstance(ping, Send)
    clock.advance(4.0)
    connection.receive_data(talk)
    assert heartbeat(connection) == []
    assert connection.liveness.outstanding is None
    clock.advance(16.0)  # silent: pinged, and lost
    assert heartbeat(connection) == [Send(ping.package)]
    clock.advance(10.0)
    assert heartbeat(connection) == [Lost("no pong within 10 s")]


def talks_and_is_lost(connection: ConnectionProtocol, clock: FakeClock) -> None:
    """Our ping just sent: the peer talks every 4 s and never pongs: lost at 10 s,
    complete packages being no excuse."""
    talk = encode(build_package(PackageType.TALK, "chat", {}))
    for _ in range(2):
        clock.advance(4.0)
        connection.receive_data(talk)
        assert heartbeat(connection) == []
    clock.advance(4.0)
    assert heartbeat(connection) == [Lost("no pong within 10 s")]


def test_an_original_that_dialled_us_must_answer_our_ping(clock: FakeClock) -> None:
    # Found by a tester (t44): a peer that dialled us, never introduced itself, and
    # pinged without reading was kept for good; the original's client answers pings.
    connection = protocol(clock)
    connection.start()
    connection.receive_data("")
    clock.advance(10.0)
    heartbeat(connection)  # our ping
    talks_and_is_lost(connection, clock)


def test_a_server_that_introduces_itself_after_an_empty_frame_must_answer_our_ping(
    clock: FakeClock,
) -> None:
    # review76 F3: a version talk after the empty frame kept the excuse for good.
    connection = protocol(clock, inbound=False)
    connection.receive_data("")
    connection.receive_data(encode(ours()))
    clock.advance(13.0)  # (interval, and a period more: we dialled)
    (ping,) = heartbeat(connection)
    assert isinstance(ping, Send)
    talks_and_is_lost(connection, clock)


def test_a_plain_peer_that_said_nothing_is_pinged_and_its_pong_opens_it(
    clock: FakeClock,
) -> None:
    # Found by a tester (t44): the original's client may send nothing at all (its
    # version talk goes before its .proto is loaded); it answers pings.
    connection = protocol(clock)
    clock.advance(5.0)  # (half the handshake time: the node asks then)
    (send,) = connection.probe_silent()
    assert isinstance(send, Send) and encode(send.package) == bytes.fromhex(ORIGINAL_PING)
    clock.advance(0.5)
    actions = connection.receive_data(bytes.fromhex(ORIGINAL_PONG))
    assert [type(a) for a in actions] == [DeliverResponse]  # (no ping of the heartbeat's)
    assert connection.state is ConnectionState.OPEN


def test_an_unanswered_probe_is_not_the_heartbeats_to_charge(clock: FakeClock) -> None:
    # review78 F1: with a long handshake_timeout, the heartbeat round dropped a silent
    # connection as a lost peer (1001, a WARNING) before its handshake deadline.
    connection = protocol(clock)
    (send,) = connection.probe_silent()
    assert connection.liveness.outstanding is None
    clock.advance(10.0)  # (LivenessTimings().interval: the heartbeat's own ping is due)
    assert heartbeat(connection) == [Send(send.package)]
    clock.advance(9.0)
    assert heartbeat(connection) == []


@pytest.mark.parametrize("first", ["", "version", "talk"])
def test_a_peer_that_spoke_is_not_probed(clock: FakeClock, first: str) -> None:
    connection = protocol(clock)
    talk = build_package(PackageType.TALK, "chat", {})
    connection.receive_data({"": "", "version": encode(ours()), "talk": encode(talk)}[first])
    assert connection.probe_silent() == []


def test_a_secure_peer_is_not_probed(clock: FakeClock) -> None:
    connection = protocol(clock, secure=True)
    assert connection.probe_silent() == []
    assert connection.liveness.outstanding is None


def test_a_ping_nobody_handles_is_answered_at_once_with_the_originals_pong(
    clock: FakeClock,
) -> None:
    connection = protocol(clock)
    ping = build_package(PackageType.HEARTBEAT_PING, "ping", {})
    (send,) = connection.receive_package(ping)
    assert isinstance(send, Send)
    assert encode(send.package) == bytes.fromhex(ORIGINAL_PONG)


def test_a_ping_a_thread_handles_goes_to_the_thread(clock: FakeClock) -> None:
    connection = protocol(
        clock,
        start=False,
        handled=Matching(lambda package_type, event: package_type is PackageType.HEARTBEAT_PING),
    )
    ping = build_package(PackageType.HEARTBEAT_PING, "ping", {})
    assert connection.receive_package(ping) == [Dispatch(ping)]


def test_error_answers_are_bounded() -> None:
    answer = error_answer(PackageType.REQUEST, "e" * 900_000, "tag", "x" * 10_000)
    assert answer is not None
    assert len(answer.event) == MAX_ERROR_EVENT_CHARS
    assert len(answer.body["error"]) == MAX_ERROR_TEXT_CHARS
    assert len(encode(answer)) < 2048
    assert json.loads(answer.body_json) == answer.body


def test_error_answer_shapes() -> None:
    pong = error_answer(PackageType.HEARTBEAT_PING, "ping", "t", "no")
    assert pong is not None and pong.type is PackageType.HEARTBEAT_PONG
    assert error_answer(PackageType.TALK, "chat", "t", "no") is None
    assert error_answer(PackageType.REQUEST, "echo", "", "no") is None


def test_unanswerable_invalid_package_gets_no_answer(clock: FakeClock) -> None:
    connection = protocol(clock)
    actions = connection.receive_invalid(PackageError("garbage"))
    assert actions == [Penalty("invalid package: garbage")]


def test_write_stall_needs_no_progress_for_the_whole_timeout(clock: FakeClock) -> None:
    stall = WriteStall(10.0, clock(), taken=5_000)
    clock.advance(9.9)
    assert not stall.stalled(clock(), 5_000)
    clock.advance(0.1)
    assert stall.stalled(clock(), 5_000)


def test_a_slow_reader_is_not_a_stall(clock: FakeClock) -> None:
    """A 1 MiB frame crawling out: the peer takes a little at a time."""
    stall = WriteStall(10.0, clock(), taken=0)
    for taken in range(1, 60):
        clock.advance(5.0)
        assert not stall.stalled(clock(), taken * 1000)


def test_a_slow_reader_is_not_a_stall_while_writes_refill_the_buffer(clock: FakeClock) -> None:
    # Found by a tester: four 256 KiB requests over a 100 kbit/s link. Each time the
    # buffer drained below the limit the next request refilled it, so it never went
    # below its lowest size and the peer, reading all along, was cut after 20 s.
    stall = WriteStall(20.0, clock(), taken=0)
    written, buffered = 4 * 2**18, 4 * 2**18
    for _ in range(40):
        clock.advance(2.5)
        buffered -= 30_000  # taken by the peer...
        written += 30_000  # ...and written again by the next request
        buffered += 30_000 + 64  # (with its framing)
        assert not stall.stalled(clock(), written - buffered)
    # The same samples, taken as the buffer's size, never shrink: no progress seen.


def test_a_buffer_that_grows_without_draining_is_a_stall(clock: FakeClock) -> None:
    stall = WriteStall(10.0, clock(), taken=0)
    clock.advance(5.0)
    # 4,000 bytes written, 4,010 more in the buffer (framing): nothing taken.
    assert not stall.stalled(clock(), 4_000 - 4_010)
    clock.advance(5.0)
    assert stall.stalled(clock(), 8_000 - 8_020)


def test_a_peers_limit_is_kept_only_under_ours(clock: FakeClock) -> None:
    # Nothing to check per package when the peer takes as much as we do (the default).
    for said, kept in ((2**20, None), (2**21, None), (65536, 65536)):
        connection = protocol(clock)
        body = version_body(library_version="0.1.0", max_package_size=said)
        connection.receive_data(encode(build_package(PackageType.TALK, VERSION_EVENT, body)))
        assert connection.peer_max_size == kept
