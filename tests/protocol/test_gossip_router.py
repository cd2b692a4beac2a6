"""
The gossip core without sockets: signed messages (``GossipMessage``) and the router that
decides where they go (``GossipRouter``), driven by a fake clock and a recording ``send``,
plus a small deterministic network of routers wired by a queue.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import json
import random
from collections.abc import Iterable
from typing import Any, Literal, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from trustp2p.exceptions import GossipError
from trustp2p.identity import Identity, peer_id_from_public_key
from trustp2p.protocol.gossip import (
    GOSSIP_EVENTS,
    GossipMessage,
    GossipRouter,
    PeerKey,
    RouterAction,
    message_id,
    recent as recent_module,
    sign_message,
)
from trustp2p.protocol.gossip.batch import topic_chunks
from trustp2p.protocol.gossip.copies import SHED_FOR, SHED_KEPT

from ..conftest import FakeClock
from ..strategies import json_values

SUBSCRIPTIONS, GRAFT, PRUNE, IHAVE, IWANT = GOSSIP_EVENTS
TOPIC = "chat"


def _identity(n: int) -> Identity:
    """A deterministic identity: the same key in every run."""
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


ALICE = _identity(1)
BOB = _identity(2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _signed_bytes(topic: str, origin: str, seq: int, ts: int, data: str) -> bytes:
    """What the origin signs, as the wire format defines it (pinned here on purpose)."""
    return b"trustp2p-gossip/1\0" + f"{topic}\0{origin}\0{seq}\0{ts}\0{data}".encode()


def _raw_body(
    identity: Identity, topic: str, seq: int, ts: int, data: str, hops: int = 0
) -> dict[str, Any]:
    """A correctly signed body around any data text (sign_message only takes dicts)."""
    return {
        "origin": identity.peer_id,
        "seq": seq,
        "ts": ts,
        "data": data,
        "key": _b64(identity.public_key),
        "sig": _b64(identity.sign(_signed_bytes(topic, identity.peer_id, seq, ts, data))),
        "hops": hops,
    }


def _message(
    seq: int = 1, topic: str = TOPIC, identity: Identity = ALICE, hops: int = 0
) -> GossipMessage:
    message = sign_message(identity, topic, seq, 1_700_000_000_000 + seq, {"n": seq})
    if hops:
        message = GossipMessage.from_body(topic, message.to_body(hops=hops))
    return message


# Messages


def test_sign_message_builds_the_body_and_from_body_reads_it_back() -> None:
    message = sign_message(ALICE, TOPIC, 7, 1234, {"text": "héllo", "n": 1})
    text = '{"text":"héllo","n":1}'
    assert message.topic == TOPIC
    assert message.origin == ALICE.peer_id
    assert (message.seq, message.timestamp, message.data, message.hops) == (7, 1234, text, 0)
    assert message.key == ALICE.public_key
    assert message.signature == ALICE.sign(_signed_bytes(TOPIC, ALICE.peer_id, 7, 1234, text))
    assert message.id == message_id(ALICE.peer_id, 7, TOPIC, text)
    assert message.body == {"text": "héllo", "n": 1}

    body = message.to_body()
    assert body == {
        "origin": ALICE.peer_id,
        "seq": 7,
        "ts": 1234,
        "data": text,
        "key": _b64(ALICE.public_key),
        "sig": _b64(message.signature),
        "hops": 0,
    }
    decoded = GossipMessage.from_body(TOPIC, body)
    assert decoded == message
    assert decoded.body == {"text": "héllo", "n": 1}
    assert message.to_body(hops=3)["hops"] == 3
    assert GossipMessage.from_body(TOPIC, message.to_body(hops=3)).hops == 3


def test_from_body_takes_the_id_peek_id_gave_for_the_same_body() -> None:
    body = _message(1).to_body(hops=2)
    peeked = GossipMessage.peek_id(TOPIC, body)
    assert peeked is not None
    decoded = GossipMessage.from_body(TOPIC, body, peeked_id=peeked)
    assert decoded.id == peeked == GossipMessage.from_body(TOPIC, body).id


def test_a_topic_of_256_characters_is_the_longest() -> None:
    topic = "t" * 256
    message = sign_message(ALICE, topic, 1, 0, {})
    assert GossipMessage.from_body(topic, message.to_body()) == message
    with pytest.raises(ValueError, match=r"^a topic is a string of 1 to 256 characters$"):
        sign_message(ALICE, topic + "t", 1, 0, {})
    with pytest.raises(ValueError, match=r"^a topic is a string of 1 to 256 characters$"):
        sign_message(ALICE, "", 1, 0, {})


def test_sign_message_takes_only_a_dict() -> None:
    with pytest.raises(TypeError, match=r"^data must be a dict, not list$"):
        sign_message(ALICE, TOPIC, 1, 0, [1])  # type: ignore[arg-type]


def test_message_id_vector() -> None:
    # 16 bytes of SHA-256 over "origin\0seq\0topic\0data", base64url without padding.
    origin = "tp" + "a" * 32
    assert message_id(origin, 1, "chat", "{}") == "t9JcVrKapaXwJnGPoEgfgQ"
    digest = hashlib.sha256(f"{origin}\0{1}\0chat\0{{}}".encode()).digest()[:16]
    assert message_id(origin, 1, "chat", "{}") == (
        base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    )


def test_message_id_depends_on_origin_seq_topic_and_data_only() -> None:
    base = message_id(ALICE.peer_id, 1, TOPIC, "{}")
    assert message_id(ALICE.peer_id, 1, TOPIC, "{}") == base
    others = {
        message_id(BOB.peer_id, 1, TOPIC, "{}"),
        message_id(ALICE.peer_id, 2, TOPIC, "{}"),
        message_id(ALICE.peer_id, 1, "other", "{}"),
        message_id(ALICE.peer_id, 1, TOPIC, '{"a":1}'),
    }
    assert len(others) == 4
    assert base not in others
    # The timestamp is not part of the id: the same (origin, seq) republished later is
    # the same message.
    early = sign_message(ALICE, TOPIC, 1, 1, {})
    late = sign_message(ALICE, TOPIC, 1, 2, {})
    assert early.id == late.id == base


def _body(**changes: Any) -> dict[str, Any]:
    body = _message().to_body()
    for name, value in changes.items():
        if value is _DELETE:
            del body[name]
        else:
            body[name] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(
    ("topic", "body", "text"),
    [
        ("", _body(), "invalid topic"),
        ("t" * 257, _body(), "invalid topic"),
        (5, _body(), "invalid topic"),
        (TOPIC, _body(origin=_DELETE), "invalid origin"),
        (TOPIC, _body(origin=1), "invalid origin"),
        (TOPIC, _body(origin=ALICE.peer_id.upper()), "invalid origin"),
        (TOPIC, _body(origin=ALICE.peer_id[:-1]), "invalid origin"),
        (TOPIC, _body(origin=ALICE.peer_id + "a"), "invalid origin"),
        (TOPIC, _body(origin="xx" + ALICE.peer_id[2:]), "invalid origin"),
        (TOPIC, _body(seq=_DELETE), "invalid seq"),
        (TOPIC, _body(seq="1"), "invalid seq"),
        (TOPIC, _body(seq=1.0), "invalid seq"),
        (TOPIC, _body(seq=True), "invalid seq"),
        (TOPIC, _body(seq=0), "seq outside 1..9223372036854775807"),
        (TOPIC, _body(seq=-1), "seq outside 1..9223372036854775807"),
        (TOPIC, _body(seq=2**63), "seq outside 1..9223372036854775807"),
        (TOPIC, _body(ts=_DELETE), "invalid ts"),
        (TOPIC, _body(ts="1"), "invalid ts"),
        (TOPIC, _body(ts=1.5), "invalid ts"),
        (TOPIC, _body(ts=False), "invalid ts"),
        (TOPIC, _body(ts=-1), "ts outside 0..9007199254740991"),
        (TOPIC, _body(ts=2**53), "ts outside 0..9007199254740991"),
        (TOPIC, _body(ts=10**400), "ts outside 0..9007199254740991"),
        (TOPIC, _body(hops=None), "invalid hops"),
        (TOPIC, _body(hops=-1), "hops outside 0..255"),
        (TOPIC, _body(hops=256), "hops outside 0..255"),
        (TOPIC, _body(hops="0"), "invalid hops"),
        (TOPIC, _body(hops=1.0), "invalid hops"),
        (TOPIC, _body(data=_DELETE), "data is not JSON text"),
        (TOPIC, _body(data={"n": 1}), "data is not JSON text"),
        (TOPIC, _body(data=5), "data is not JSON text"),
        (TOPIC, _body(key="not base64!"), "key or signature is not base64"),
        (TOPIC, _body(sig="%%%%"), "key or signature is not base64"),
        (TOPIC, _body(key=5), "key or signature is not base64"),
        (TOPIC, _body(sig=None), "key or signature is not base64"),
        (TOPIC, _body(sig=["x"]), "key or signature is not base64"),
        (TOPIC, _body(key="é"), "key or signature is not base64"),
        (TOPIC, _body(key=_DELETE), "key or signature has the wrong size"),
        (TOPIC, _body(sig=_DELETE), "key or signature has the wrong size"),
        (TOPIC, _body(key=_b64(bytes(31))), "key or signature has the wrong size"),
        (TOPIC, _body(key=_b64(bytes(33))), "key or signature has the wrong size"),
        (TOPIC, _body(sig=_b64(bytes(63))), "key or signature has the wrong size"),
        (TOPIC, _body(sig=_b64(bytes(65))), "key or signature has the wrong size"),
        (TOPIC, _body(key=_b64(BOB.public_key)), "forged: the key is not the origin's"),
        (
            TOPIC,
            _body(key=_b64(BOB.public_key), origin=BOB.peer_id),
            "forged or altered: the signature doesn't match",
        ),
        (TOPIC, _body(sig=_b64(bytes(64))), "forged or altered: the signature doesn't match"),
        ("other", _body(), "forged or altered: the signature doesn't match"),
        (TOPIC, _body(seq=2), "forged or altered: the signature doesn't match"),
        (TOPIC, _body(ts=1), "forged or altered: the signature doesn't match"),
        (TOPIC, _body(data='{"n":2}'), "forged or altered: the signature doesn't match"),
        (TOPIC, _body(data='{"n": 1}'), "forged or altered: the signature doesn't match"),
    ],
)
def test_from_body_rejects(topic: Any, body: dict[str, Any], text: str) -> None:
    with pytest.raises(GossipError) as info:
        GossipMessage.from_body(topic, body)
    assert str(info.value) == text


def test_a_key_from_another_identity_with_the_origin_of_that_key_is_forged() -> None:
    # BOB's key and id, ALICE's signature: the id matches the key, the signature doesn't.
    body = _body(key=_b64(BOB.public_key), origin=BOB.peer_id)
    assert peer_id_from_public_key(BOB.public_key) == body["origin"]
    with pytest.raises(GossipError, match=r"^forged or altered: the signature doesn't match$"):
        GossipMessage.from_body(TOPIC, body)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ("not json", "data is not valid JSON"),
        ("", "data is not valid JSON"),
        ('{"a":1', "data is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "data is not valid JSON"),
        ("[1]", "data is not a JSON object"),
        ("null", "data is not a JSON object"),
        ('"text"', "data is not a JSON object"),
        ("1", "data is not a JSON object"),
    ],
)
def test_from_body_rejects_signed_data_that_is_not_a_json_object(data: str, text: str) -> None:
    body = _raw_body(ALICE, TOPIC, 1, 0, data)
    with pytest.raises(GossipError) as info:
        GossipMessage.from_body(TOPIC, body)
    assert str(info.value) == text


def test_from_body_accepts_any_signed_json_object_text() -> None:
    data = '{ "b" : [1, 2],\n "a": null }'
    message = GossipMessage.from_body(TOPIC, _raw_body(ALICE, TOPIC, 3, 5, data))
    assert message.data == data  # exactly as signed, not re-encoded
    assert message.body == {"b": [1, 2], "a": None}
    assert message.timestamp == 5
    assert message.id == message_id(ALICE.peer_id, 3, TOPIC, data)


@pytest.mark.parametrize(
    "data",
    [
        '{"f":[1.5,-0.0,5e-324,1.0]}',
        '{"n":NaN,"i":[Infinity,1e999]}',
        '{"big":123456789012345678901234567890,"s":"\\ud800"}',
        '{"a":1,"a":2.0}',
        '{"deep":' + "[" * 400 + "]" * 400 + "}",
    ],
)
def test_data_reads_as_the_standard_library_reads_it(data: str) -> None:
    # Read by orjson where it reads the same (review66 A3: 1 MiB of floats cost a relay
    # 53 ms at one token); what every node of every version accepts stays the same.
    message = GossipMessage.from_body(TOPIC, _raw_body(ALICE, TOPIC, 1, 0, data))
    assert json.dumps(message.body) == json.dumps(json.loads(data))


def test_from_body_limits_data_by_characters() -> None:
    data = '{"a":"ééééééééé"}'
    assert (len(data), len(data.encode())) == (17, 26)
    body = _raw_body(ALICE, TOPIC, 1, 0, data)
    assert GossipMessage.from_body(TOPIC, body, max_data=17).data == data
    with pytest.raises(GossipError) as info:
        GossipMessage.from_body(TOPIC, body, max_data=16)
    assert str(info.value) == "data of 17 characters exceeds 16"
    # The limit is checked before the signature: an oversized forgery costs no verification.
    body["sig"] = _b64(bytes(64))
    with pytest.raises(GossipError, match=r"^data of 17 characters exceeds 16$"):
        GossipMessage.from_body(TOPIC, body, max_data=16)


def test_hops_are_not_signed() -> None:
    message = _message()
    body = message.to_body()
    body["hops"] = 9
    relayed = GossipMessage.from_body(TOPIC, body)
    assert relayed.hops == 9
    assert (relayed.id, relayed.signature, relayed.data) == (
        message.id,
        message.signature,
        message.data,
    )
    del body["hops"]
    assert GossipMessage.from_body(TOPIC, body).hops == 0  # hops are optional


_json = json_values(max_leaves=6)
_FIELDS = ("origin", "seq", "ts", "data", "key", "sig", "hops")


@given(
    topic=st.sampled_from([TOPIC, "", "other"]) | st.text(max_size=300),
    changes=st.dictionaries(st.sampled_from(_FIELDS), _json | st.just(_DELETE)),
    extra=st.dictionaries(st.text(max_size=8), _json, max_size=3),
    max_data=st.none() | st.integers(0, 40),
)
@settings(max_examples=150)
def test_from_body_raises_only_gossip_error(
    topic: str, changes: dict[str, Any], extra: dict[str, Any], max_data: int | None
) -> None:
    body = {**extra, **_body(**changes)}
    try:
        message = GossipMessage.from_body(topic, body, max_data=max_data)
    except GossipError:
        return
    assert message.origin == ALICE.peer_id
    assert type(message.body) is dict


@given(st.dictionaries(st.text(max_size=8), _json, max_size=8), st.text(max_size=20))
def test_from_body_on_arbitrary_dicts_raises_only_gossip_error(
    body: dict[str, Any], topic: str
) -> None:
    with pytest.raises(GossipError):
        GossipMessage.from_body(topic, body)


# The router: helpers


Recorded = list[RouterAction]


def _router(
    *, seed: int = 0, clock: FakeClock | None = None, **options: Any
) -> tuple[GossipRouter, Recorded, FakeClock]:
    sent: Recorded = []
    clock = clock or FakeClock()
    router = GossipRouter(send=sent.append, clock=clock, rng=random.Random(seed), **options)
    return router, sent, clock


def _talks(sent: Recorded, event: str | None = None) -> list[tuple[PeerKey, str, dict[str, Any]]]:
    return [
        (a.peer, a.event, a.body)
        for a in sent
        if a.kind == "talk" and (event is None or a.event == event)
    ]


def _messages(sent: Recorded) -> list[tuple[PeerKey, GossipMessage]]:
    assert all(a.kind in ("talk", "message") for a in sent)
    return [(a.peer, a.message) for a in sent if a.kind == "message" and a.message is not None]


def _sorted(peers: Iterable[PeerKey]) -> list[int]:
    """Peers named by ints, in order."""
    numbers = list(peers)
    assert all(isinstance(p, int) for p in numbers)
    return sorted(cast(list[int], numbers))


def _with_peers(router: GossipRouter, sent: Recorded, peers: range, topics: list[str]) -> None:
    """Connect peers that subscribe to ``topics``, then forget what was sent."""
    for peer in peers:
        router.add_peer(peer)
        router.control(peer, SUBSCRIPTIONS, {"subscribe": topics, "unsubscribe": []})
    sent.clear()


def _meshed(
    peers: int = 10, *, seed: int = 0, **options: Any
) -> tuple[GossipRouter, Recorded, FakeClock]:
    """A router subscribed to TOPIC with ``peers`` subscribed peers and a full mesh."""
    router, sent, clock = _router(seed=seed, **options)
    _with_peers(router, sent, range(peers), [TOPIC])
    router.subscribe(TOPIC)
    sent.clear()
    return router, sent, clock


# Peers and subscriptions


def test_router_checks_the_degrees() -> None:
    with pytest.raises(
        ValueError, match=r"^need 1 <= degree_low <= degree <= degree_high, not "
    ) as info:
        _router(degree=3, degree_low=4)
    assert str(info.value) == "need 1 <= degree_low <= degree <= degree_high, not 4, 3, 12"
    with pytest.raises(ValueError, match=r"^need 1 <= degree_low <= degree <= degree_high, not "):
        _router(degree_low=0)
    with pytest.raises(ValueError, match=r"^need 1 <= degree_low <= degree <= degree_high, not "):
        _router(degree=13)
    router, _, _ = _router(degree=1, degree_low=1, degree_high=1)
    assert (router.degree, router.degree_low, router.degree_high) == (1, 1, 1)


def test_max_hops_is_at_most_what_peers_accept() -> None:
    # A relay sends at most max_hops - 1 hops; peers refuse more than MAX_HOPS (255).
    assert _router(max_hops=255)[0].max_hops == 255
    with pytest.raises(ValueError, match=r"^max_hops must be from 1 to 255, not 256$"):
        _router(max_hops=256)
    with pytest.raises(ValueError, match=r"^max_hops must be from 1 to 255, not 0$"):
        _router(max_hops=0)


def test_add_peer_without_subscriptions_sends_nothing() -> None:
    router, sent, _ = _router()
    router.add_peer("p")
    assert sent == []
    assert router.peers == ["p"]
    assert router.peer_topics("p") == set()
    assert router.peer_topics("unknown") == set()


def test_add_peer_sends_our_subscriptions() -> None:
    router, sent, _ = _router()
    router.subscribe("b")
    router.subscribe("a")
    assert sent == []  # no peers yet
    router.add_peer("p")
    assert sent == [
        RouterAction("talk", "p", SUBSCRIPTIONS, {"subscribe": ["a", "b"], "unsubscribe": []})
    ]


def test_subscribe_announces_to_every_peer_and_grafts_up_to_degree() -> None:
    router, sent, _ = _router()
    _with_peers(router, sent, range(8), [TOPIC])
    router.add_peer(8)  # not subscribed
    router.subscribe(TOPIC)
    assert _talks(sent, SUBSCRIPTIONS) == [
        (p, SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": []}) for p in range(9)
    ]
    grafts = _talks(sent, GRAFT)
    assert len(grafts) == 6
    assert {p for p, _, _ in grafts} == router.mesh[TOPIC]
    assert all(body == {"topics": [TOPIC]} for _, _, body in grafts)
    assert router.mesh[TOPIC] < set(range(8))
    assert len(sent) == 9 + 6
    assert router.topics == {TOPIC}

    sent.clear()
    router.subscribe(TOPIC)  # already subscribed: nothing
    assert sent == []


def test_subscribe_grafts_all_subscribed_peers_when_there_are_fewer_than_degree() -> None:
    router, sent, _ = _router()
    _with_peers(router, sent, range(2), [TOPIC])
    _with_peers(router, sent, range(2, 5), ["other"])
    router.subscribe(TOPIC)
    assert router.mesh[TOPIC] == {0, 1}
    assert _sorted(p for p, _, _ in _talks(sent, GRAFT)) == [0, 1]


def test_subscriptions_from_a_peer_update_its_topics() -> None:
    router, sent, _ = _router()
    router.add_peer("p")
    router.control("p", SUBSCRIPTIONS, {"subscribe": ["a", "b"]})
    assert router.peer_topics("p") == {"a", "b"}
    router.control("p", SUBSCRIPTIONS, {"unsubscribe": ["a"], "subscribe": ["c"]})
    assert router.peer_topics("p") == {"b", "c"}
    router.control("p", SUBSCRIPTIONS, {})
    assert router.peer_topics("p") == {"b", "c"}
    assert sent == []  # we subscribe to none of them: no graft


def test_subscriptions_from_a_peer_graft_it_while_the_mesh_is_below_degree_low() -> None:
    router, sent, _ = _router()
    router.subscribe(TOPIC)
    for peer in range(6):
        router.add_peer(peer)
    sent.clear()
    for peer in range(6):
        router.control(peer, SUBSCRIPTIONS, {"subscribe": [TOPIC]})
    # degree_low is 4: the first four are grafted, then the mesh is big enough.
    assert router.mesh[TOPIC] == {0, 1, 2, 3}
    assert sent == [RouterAction("talk", p, GRAFT, {"topics": [TOPIC]}) for p in range(4)]
    assert router.peer_topics(5) == {TOPIC}

    sent.clear()
    router.control(0, SUBSCRIPTIONS, {"unsubscribe": [TOPIC]})
    assert router.mesh[TOPIC] == {1, 2, 3}
    assert router.peer_topics(0) == set()
    assert sent == []


def test_subscriptions_do_not_graft_in_flood_mode() -> None:
    router, sent, _ = _router(mode="flood")
    router.subscribe(TOPIC)
    _with_peers(router, sent, range(3), [TOPIC])
    assert router.mesh[TOPIC] == set()
    assert _talks(sent, GRAFT) == []


def test_a_topic_in_both_lists_leaves_the_peer_out_of_the_mesh() -> None:
    router, sent, _ = _router()
    router.subscribe(TOPIC)
    router.add_peer("p")
    with pytest.raises(GossipError, match=r"^a topic both subscribed and unsubscribed$"):
        router.control("p", SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": [TOPIC]})
    assert router.peer_topics("p") == set()
    assert "p" not in router.mesh[TOPIC]
    assert _talks(sent, GRAFT) == []


def test_graft_is_accepted_up_to_degree_high_then_pruned_back() -> None:
    router, sent, _ = _router(degree_high=8)
    router.subscribe(TOPIC)
    for peer in range(10):
        router.add_peer(peer)
        router.control(peer, GRAFT, {"topics": [TOPIC]})
    assert router.mesh[TOPIC] == set(range(8))
    assert _talks(sent, PRUNE) == [(8, PRUNE, {"topics": [TOPIC]}), (9, PRUNE, {"topics": [TOPIC]})]
    assert len(sent) == 10 + 2  # our subscriptions to each, then the two prunes
    # A graft tells us the peer subscribes.
    assert router.peer_topics(0) == {TOPIC}


def test_graft_for_a_topic_we_do_not_subscribe_to_is_pruned() -> None:
    router, sent, _ = _router()
    router.subscribe(TOPIC)
    router.add_peer("p")
    sent.clear()
    router.control("p", GRAFT, {"topics": ["other", TOPIC, "third"]})
    assert router.mesh == {TOPIC: {"p"}}
    assert sent == [RouterAction("talk", "p", PRUNE, {"topics": ["other", "third"]})]
    sent.clear()
    router.control("p", GRAFT, {})
    assert sent == []


def test_prune_removes_the_peer_from_the_mesh() -> None:
    router, sent, _ = _meshed(6)
    assert router.mesh[TOPIC] == set(range(6))
    router.control(0, PRUNE, {"topics": [TOPIC, "unknown"]})
    router.control(1, PRUNE, {"topics": [TOPIC]})
    assert router.mesh[TOPIC] == {2, 3, 4, 5}
    assert router.peer_topics(0) == {TOPIC}  # still subscribed, only out of the mesh
    assert sent == []


def test_unsubscribe_prunes_the_mesh_and_announces() -> None:
    router, sent, _ = _meshed(8)
    mesh = set(router.mesh[TOPIC])
    router.add_peer("late")
    sent.clear()
    router.unsubscribe(TOPIC)
    prunes = _talks(sent, PRUNE)
    assert {p for p, _, _ in prunes} == mesh
    assert all(body == {"topics": [TOPIC]} for _, _, body in prunes)
    assert _talks(sent, SUBSCRIPTIONS) == [
        (p, SUBSCRIPTIONS, {"subscribe": [], "unsubscribe": [TOPIC]}) for p in [*range(8), "late"]
    ]
    assert len(sent) == len(mesh) + 9
    assert router.topics == set()
    assert TOPIC not in router.mesh

    sent.clear()
    router.unsubscribe(TOPIC)  # not subscribed: nothing
    router.control(0, GRAFT, {"topics": [TOPIC]})
    assert sent == [RouterAction("talk", 0, PRUNE, {"topics": [TOPIC]})]


def test_remove_peer_drops_it_from_the_meshes() -> None:
    router, sent, _ = _router()
    router.subscribe("a")
    router.subscribe("b")
    _with_peers(router, sent, range(3), ["a", "b"])
    assert router.mesh == {"a": {0, 1, 2}, "b": {0, 1, 2}}
    router.remove_peer(1)
    router.remove_peer("unknown")
    assert router.mesh == {"a": {0, 2}, "b": {0, 2}}
    assert router.peers == [0, 2]
    assert router.peer_topics(1) == set()
    router.publish(_message(topic="a"))
    assert _sorted(p for p, _ in _messages(sent)) == [0, 2]
    router.control(1, GRAFT, {"topics": ["a"]})  # it's gone: ignored
    assert router.mesh["a"] == {0, 2}


def test_control_from_an_unknown_peer_is_ignored() -> None:
    router, sent, _ = _router()
    router.subscribe(TOPIC)
    router.control("stranger", SUBSCRIPTIONS, {"subscribe": [TOPIC]})
    router.control("stranger", GRAFT, {"topics": [TOPIC]})
    router.control("stranger", IHAVE, {"topic": TOPIC, "ids": ["x"]})
    router.control("stranger", SUBSCRIPTIONS, {"subscribe": "malformed, but ignored"})
    assert router.peers == []
    assert router.mesh[TOPIC] == set()
    assert sent == []


def test_unknown_control_events_are_ignored() -> None:
    router, sent, _ = _meshed(3)
    router.control(0, "gossip/whatever", {"topics": 5})
    assert sent == []


# Publish, receive, forward


def test_publish_sends_to_the_mesh_only() -> None:
    router, sent, _ = _meshed(10)
    message = _message()
    router.publish(message)
    sends = _messages(sent)
    assert {p for p, _ in sends} == router.mesh[TOPIC]
    assert len(sends) == 6
    assert all(m is message for _, m in sends)
    assert router.stats.published == 1
    assert router.stats.forwarded == 0
    assert router.seen(message.id)
    assert router.cached(message.id) is message


def test_publish_sends_to_every_subscribed_peer_when_the_mesh_is_empty() -> None:
    router, sent, _ = _meshed(10)
    _with_peers(router, sent, range(10, 12), ["other"])
    for peer in list(router.mesh[TOPIC]):
        router.control(peer, PRUNE, {"topics": [TOPIC]})
    assert router.mesh[TOPIC] == set()
    router.publish(_message())
    assert _sorted(p for p, _ in _messages(sent)) == list(range(10))


def test_publish_without_subscribing_sends_to_the_subscribed_peers() -> None:
    router, sent, _ = _router()
    _with_peers(router, sent, range(3), [TOPIC])
    _with_peers(router, sent, range(3, 6), ["other"])
    router.publish(_message())
    assert _sorted(p for p, _ in _messages(sent)) == [0, 1, 2]
    assert router.mesh == {}  # publishing doesn't subscribe


def test_publish_without_subscribing_sends_to_at_most_degree_peers() -> None:
    router, sent, _ = _router()
    _with_peers(router, sent, range(10), [TOPIC])
    router.publish(_message())
    assert len(_messages(sent)) == router.degree


def test_publish_when_nobody_subscribes_sends_nothing() -> None:
    router, sent, _ = _router()
    _with_peers(router, sent, range(3), ["other"])
    message = _message()
    router.publish(message)
    assert sent == []
    assert router.stats.published == 1
    assert router.seen(message.id)


def test_receive_returns_true_once_then_counts_duplicates() -> None:
    router, sent, _ = _meshed(3)
    message = _message()
    assert router.receive(0, message) is True
    assert router.receive(1, message) is False
    assert router.receive(0, GossipMessage.from_body(TOPIC, message.to_body(hops=4))) is False
    stats = router.stats
    assert (stats.received, stats.new, stats.duplicates) == (3, 1, 2)
    assert router.seen(message.id)
    assert not router.seen(_message(2).id)
    assert router.cached(message.id) is message
    assert sent == []  # receiving sends nothing; forward() does


def test_forward_sends_to_at_most_fanout_mesh_peers_with_one_more_hop() -> None:
    router, sent, _ = _meshed(10)
    message = _message(hops=2)
    source = next(iter(router.mesh[TOPIC]))
    assert router.receive(source, message)
    router.forward(source, message)
    sends = _messages(sent)
    assert len(sends) == 3
    targets = {p for p, _ in sends}
    assert len(targets) == 3
    assert targets <= router.mesh[TOPIC] - {source}
    for _, relayed in sends:
        assert relayed.hops == 3
        assert relayed == GossipMessage.from_body(TOPIC, message.to_body(hops=3))
        assert relayed.body == message.body
    assert router.stats.forwarded == 3


def test_a_flood_topic_goes_to_every_peer_that_carries_it() -> None:
    """Found by a new user: a hub (``relay_topics``) pushed each message to 3 of its
    mesh peers; its clients relay nothing onward, so those outside the mesh and the
    pushes waited for an ``ihave``, or a catch-up round (a third of a 30-client chat's
    messages took over 10 s). A hub's topics are flooded to every peer carrying them."""
    router, sent, _ = _meshed(30)
    router.flood_topics = frozenset({TOPIC})
    router.heartbeat()  # (the mesh: degree_high at most)
    assert len(router.mesh[TOPIC]) < 29
    sent.clear()
    router.receive(0, _message())
    router.forward(0, _message())
    assert _sorted(p for p, _ in _messages(sent)) == list(range(1, 30))
    assert router.stats.forwarded == 29
    sent.clear()
    router.flood_topics = frozenset({"other"})  # other topics: the mesh rules
    router.forward(1, _message(2))
    assert len(_messages(sent)) == 3


def test_forward_never_sends_back_to_the_source() -> None:
    router, sent, _ = _meshed(3, fanout=3)
    assert router.mesh[TOPIC] == {0, 1, 2}
    router.forward(1, _message())
    assert _sorted(p for p, _ in _messages(sent)) == [0, 2]
    sent.clear()
    router.forward(None, _message(2))  # from nobody (e.g. caught up): every mesh peer
    assert _sorted(p for p, _ in _messages(sent)) == [0, 1, 2]


def test_forward_without_a_mesh_samples_the_subscribed_peers() -> None:
    router, sent, _ = _meshed(10, fanout=4)
    for peer in list(router.mesh[TOPIC]):
        router.control(peer, PRUNE, {"topics": [TOPIC]})
    router.forward(0, _message())
    targets = [p for p, _ in _messages(sent)]
    assert len(targets) == len(set(targets)) == 4
    assert 0 not in targets


def test_forward_does_not_carry_topics_we_do_not_subscribe_to() -> None:
    router, sent, _ = _router()
    _with_peers(router, sent, range(5), [TOPIC])
    router.forward(0, _message())
    assert sent == []
    assert router.stats.forwarded == 0


def test_forward_stops_at_the_hop_limit() -> None:
    router, sent, _ = _meshed(5, max_hops=4, fanout=1)
    router.forward(0, _message(hops=2))
    assert [m.hops for _, m in _messages(sent)] == [3]
    assert router.stats.hop_limited == 0
    sent.clear()
    router.forward(0, _message(2, hops=3))
    router.forward(0, _message(3, hops=7))
    assert sent == []
    assert router.stats.hop_limited == 2
    assert router.stats.forwarded == 1


def test_a_copy_with_fewer_hops_sends_on_a_message_the_first_copy_could_not() -> None:
    """Found by an attacker (attacker36 F5): hops aren't signed; a relay that got its
    copies in first with 15 hops (max_hops - 1) stopped the next relay from pushing
    39 % of the messages (the honest copies after them were duplicates): p90 8 → 116 ms
    behind it. A copy that comes with fewer hops sends the message on, once."""
    router, sent, _ = _meshed(5, max_hops=4, fanout=2)
    first = _message(hops=3)
    assert router.receive(0, first)
    router.forward(0, first)
    assert sent == [] and router.stats.hop_limited == 1
    honest = _message(hops=1)
    assert router.duplicate(1, honest.id)
    router.fewer_hops(1, honest.id, honest.hops)
    sends = _messages(sent)
    assert len(sends) == 2 and all(m.hops == 2 and m.id == first.id for _, m in sends)
    assert 1 not in {p for p, _ in sends}
    cached = router.cached(first.id)  # what an iwant gets has the fewer hops too
    assert cached is not None and cached.hops == 1 and cached.id == first.id
    sent.clear()
    router.fewer_hops(2, honest.id, 0)  # once
    router.fewer_hops(2, _message(2).id, 0)  # (never held back: nothing to do)
    router.fewer_hops(2, honest.id, "0")
    assert sent == []
    limited = _message(3, hops=3)
    assert router.receive(0, limited)
    router.forward(0, limited)
    router.fewer_hops(1, limited.id, 3)  # no fewer: still held back
    assert sent == []


def test_flood_mode_forwards_to_every_subscribed_peer() -> None:
    router, sent, _ = _router(mode="flood", fanout=1)
    router.subscribe(TOPIC)
    _with_peers(router, sent, range(10), [TOPIC])
    _with_peers(router, sent, range(10, 12), ["other"])
    router.forward(3, _message(hops=1))
    sends = _messages(sent)
    assert _sorted(p for p, _ in sends) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert {m.hops for _, m in sends} == {2}
    assert router.stats.forwarded == 9
    sent.clear()
    router.publish(_message(2))
    assert _sorted(p for p, _ in _messages(sent)) == list(range(10))


# Heartbeat


def test_heartbeat_refills_the_mesh_to_degree_below_degree_low() -> None:
    router, sent, _ = _meshed(10)
    for peer in list(router.mesh[TOPIC])[:3]:
        router.control(peer, PRUNE, {"topics": [TOPIC]})
    assert len(router.mesh[TOPIC]) == 3
    kept = set(router.mesh[TOPIC])
    router.heartbeat()
    grafts = _talks(sent, GRAFT)
    assert len(grafts) == 3
    assert {p for p, _, _ in grafts} == router.mesh[TOPIC] - kept
    assert len(router.mesh[TOPIC]) == 6
    assert sent == [RouterAction("talk", p, e, b) for p, e, b in grafts]  # nothing else

    sent.clear()
    router.control(next(iter(kept)), PRUNE, {"topics": [TOPIC]})
    router.heartbeat()  # 5 is not below degree_low: left alone
    assert len(router.mesh[TOPIC]) == 5
    assert sent == []


def test_heartbeat_refill_drops_departed_peers_and_takes_what_it_can() -> None:
    router, sent, _ = _meshed(6)
    for peer in range(4):
        router.remove_peer(peer)
    router.heartbeat()
    assert router.mesh[TOPIC] == {4, 5}  # nobody else to graft
    assert sent == []


def test_heartbeat_prunes_the_mesh_to_degree_above_degree_high() -> None:
    router, sent, _ = _router()
    router.subscribe(TOPIC)
    for peer in range(12):
        router.add_peer(peer)
        router.control(peer, GRAFT, {"topics": [TOPIC]})
    assert len(router.mesh[TOPIC]) == 12
    sent.clear()
    router.heartbeat()  # 12 is not above degree_high
    assert sent == []
    # Grafts stop at degree_high, so only a lowered bound puts the mesh above it.
    router.degree_high = 8
    router.heartbeat()
    prunes = _talks(sent, PRUNE)
    assert len(prunes) == 6
    assert all(body == {"topics": [TOPIC]} for _, _, body in prunes)
    assert not {p for p, _, _ in prunes} & router.mesh[TOPIC]
    assert len(router.mesh[TOPIC]) == 6
    assert len(sent) == 6


OUTSIDE = 99
"""A peer that subscribes to another topic: never a candidate for TOPIC's ihave."""


def _from_outside(router: GossipRouter, sent: Recorded, *messages: GossipMessage) -> None:
    """Receive messages from OUTSIDE, so that no TOPIC subscriber is known to have them."""
    if OUTSIDE not in router.peers:
        _with_peers(router, sent, range(OUTSIDE, OUTSIDE + 1), ["other"])
    for message in messages:
        assert router.receive(OUTSIDE, message)


def test_heartbeat_announces_to_at_most_lazy_subscribed_peers() -> None:
    # The mesh among them: told each new id at every heartbeat (as attacker37 N1's
    # first mend did), a 300-node simulation with its core saturated took 2-3 times as
    # long to cover (p50 0.4 -> 1.0 s). Peers refused a seat are told: test_gossip_owed.
    router, sent, _ = _meshed(10, lazy=4)
    _with_peers(router, sent, range(10, 13), ["other"])
    message = _message()
    _from_outside(router, sent, message, _message(1, topic="other"))  # not ours: never announced
    router.heartbeat()
    ihaves = _talks(sent, IHAVE)
    assert len(ihaves) == len(sent) == 4
    assert len({p for p, _, _ in ihaves}) == 4
    assert {p for p, _, _ in ihaves} <= set(range(10))
    assert all(body == {"topic": TOPIC, "ids": [message.id]} for _, _, body in ihaves)
    assert router.stats.ihave_sent == 4


def test_ihave_leaves_out_what_the_peer_is_known_to_have() -> None:
    router, sent, _ = _meshed(10, lazy=10)
    mine, theirs = _message(1), _message(2)
    router.publish(mine)  # to the 6 mesh peers
    mesh = set(router.mesh[TOPIC])
    outside = sorted(set(range(10)) - mesh)
    assert router.receive(outside[0], theirs)
    assert not router.receive(outside[1], theirs)  # a duplicate: it has it too
    sent.clear()
    router.heartbeat()
    announced = {p: body["ids"] for p, _, body in _talks(sent, IHAVE)}
    expected: dict[PeerKey, list[str]] = {
        **{p: [theirs.id] for p in mesh},
        **{p: [mine.id] for p in outside[:2]},
        **{p: [mine.id, theirs.id] for p in outside[2:]},
    }
    assert announced == expected
    assert router.stats.ihave_sent == 10
    sent.clear()
    router.control(outside[2], IWANT, {"ids": [mine.id]})
    assert _messages(sent) == [(outside[2], mine)]


@pytest.mark.parametrize("pending", [False, True])
def test_what_catch_up_brought_is_seen_but_neither_announced_nor_served(
    pending: bool,
) -> None:
    """Found by a new user: a node that joined pushed its whole catch-up back to its
    peers (ihave, then iwant from those whose seen-cache had forgotten the ids though
    their logs held them): 45 MB in 25 s on a 7-node network."""
    router, sent, _ = _meshed(10, lazy=10)
    caught = _message(1)
    assert router.receive(0, caught, pending=pending, live=False)
    if pending:
        router.accept(0, caught)
    assert router.seen(caught.id) and router.cached(caught.id) is None
    assert not router.receive(1, caught)  # its copies are duplicates
    sent.clear()
    router.heartbeat()
    router.control(2, IWANT, {"ids": [caught.id]})
    assert _talks(sent, IHAVE) == [] and _messages(sent) == []
    assert not router._holders  # nothing kept for it


def test_iwant_serves_a_message_once_to_a_peer_however_often_it_asks() -> None:
    # Found by an attacker's test: [id] * 500 in one iwant, 20 times, drew 56.9 MB of
    # copies of one 200 KB message for 240 KB of talks. Once to a peer while held.
    router, sent, _ = _meshed(3)
    mine, theirs = _message(1), _message(2)
    router.publish(mine)
    assert router.receive(0, theirs)
    sent.clear()
    for _ in range(3):
        router.control(2, IWANT, {"ids": [mine.id] * 250 + [theirs.id] * 250})
    assert _messages(sent) == [(2, mine), (2, theirs)]  # each once
    router.control(1, IWANT, {"ids": [mine.id]})  # another peer: its own once
    assert _messages(sent)[2:] == [(1, mine)]
    assert router.stats.served == 3


def test_the_recent_messages_kept_to_serve_are_bounded_in_payload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A flood of large messages held about history x rate x size for iwant (a few
    # hundred MB at 250 KB a message): past the bound, the oldest is let go (found in
    # review: the newest were refused, so a heavy sender kept everyone else's out).
    size = len(_message(1).data)
    monkeypatch.setattr(recent_module, "MAX_CACHE_BYTES", 2 * size)
    router, sent, _ = _meshed(3, history=2)
    first, second, third = _message(1), _message(2), _message(3)
    for message in (first, second, third):
        assert router.receive(0, message)
        router.forward(0, message)
    assert [router.cached(m.id) for m in (first, second, third)] == [None, second, third]
    sent.clear()
    router.control(2, IWANT, {"ids": [first.id, third.id]})
    assert _messages(sent) == [(2, third)]
    router.heartbeat()
    router.heartbeat()  # the windows of 2 heartbeats are gone, and what was kept of them
    assert not any(router.cached(m.id) for m in (first, second, third))
    assert not router._holders  # (they leaked for a message past the bound)


def test_a_peer_is_noted_once_as_holder_of_a_message() -> None:
    # Holders are a list (smaller than a set): copies, forwards and announcements to the
    # same peer don't repeat it, and every holder is still left out of ihave.
    router, sent, _ = _meshed(10, lazy=10, fanout=3)
    message = _message()
    assert router.receive(0, message)
    for _ in range(3):
        assert not router.receive(1, message)
        assert router.duplicate(1, message.id)
    router.forward(0, message)
    pushed = {p for p, _ in _messages(sent)}
    router.forward(0, message)  # again: the same targets or others, each noted once
    holders = list(router._holders[message.id])
    assert len(holders) == len(set(holders))
    assert {0, 1} | pushed <= set(holders)
    sent.clear()
    router.heartbeat()
    told = {p for p, _, _ in _talks(sent, IHAVE)}
    assert told.isdisjoint(holders)
    assert told | set(holders) == set(range(10))
    assert sorted(router._holders[message.id]) == list(range(10))  # the told too
    sent.clear()
    router.heartbeat()
    assert _talks(sent, IHAVE) == []  # told once is enough


def test_ihave_leaves_out_the_peers_a_message_was_forwarded_to() -> None:
    router, sent, _ = _meshed(10, lazy=10, fanout=3)
    message = _message()
    _from_outside(router, sent, message)
    router.forward(OUTSIDE, message)
    pushed = {p for p, _ in _messages(sent)}
    assert len(pushed) == 3
    sent.clear()
    router.heartbeat()
    assert {p for p, _, _ in _talks(sent, IHAVE)} == set(range(10)) - pushed


def test_heartbeat_announces_each_id_once_per_peer_while_in_history() -> None:
    router, sent, _ = _meshed(2, history=3)
    first, second = _message(1), _message(2)

    def announced() -> list[list[str]]:
        sent.clear()
        router.heartbeat()
        return [body["ids"] for _, _, body in _talks(sent, IHAVE)]

    _from_outside(router, sent, first)
    assert announced() == [[first.id]] * 2
    _from_outside(router, sent, second)
    assert announced() == [[second.id]] * 2  # the first was told already
    assert announced() == []
    assert router.cached(first.id) is None  # cached for 3 heartbeats, then aged out
    assert router.cached(second.id) is second
    assert announced() == []
    assert router.cached(second.id) is None
    assert router.seen(first.id) and router.seen(second.id)  # the seen-cache is separate
    assert router.stats.ihave_sent == 4


def test_ihave_holds_at_most_max_ihave_ids() -> None:
    router, sent, _ = _meshed(1, max_ihave=2)
    messages = [_message(seq) for seq in range(1, 4)]
    _from_outside(router, sent, *messages)
    router.heartbeat()
    assert _talks(sent, IHAVE) == [
        (0, IHAVE, {"topic": TOPIC, "ids": [m.id for m in messages[:2]]})
    ]


def test_heartbeat_in_flood_mode_neither_grafts_nor_announces() -> None:
    router, sent, _ = _router(mode="flood")
    router.subscribe(TOPIC)
    _with_peers(router, sent, range(5), [TOPIC])
    router.publish(_message())
    sent.clear()
    router.heartbeat()
    assert sent == []
    assert router.mesh[TOPIC] == set()


def test_seen_cache_expires_by_ttl_at_heartbeats() -> None:
    router, _, clock = _meshed(2, seen_ttl=60.0)
    first, second = _message(1), _message(2)
    assert router.receive(0, first)
    clock.advance(30.0)
    assert router.receive(0, second)
    clock.advance(29.5)
    router.heartbeat()
    assert router.seen(first.id)
    clock.advance(0.5)  # first is 60 s old
    assert router.seen(first.id)  # only a heartbeat ages the cache
    router.heartbeat()
    assert not router.seen(first.id)
    assert router.seen(second.id)
    assert router.receive(1, first) is True  # forgotten: new again
    clock.advance(30.0)
    router.heartbeat()
    assert not router.seen(second.id)
    assert router.seen(first.id)


def test_seen_cache_is_bounded_by_seen_max() -> None:
    router, _, _ = _meshed(2, seen_max=3)
    messages = [_message(seq) for seq in range(1, 6)]
    for message in messages:
        assert router.receive(0, message)
    assert [router.seen(m.id) for m in messages] == [False, False, True, True, True]
    assert router.receive(0, messages[0]) is True  # the oldest went first
    assert [router.seen(m.id) for m in messages] == [True, False, False, True, True]


def test_history_zero_is_refused_or_works() -> None:
    try:
        router, _, _ = _router(history=0)
    except ValueError:
        return
    router.add_peer(0)
    router.publish(_message())


# IHAVE and IWANT


def test_ihave_with_unseen_ids_asks_for_them_once() -> None:
    router, sent, clock = _meshed(3)
    known = _message(1)
    router.receive(0, known)
    ids = [known.id, "a", "b"]
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ids})
    assert sent == [RouterAction("talk", 0, IWANT, {"ids": ["a", "b"]})]
    assert router.stats.iwant_sent == 1

    sent.clear()
    router.control(1, IHAVE, {"topic": TOPIC, "ids": [*ids, "c"]})
    assert sent == [RouterAction("talk", 1, IWANT, {"ids": ["c"]})]
    sent.clear()
    router.control(2, IHAVE, {"topic": TOPIC, "ids": ids})
    assert sent == []

    clock.advance(1.0)
    router.heartbeat()
    sent.clear()
    router.control(2, IHAVE, {"topic": TOPIC, "ids": ids})
    assert sent == []  # asked 1 s ago: still waiting
    clock.advance(0.5)
    router.heartbeat()
    # Peer 2 announced "a" and "b" meanwhile: asked now. Nobody else announced "c":
    # forgotten, so that the next announcement is answered.
    assert sent == [RouterAction("talk", 2, IWANT, {"ids": ["a", "b"]})]
    sent.clear()
    router.control(2, IHAVE, {"topic": TOPIC, "ids": [*ids, "c"]})
    assert sent == [RouterAction("talk", 2, IWANT, {"ids": ["c"]})]
    assert router.stats.iwant_sent == 4


def test_an_unanswered_iwant_is_sent_to_the_last_other_peer_that_announced_the_id() -> None:
    # Peer 0 announced "a" and "b" but served neither (they left its history while the
    # iwant was on its way): peers 1 and 2, which announced them meanwhile, are asked in
    # turn, without waiting for another announcement (there may be none: every peer's
    # history is as short), then the ask is forgotten.
    router, sent, clock = _meshed(4)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a", "b"]})
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["a", "b"]})
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["a"]})  # counted once
    router.control(2, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    router.control(3, IHAVE, {"topic": TOPIC, "ids": ["b"]})
    router.remove_peer(3)  # gone: not asked
    sent.clear()
    clock.advance(3.5)
    router.heartbeat()
    assert _talks(sent, IWANT) == [(2, IWANT, {"ids": ["a"]}), (1, IWANT, {"ids": ["b"]})]
    sent.clear()
    message = _message()
    router.control(0, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    # Peer 0 broke its promise: the next to announce the id, which broke none, is asked
    # at once (lazy.BROKEN_FOR).
    router.control(1, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    assert router.receive(2, message)  # received: nobody else is asked for it
    clock.advance(3.5)
    router.heartbeat()
    assert _talks(sent, IWANT) == [
        (0, IWANT, {"ids": [message.id]}),
        (1, IWANT, {"ids": [message.id]}),
        (1, IWANT, {"ids": ["a"]}),
    ]
    sent.clear()
    clock.advance(3.5)
    router.heartbeat()
    assert _talks(sent, IWANT) == []  # nobody left to ask
    router.control(2, IHAVE, {"topic": TOPIC, "ids": ["a", "b"]})
    assert _talks(sent, IWANT) == [(2, IWANT, {"ids": ["a", "b"]})]


def test_an_id_whose_first_announcer_never_serves_it_comes_from_the_next_in_time() -> None:
    # Found by an attacker (a42 F1): one peer announcing each new message first and never
    # serving it was asked alone; the retry came 3 s later, past the honest relay's 3
    # heartbeats of history, and every message of the topic came 12-30 s late.
    router, sent, clock = _meshed(2)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    clock.advance(0.5)
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["m"]})  # the honest relay, later
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["m"]})]
    sent.clear()
    clock.advance(0.5)
    router.heartbeat()  # asked 1 s ago: waited for
    assert _talks(sent, IWANT) == []
    clock.advance(1.0)
    router.heartbeat()  # 2 s after peer 0 was asked: within peer 1's history
    assert _talks(sent, IWANT) == [(1, IWANT, {"ids": ["m"]})]
    assert router.stats.iwant_unanswered == 1


def test_a_peer_that_broke_a_promise_is_asked_after_one_that_broke_none() -> None:
    # A peer whose ask timed out announces the next ids first, again: asked (it may be
    # the only one to), and asked again at once of the next announcer that broke no
    # promise; among whom to ask next, those that broke none come first, and take the
    # place of those that did when they are full (8 peers announcing first, serving
    # nothing, kept the honest relay out of the 6 kept).
    router, sent, clock = _meshed(10)
    liars = range(7)
    for liar in liars:
        router.control(liar, IHAVE, {"topic": TOPIC, "ids": [f"x{liar}"]})
    clock.advance(1.5)
    router.heartbeat()  # each let its ask time out: broken
    assert router.stats.iwant_unanswered == 7
    sent.clear()
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    for liar in liars[1:]:
        router.control(liar, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    router.control(8, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["m"]}), (8, IWANT, {"ids": ["m"]})]
    sent.clear()
    # A fresh liar first: asked; the broken ones fill the offers, the honest one takes a
    # broken one's place, and is asked next.
    _with_peers(router, sent, range(10, 11), [TOPIC])
    sent.clear()
    router.control(10, IHAVE, {"topic": TOPIC, "ids": ["n"]})
    for liar in liars:
        router.control(liar, IHAVE, {"topic": TOPIC, "ids": ["n"]})
    router.control(9, IHAVE, {"topic": TOPIC, "ids": ["n"]})
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["n"]})  # (asked last: broken)
    assert _talks(sent, IWANT) == [(10, IWANT, {"ids": ["n"]})]
    sent.clear()
    clock.advance(1.5)
    router.heartbeat()
    # (and "m", which peer 8 didn't serve either: only broken ones left, the last asked)
    assert _talks(sent, IWANT) == [(6, IWANT, {"ids": ["m"]}), (9, IWANT, {"ids": ["n"]})]


def test_a_peer_asked_again_after_another_breaks_no_promise() -> None:
    # Found in review (review70 F1): liar 0 announces each id first, the honest relay 1
    # next, liar 2 just after it; the retry went to 2, then to 1, past its history, and
    # the relay was marked as having broken a promise: asked after the liars for good.
    router, sent, clock = _meshed(3)
    liar, relay, late_liar = 0, 1, 2
    for peer in (liar, relay, late_liar):
        router.control(peer, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    for _ in range(3):  # liar 0's ask times out, then 2's, then 1's: nobody serves "m"
        clock.advance(1.5)
        router.heartbeat()
    assert _talks(sent, IWANT) == [
        (liar, IWANT, {"ids": ["m"]}),
        (late_liar, IWANT, {"ids": ["m"]}),
        (relay, IWANT, {"ids": ["m"]}),
    ]
    assert router.stats.iwant_unanswered == 3
    sent.clear()
    # Only liar 0 broke a promise (it was asked as it announced): the relay, announcing
    # the next id after it, is asked at once.
    router.control(liar, IHAVE, {"topic": TOPIC, "ids": ["n"]})
    router.control(relay, IHAVE, {"topic": TOPIC, "ids": ["n"]})
    assert _talks(sent, IWANT) == [(liar, IWANT, {"ids": ["n"]}), (relay, IWANT, {"ids": ["n"]})]


def test_a_peer_asked_in_the_place_of_a_retried_one_makes_a_promise() -> None:
    # The id was asked again of a peer that broke a promise before (the only other that
    # announced it); a peer that broke none announces it: asked at once, as it announced
    # it, so its silence breaks a promise (found in review: the retry's mark stuck).
    router, sent, clock = _meshed(4)
    broken, first, trusted, next_ = 0, 1, 2, 3
    router.control(broken, IHAVE, {"topic": TOPIC, "ids": ["x"]})
    clock.advance(1.5)
    router.heartbeat()  # peer 0 broke a promise
    router.control(first, IHAVE, {"topic": TOPIC, "ids": ["i"]})
    router.control(broken, IHAVE, {"topic": TOPIC, "ids": ["i"]})
    clock.advance(1.5)
    router.heartbeat()  # peer 1 broke one; "i" asked again of 0, the only other
    sent.clear()
    router.control(trusted, IHAVE, {"topic": TOPIC, "ids": ["i"]})
    assert _talks(sent, IWANT) == [(trusted, IWANT, {"ids": ["i"]})]
    clock.advance(1.5)
    router.heartbeat()  # peer 2 didn't serve it: a promise broken
    sent.clear()
    router.control(trusted, IHAVE, {"topic": TOPIC, "ids": ["j"]})
    router.control(next_, IHAVE, {"topic": TOPIC, "ids": ["j"]})
    assert _talks(sent, IWANT) == [(trusted, IWANT, {"ids": ["j"]}), (next_, IWANT, {"ids": ["j"]})]


def test_a_peer_has_at_most_max_asks_ids_asked_of_it_at_a_time() -> None:
    # Found by an attacker: ihave with 500 made-up ids, 100 times a second, had each id
    # recorded and echoed in an iwant; 16 such peers took the node from 117 to 537 MB.
    router, sent, clock = _meshed(2, max_asks=3)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a", "b", "c", "d", "e"]})
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["a", "b", "c"]})]
    assert router.stats.ihave_ignored == 2
    sent.clear()
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["f"]})
    assert sent == []  # ignored, not answered
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["d"]})
    assert _talks(sent, IWANT) == [(1, IWANT, {"ids": ["d"]})]  # each peer its own room
    sent.clear()

    message = _message()
    router.control(1, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    router.receive(1, message)  # an answered ask makes room
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["g", "h", "i"]})
    assert _talks(sent, IWANT) == [
        (1, IWANT, {"ids": [message.id]}),
        (1, IWANT, {"ids": ["g", "h"]}),
    ]
    sent.clear()
    clock.advance(3.5)
    router.heartbeat()  # given up: room again
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["j", "k", "l", "m"]})
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["j", "k", "l"]})]
    assert router.stats.ihave_ignored == 2 + 1 + 1 + 1


def test_a_flood_of_made_up_ids_is_asked_for_at_most_max_asks_at_a_time() -> None:
    router, sent, clock = _meshed(1)
    for round_ in range(3):
        for n in range(100):
            ids = [f"{round_}-{n}-{i}" for i in range(500)]
            router.control(0, IHAVE, {"topic": TOPIC, "ids": ids})
        asked = [i for _, _, body in _talks(sent, IWANT) for i in body["ids"]]
        assert len(asked) == router.max_asks == 500
        assert router.stats.ihave_ignored == (round_ + 1) * (100 * 500 - 500)
        sent.clear()
        clock.advance(3.5)
        router.heartbeat()
        assert _talks(sent, IWANT) == []  # nobody else to ask: all given up


def test_the_asks_of_a_peer_that_leaves_go_to_others_at_the_heartbeat() -> None:
    # Found in review: a peer removed with asks open, and added again under the same
    # key, was charged for the old asks as they timed out, below zero.
    router, sent, _ = _meshed(2, max_asks=3)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a", "b", "c"]})
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    router.remove_peer(0)
    _with_peers(router, sent, range(1), [TOPIC])  # the same key again: its room is whole
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["d", "e", "f", "g"]})
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["d", "e", "f"]})]
    sent.clear()
    router.heartbeat()  # at once, not after iwant_timeout: nobody is asked for them
    assert _talks(sent, IWANT) == [(1, IWANT, {"ids": ["a"]})]
    sent.clear()
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["b"]})  # forgotten: asked again
    assert _talks(sent, IWANT) == [(1, IWANT, {"ids": ["b"]})]


def test_an_unanswered_id_is_asked_again_only_of_a_peer_with_room() -> None:
    router, sent, clock = _meshed(3, max_asks=2)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    router.control(2, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    clock.advance(1.0)
    router.control(2, IHAVE, {"topic": TOPIC, "ids": ["b", "c"]})  # peer 2 is full
    sent.clear()
    clock.advance(2.5)
    router.heartbeat()  # peer 2 announced "a" last, but has no room: peer 1 is asked
    assert _talks(sent, IWANT) == [(1, IWANT, {"ids": ["a"]})]


def test_ihave_asks_again_only_after_a_heartbeat() -> None:
    router, sent, clock = _meshed(2)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    clock.advance(60.0)
    sent.clear()
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["a"]})
    assert sent == []


def test_ihave_for_messages_received_meanwhile_is_not_answered() -> None:
    router, sent, _ = _meshed(2)
    message = _message()
    router.control(0, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    assert router.receive(1, message)
    sent.clear()
    router.control(1, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    assert sent == []


def test_receiving_an_asked_for_message_forgets_the_ask() -> None:
    # Seen-cache shorter than the 10 s ask window: once forgotten, the id is asked for again.
    router, sent, clock = _meshed(2, seen_ttl=5.0, iwant_timeout=10.0)
    message = _message()
    router.control(0, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    assert router.receive(0, message)
    clock.advance(6.0)
    router.heartbeat()
    assert not router.seen(message.id)
    sent.clear()
    router.control(1, IHAVE, {"topic": TOPIC, "ids": [message.id]})
    assert sent == [RouterAction("talk", 1, IWANT, {"ids": [message.id]})]


def test_ihave_for_a_topic_we_do_not_subscribe_to_is_ignored() -> None:
    router, sent, _ = _meshed(2)
    router.control(0, IHAVE, {"topic": "other", "ids": ["a"]})
    router.control(0, IHAVE, {"topic": TOPIC, "ids": []})
    with pytest.raises(GossipError, match=r"^invalid topic$"):
        router.control(0, IHAVE, {"ids": ["a"]})  # no topic at all
    assert sent == []
    assert router.stats.iwant_sent == 0


@pytest.mark.parametrize("history", [1, 2, 3, 5])
def test_every_id_an_ihave_names_is_served_on_the_iwant_that_follows(history: int) -> None:
    # Found by an attacker (a43 F3): the ids of the oldest window were announced, then
    # dropped in the same heartbeat; 11-33 % of the announcements to peers not pushed
    # the message named what was gone when asked for, and honest relays' asks timed out.
    router, sent, _ = _router(seed=3, lazy=6, history=history)
    _with_peers(router, sent, range(40), [TOPIC])
    router.subscribe(TOPIC)
    messages = [_message(n) for n in range(1, 9)]
    asked = served = 0
    for message in messages:
        router.receive(0, message)
        sent.clear()
        router.heartbeat()
        for peer, _, body in _talks(sent, IHAVE):
            sent.clear()
            router.control(peer, IWANT, {"ids": body["ids"]})
            asked += len(body["ids"])
            served += len(_messages(sent))
    assert asked == served
    assert (asked > 0) == (history > 1)  # (a message is announced while it is served)


def test_iwant_is_served_from_the_cache_while_in_history() -> None:
    router, sent, _ = _meshed(2, history=2)
    mine, relayed = _message(1), _message(2, hops=3)
    router.publish(mine)
    router.receive(0, relayed)
    sent.clear()
    router.control(1, IWANT, {"ids": [mine.id, "unknown", relayed.id]})
    assert _messages(sent) == [(1, mine), (1, relayed)]
    assert _messages(sent)[1][1].hops == 3  # served as received
    assert router.stats.served == 2

    router.heartbeat()
    sent.clear()
    router.control(0, IWANT, {"ids": [mine.id]})
    assert _messages(sent) == [(0, mine)]
    router.heartbeat()
    sent.clear()
    router.control(0, IWANT, {"ids": [mine.id, relayed.id]})
    assert sent == []  # out of history
    assert router.stats.served == 3


@pytest.mark.parametrize(
    ("event", "body", "text"),
    [
        (SUBSCRIPTIONS, {"subscribe": TOPIC}, "topics must be a list of at most 1000 strings"),
        (SUBSCRIPTIONS, {"subscribe": None}, "topics must be a list of at most 1000 strings"),
        (SUBSCRIPTIONS, {"unsubscribe": {}}, "topics must be a list of at most 1000 strings"),
        (
            SUBSCRIPTIONS,
            {"subscribe": ["t"] * 1001},
            "topics must be a list of at most 1000 strings",
        ),
        (SUBSCRIPTIONS, {"subscribe": [""]}, "invalid topic"),
        (SUBSCRIPTIONS, {"subscribe": [TOPIC, 5]}, "invalid topic"),
        (SUBSCRIPTIONS, {"subscribe": ["t" * 257]}, "invalid topic"),
        (SUBSCRIPTIONS, {"unsubscribe": [None]}, "invalid topic"),
        (GRAFT, {"topics": TOPIC}, "topics must be a list of at most 1000 strings"),
        (GRAFT, {"topics": [[TOPIC]]}, "invalid topic"),
        (PRUNE, {"topics": 1}, "topics must be a list of at most 1000 strings"),
        (PRUNE, {"topics": [""]}, "invalid topic"),
        (IHAVE, {"topic": TOPIC, "ids": ["a"] * 501}, "ids must be a list of at most 500 strings"),
        (IHAVE, {"topic": TOPIC, "ids": "a"}, "ids must be a list of at most 500 strings"),
        (IHAVE, {"topic": "other", "ids": None}, "ids must be a list of at most 500 strings"),
        (IHAVE, {"topic": TOPIC, "ids": [1]}, "invalid message id"),
        (IHAVE, {"topic": TOPIC, "ids": ["x" * 65]}, "invalid message id"),
        (IWANT, {"ids": ["a"] * 501}, "ids must be a list of at most 500 strings"),
        (IWANT, {"ids": {"a": 1}}, "ids must be a list of at most 500 strings"),
        (IWANT, {"ids": [None]}, "invalid message id"),
    ],
)
def test_malformed_control_talks_raise(event: str, body: dict[str, Any], text: str) -> None:
    router, sent, _ = _meshed(2)
    with pytest.raises(GossipError) as info:
        router.control(0, event, body)
    assert str(info.value) == text
    assert sent == []
    assert router.peer_topics(0) == {TOPIC}
    assert router.mesh[TOPIC] == {0, 1}


def test_ids_of_64_characters_and_1000_topics_are_the_limits() -> None:
    router, sent, _ = _meshed(1, max_ihave=3)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["x" * 64] * 3})
    # Three ids is the limit; repeats are asked for once.
    assert sent == [RouterAction("talk", 0, IWANT, {"ids": ["x" * 64]})]
    with pytest.raises(GossipError, match=r"^ids must be a list of at most 3 strings$"):
        router.control(0, IWANT, {"ids": ["x"] * 4})
    router.control(0, SUBSCRIPTIONS, {"subscribe": [f"t{i}" for i in range(999)]})
    assert len(router.peer_topics(0)) == 1000


def test_a_peer_subscribes_to_at_most_1000_topics() -> None:
    # 10,000 topics of 256 characters held about 4 MB a peer (an attacker's test).
    router, _, _ = _router()
    router.add_peer(0)
    for batch in range(2):
        router.control(0, SUBSCRIPTIONS, {"subscribe": [f"{batch}/{i}" for i in range(500)]})
    assert len(router.peer_topics(0)) == 1000
    with pytest.raises(GossipError, match=r"^1000 \+ 1 subscriptions exceed 1000$"):
        router.control(0, SUBSCRIPTIONS, {"subscribe": ["one more"]})
    assert len(router.peer_topics(0)) == 1000
    assert "one more" not in router.peer_topics(0)
    # Topics held already count once; one unsubscribed makes room in the same talk.
    router.control(0, SUBSCRIPTIONS, {"subscribe": ["0/1", "1/2"]})
    router.control(0, SUBSCRIPTIONS, {"subscribe": ["one more"], "unsubscribe": ["0/0"]})
    assert "one more" in router.peer_topics(0)
    assert "0/0" not in router.peer_topics(0)
    assert len(router.peer_topics(0)) == 1000


def test_a_node_subscribes_to_at_most_what_peers_accept() -> None:
    router, sent, _ = _router()
    for i in range(1000):
        router.subscribe(f"t{i}")
    with pytest.raises(ValueError, match=r"^a node subscribes to 1000 topics at most$"):
        router.subscribe("one more")
    router.subscribe("t1")  # subscribed already: nothing to refuse
    assert len(router.topics) == 1000 and "one more" not in router.topics
    for topic in ("", "x" * 257, 5):
        with pytest.raises(ValueError, match=r"^a topic is a string of 1 to 256 characters$"):
            router.subscribe(topic)  # type: ignore[arg-type]
    # A new peer hears of them in talks of at most 1,000 topics, which it accepts.
    router.add_peer("p")
    other, _, _ = _router()
    other.add_peer("us")
    for action in sent:
        assert action.kind == "talk" and action.event == SUBSCRIPTIONS
        other.control("us", action.event, action.body)
    assert other.peer_topics("us") == router.topics


@pytest.mark.parametrize("topic", [[TOPIC], {"t": 1}])
def test_ihave_with_an_unhashable_topic_raises_gossip_error(topic: Any) -> None:
    router, _, _ = _meshed(1)
    with pytest.raises(GossipError):
        router.control(0, IHAVE, {"topic": topic, "ids": ["a"]})


_hashable_json = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


@given(
    event=st.sampled_from(GOSSIP_EVENTS),
    body=st.dictionaries(
        st.sampled_from(["subscribe", "unsubscribe", "topics", "ids", "other"]),
        _json | st.lists(st.text(max_size=3) | _json, max_size=5),
        max_size=4,
    ),
    # An unhashable IHAVE topic is the xfail above.
    topic=st.just(TOPIC) | _hashable_json,
)
@settings(max_examples=150)
def test_control_raises_only_gossip_error(event: str, body: dict[str, Any], topic: Any) -> None:
    router, _, _ = _meshed(2)
    try:
        router.control(0, event, {**body, "topic": topic})
    except GossipError:
        pass


# A network of routers, without sockets


class FakeNetwork:
    """
    Routers wired by a queue: what router ``a`` sends to peer ``b`` reaches router ``b``
    as coming from peer ``a``, in send order, when :meth:`run` drains the queue. Messages
    go through ``to_body`` and ``from_body``, as on the wire.
    """

    def __init__(
        self, size: int, *, seed: int, mode: Literal["gossip", "flood"] = "gossip", **options: Any
    ) -> None:
        self.clock = FakeClock()
        self.queue: collections.deque[tuple[int, RouterAction]] = collections.deque()
        self.routers = [
            GossipRouter(
                send=functools.partial(self._enqueue, i),
                clock=self.clock,
                mode=mode,
                rng=random.Random(seed * 1000 + i),
                **options,
            )
            for i in range(size)
        ]
        self.links: set[tuple[int, int]] = set()
        self.delivered = [collections.Counter[str]() for _ in range(size)]
        self.messages_to = collections.Counter[int]()

    def _enqueue(self, source: int, action: RouterAction) -> None:
        assert action.kind in ("talk", "message")
        assert (source, action.peer) in self.links
        self.queue.append((source, action))

    def connect(self, a: int, b: int) -> None:
        self.links |= {(a, b), (b, a)}
        self.routers[a].add_peer(b)
        self.routers[b].add_peer(a)
        self.run()

    def run(self) -> None:
        while self.queue:
            source, action = self.queue.popleft()
            target = action.peer
            assert isinstance(target, int)
            router = self.routers[target]
            if action.kind == "talk":
                router.control(source, action.event, action.body)
                continue
            assert action.message is not None
            self.messages_to[target] += 1
            message = GossipMessage.from_body(action.message.topic, action.message.to_body())
            if message.topic in router.topics and router.receive(source, message):
                self.delivered[target][message.id] += 1
                router.forward(source, message)

    def heartbeat(self) -> None:
        self.clock.advance(1.0)
        for router in self.routers:
            router.heartbeat()
        self.run()

    def publish(self, node: int, message: GossipMessage) -> None:
        self.delivered[node][message.id] += 1
        self.routers[node].publish(message)
        self.run()

    def reached(self, message: GossipMessage) -> list[int]:
        return [i for i, counts in enumerate(self.delivered) if counts[message.id]]


def _random_graph(size: int, degree: int, rng: random.Random) -> set[tuple[int, int]]:
    """A connected graph: a random spanning tree, then random edges up to ~degree each."""
    order = list(range(size))
    rng.shuffle(order)
    edges: set[tuple[int, int]] = set()
    for i in range(1, size):
        a, b = order[i], order[rng.randrange(i)]
        edges.add((min(a, b), max(a, b)))
    while len(edges) < size * degree // 2:
        a, b = rng.sample(range(size), 2)
        edges.add((min(a, b), max(a, b)))
    return edges


def _build(
    size: int, degree: int, *, seed: int, idle: int = 0, **options: Any
) -> tuple[FakeNetwork, dict[int, set[int]]]:
    """``size`` subscribers of TOPIC on a random graph, plus ``idle`` routers that don't
    subscribe, each linked to two subscribers."""
    rng = random.Random(seed)
    network = FakeNetwork(size + idle, seed=seed, **options)
    for router in network.routers[:size]:
        router.subscribe(TOPIC)
    neighbours: dict[int, set[int]] = collections.defaultdict(set)
    edges = _random_graph(size, degree, rng)
    edges |= {(size + i, b) for i in range(idle) for b in rng.sample(range(size), 2)}
    for a, b in sorted(edges):
        network.connect(a, b)
        neighbours[a].add(b)
        neighbours[b].add(a)
    for _ in range(3):
        network.heartbeat()  # meshes settle
    return network, neighbours


SIZE, GRAPH_DEGREE = 40, 8


def _origins() -> list[Identity]:
    return [_identity(n) for n in range(10, 15)]


def test_gossip_reaches_every_subscriber_with_few_duplicates() -> None:
    network, neighbours = _build(SIZE, GRAPH_DEGREE, seed=1, idle=3, fanout=1)
    routers = network.routers
    for i in range(SIZE):
        # Meshes hold subscribed neighbours only: degree_low of them, or all there are.
        subscribed = neighbours[i] & set(range(SIZE))
        mesh = routers[i].mesh[TOPIC]
        assert mesh <= subscribed
        assert min(routers[i].degree_low, len(subscribed)) <= len(mesh) <= routers[i].degree_high

    rng = random.Random(1)
    messages = [
        sign_message(origin, TOPIC, seq, 0, {"seq": seq}) for origin in _origins() for seq in (1, 2)
    ]
    eager = []
    for message in messages:
        network.publish(rng.randrange(SIZE), message)
        eager.append(len(network.reached(message)))
    # With fanout=1 a relay pushes to one mesh peer: eager push alone misses nodes...
    assert min(eager) < SIZE
    for _ in range(3):
        network.heartbeat()
    # ...which ihave and iwant fill in.
    for message in messages:
        assert network.reached(message) == list(range(SIZE))
    assert sum(r.stats.served for r in routers) > 0
    assert sum(r.stats.iwant_sent for r in routers) > 0

    # Exactly once each, with fewer duplicates than links.
    for i in range(SIZE):
        assert set(network.delivered[i].values()) == {1}
        assert len(network.delivered[i]) == len(messages)
        assert routers[i].stats.duplicates < len(neighbours[i]) * len(messages)
    assert max(r.stats.duplicates for r in routers) < GRAPH_DEGREE * len(messages)
    # Routers that don't subscribe receive none of it.
    for idle in range(SIZE, SIZE + 3):
        assert network.messages_to[idle] == 0
        assert not network.delivered[idle]
    # The seen-caches keep the ids after the windows have moved on.
    for _ in range(3):
        network.heartbeat()
    assert all(r.cached(m.id) is None for r in routers for m in messages)
    assert all(r.seen(m.id) for r in routers[:SIZE] for m in messages)


def _duplicates(mode: Literal["gossip", "flood"]) -> list[float]:
    """Duplicates received per message, per node, for 5 messages on one 40-node graph."""
    network, neighbours = _build(SIZE, GRAPH_DEGREE, seed=2, mode=mode)
    messages = [sign_message(origin, TOPIC, 1, 0, {}) for origin in _origins()]
    for i, message in enumerate(messages):
        network.publish(i * 7, message)
    for _ in range(3):
        network.heartbeat()
    for message in messages:
        assert network.reached(message) == list(range(SIZE))
    for counts in network.delivered:
        assert counts.total() == len(messages)  # each exactly once
        assert set(counts.values()) == {1}
    duplicates = [r.stats.duplicates / len(messages) for r in network.routers]
    for i in range(SIZE):
        # Each neighbour sends a message on at most once, and not back to its source.
        assert duplicates[i] < len(neighbours[i])
    return duplicates


def test_flood_reaches_everyone_with_more_duplicates_than_gossip() -> None:
    gossip, flood = _duplicates("gossip"), _duplicates("flood")
    assert max(gossip) < GRAPH_DEGREE
    assert sum(gossip) / SIZE < 3  # the goal
    assert sum(flood) / SIZE > 2 * sum(gossip) / SIZE
    assert sum(flood) / SIZE > GRAPH_DEGREE / 2  # flooding costs about the degree


def test_the_network_is_deterministic() -> None:
    def run() -> list[tuple[int, int, int]]:
        network, _ = _build(12, 4, seed=5, fanout=1)
        network.publish(0, sign_message(ALICE, TOPIC, 1, 0, {}))
        network.heartbeat()
        return [(r.stats.new, r.stats.duplicates, r.stats.served) for r in network.routers]

    assert run() == run()


def test_the_send_callable_is_called_with_one_action() -> None:
    calls: list[tuple[Any, ...]] = []

    def send(*args: Any) -> None:
        calls.append(args)

    router = GossipRouter(send=send, clock=FakeClock(), rng=random.Random(0))
    router.subscribe(TOPIC)
    router.add_peer("p")
    assert calls == [
        (RouterAction("talk", "p", SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": []}),)
    ]


# Subscription talks merged (defer): one talk per peer for many subscribe() calls


def _deferred(**options: Any) -> tuple[GossipRouter, Recorded, list[Any]]:
    later: list[Any] = []
    router, sent, _ = _router(defer=later.append, **options)
    return router, sent, later


def _release(later: list[Any]) -> None:
    while later:
        later.pop(0)()


def test_many_subscribes_in_one_go_make_one_talk_a_peer() -> None:
    # Found by a tester: one talk a topic, each charged to the peer's request budget
    # (100/s): 1,000 subscribes stalled the link 18 s.
    router, sent, later = _deferred()
    _with_peers(router, sent, range(2), [])
    for i in range(1000):
        router.subscribe(f"t{i}")
    assert sent == [] and len(later) == 1  # held till the end of the caller's work
    _release(later)
    topics = [f"t{i}" for i in range(1000)]
    assert _talks(sent) == [
        (peer, SUBSCRIPTIONS, {"subscribe": topics, "unsubscribe": []}) for peer in (0, 1)
    ]
    # Each peer's router takes it: one talk, 1,000 topics, the limit.
    other, _, _ = _router()
    other.add_peer("us")
    other.control("us", SUBSCRIPTIONS, _talks(sent)[0][2])
    assert other.peer_topics("us") == set(topics)


def test_merged_talks_keep_each_topics_order() -> None:
    # Review 12: talks sent by kind (all subscriptions, then grafts, then prunes) let an
    # old prune of "a" reach the peer after a later subscription to "a", and changed
    # its mesh. An entry joins an earlier talk only if nothing after it names the topic.
    router, sent, later = _deferred(degree=2, degree_low=2, degree_high=3)
    _with_peers(router, sent, range(2), ["a", "b"])
    router.subscribe("a")  # grafts 0 and 1 (they subscribe to a)
    router.unsubscribe("a")  # prunes them
    router.subscribe("a")  # doesn't graft them again: they were pruned (prune backoff)
    router.subscribe("b")  # joins the last talks of each kind: nothing after them names b
    _release(later)
    for peer in (0, 1):
        assert [(e, b) for p, e, b in _talks(sent) if p == peer] == [
            (SUBSCRIPTIONS, {"subscribe": ["a"], "unsubscribe": []}),
            (GRAFT, {"topics": ["a"]}),
            (PRUNE, {"topics": ["a"]}),
            (SUBSCRIPTIONS, {"subscribe": [], "unsubscribe": ["a"]}),
            (SUBSCRIPTIONS, {"subscribe": ["a", "b"], "unsubscribe": []}),
            (GRAFT, {"topics": ["b"]}),
        ]


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=30), st.integers(0, 9))
def test_a_peer_ends_up_as_if_each_talk_went_at_once(
    ops: list[tuple[bool, str]], seed: int
) -> None:
    # What the peer believes of our topics, and whether we are in its mesh, per topic.
    def run(defer: bool) -> tuple[set[str], dict[str, bool]]:
        later: list[Any] = []
        options: dict[str, Any] = {"defer": later.append} if defer else {}
        ours, sent, _ = _router(seed=seed, degree=1, degree_low=1, degree_high=2, **options)
        peer, _, _ = _router(seed=seed, degree=1, degree_low=1, degree_high=2)
        for topic in "abcd":
            peer.subscribe(topic)
        peer.add_peer("us")
        _with_peers(ours, sent, range(2), list("abcd"))  # we graft 0 or 1: a sample
        for subscribe, topic in ops:
            (ours.subscribe if subscribe else ours.unsubscribe)(topic)
        _release(later)
        for _, event, body in (talk for talk in _talks(sent) if talk[0] == 0):
            peer.control("us", event, body)
        return peer.peer_topics("us"), {t: "us" in peer.mesh[t] for t in "abcd"}

    assert run(defer=True) == run(defer=False)


def test_merged_talks_stay_within_the_size_peers_take() -> None:
    # Review 12: merged, 200 topics of 100 characters made a 20 KB talk, over a 16 KiB
    # max_package_size; the send failed and the peers heard of none.
    router, sent, later = _deferred()
    router.batch.max_bytes = 4096
    _with_peers(router, sent, range(1), [])
    topics = [f"{i:03}" + "t" * 97 for i in range(200)]  # 103 bytes each, quoted
    for topic in topics:
        router.subscribe(topic)
    _release(later)
    bodies = [body for _, _, body in _talks(sent)]
    assert [t for body in bodies for t in body["subscribe"]] == topics
    assert all(len(json.dumps(body)) <= 4096 + 100 for body in bodies)
    assert len(bodies) == 6  # 39 topics a talk
    # Unheld, a new peer's full list is cut the same way; non-ASCII counted in bytes.
    sent.clear()
    router.add_peer("new")
    assert [len(body["subscribe"]) for _, _, body in _talks(sent)] == [39] * 5 + [5]
    assert [len(c) for c in topic_chunks(["日本" * 100] * 10, 4096)] == [6, 4]


def test_merged_talks_stay_within_each_peers_own_bound() -> None:
    # Found in review: a peer that takes 1 KiB packages was told its first
    # subscriptions within a quarter of that, and then sent merged talks of 64 KiB.
    router, sent, later = _deferred()
    router.add_peer("small", max_bytes=256)
    router.add_peer("big")
    topics = [f"{i:02}" + "t" * 38 for i in range(40)]  # 43 bytes each, quoted
    for topic in topics:
        router.subscribe(topic)
    _release(later)
    for peer, chunks in (("small", [5] * 8), ("big", [40])):
        bodies = [body for to, _, body in _talks(sent) if to == peer]
        assert [len(body["subscribe"]) for body in bodies] == chunks
        assert [t for body in bodies for t in body["subscribe"]] == topics
    router.remove_peer("small")
    assert router.batch.bound("small") == router.batch.max_bytes  # (forgotten)


def test_talks_are_sent_at_once_without_peers_or_defer() -> None:
    router, sent, later = _deferred()
    router.subscribe("a")  # nobody to tell: nothing held
    assert later == []
    plain, sent, _ = _router()
    _with_peers(plain, sent, range(1), [])
    plain.subscribe("a")
    assert _talks(sent) == [(0, SUBSCRIPTIONS, {"subscribe": ["a"], "unsubscribe": []})]


def test_a_peer_gone_before_the_release_is_told_nothing() -> None:
    router, sent, later = _deferred()
    _with_peers(router, sent, range(2), [])
    router.subscribe("a")
    router.remove_peer(0)
    _release(later)
    assert _talks(sent) == [(1, SUBSCRIPTIONS, {"subscribe": ["a"], "unsubscribe": []})]


def test_a_peers_subscriptions_are_grafted_in_one_talk() -> None:
    # Found by a tester: one graft a topic, each charged to the peer's request budget.
    router, sent, _ = _router()
    for topic in ("a", "b", "c"):
        router.subscribe(topic)
    router.add_peer(0)
    sent.clear()
    router.control(0, SUBSCRIPTIONS, {"subscribe": ["a", "b", "c", "d"], "unsubscribe": []})
    assert _talks(sent) == [(0, GRAFT, {"topics": ["a", "b", "c"]})]


def test_the_heartbeats_grafts_are_one_talk_a_peer() -> None:
    clock = FakeClock()
    router, sent, later = _deferred(degree=1, degree_low=1, degree_high=2, clock=clock)
    for topic in ("a", "b", "c"):
        router.subscribe(topic)  # no peers yet: nothing held
    _with_peers(router, sent, range(1), ["a", "b", "c"])  # grafted at once...
    router.control(0, PRUNE, {"topics": ["a", "b", "c"]})  # ...then pruned by the peer
    assert all(not router.mesh[topic] for topic in "abc")
    clock.advance(66.0)  # its prune backoff (60 s) and our slack (6 s) are over
    router.heartbeat()
    assert _talks(sent, GRAFT) == []  # held till the end of the caller's work
    _release(later)
    [(peer, _, body)] = _talks(sent, GRAFT)
    assert (peer, sorted(body["topics"])) == (0, ["a", "b", "c"])


def test_an_id_asked_for_and_shed_as_it_came_was_served() -> None:
    # A message shed as it came (its topic's handlers behind: attacker43 F2) is never
    # seen, but its announcer served it: not asked of another, nor counted unanswered.
    router, sent, clock = _meshed(2)
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["m"]})]
    sent.clear()
    router.shed("m")
    clock.advance(5.0)
    router.heartbeat()
    assert _talks(sent, IWANT) == [] and router.stats.iwant_unanswered == 0
    assert not router.seen("m")  # (catch-up fetches it)


def test_copies_of_a_message_shed_are_dropped_unseen_for_a_while() -> None:
    # Found in review (review81 F2): a shed id is not seen, so each copy of it (each
    # mesh peer's push, each answer to an iwant asked again) was checked, charged to
    # its sender's share of gossip_node_rate and shed again, and each of its senders
    # owed a catch-up round. Now dropped by id, as seen ones are, for SHED_FOR.
    router, sent, clock = _meshed(2)
    router.shed("m")
    assert router.duplicate(1, "m") and not router.seen("m")
    assert router.stats.duplicates == 1
    router.control(1, IHAVE, {"topic": TOPIC, "ids": ["m", "n"]})  # nor asked for
    assert _talks(sent, IWANT) == [(1, IWANT, {"ids": ["n"]})]
    sent.clear()
    clock.advance(SHED_FOR - 0.5)
    router.heartbeat()
    assert router.duplicate(0, "m")
    clock.advance(0.5)  # then its copies are checked again (and maybe taken, or shed)
    router.heartbeat()
    assert not router.duplicate(0, "m") and not router.seen("m")
    router.control(0, IHAVE, {"topic": TOPIC, "ids": ["m"]})
    assert _talks(sent, IWANT) == [(0, IWANT, {"ids": ["m"]})]


def test_the_ids_shed_remembered_are_bounded() -> None:
    # An attacker's flood of ids shed can't grow the router's memory: the oldest go.
    router, _, _ = _meshed(1)
    for n in range(SHED_KEPT + 1):
        router.shed(f"m{n}")
    assert not router.duplicate(0, "m0") and router.duplicate(0, f"m{SHED_KEPT}")
