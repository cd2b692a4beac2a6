"""
Announcements owed, on a fake clock: each heartbeat, a router tells (``ihave``) every
new id of a topic to each peer it refused a seat in the mesh (or pruned from it) that
isn't known to have it, ``max_ihave`` at most, each sender's in turn, and the recent
ids to ``lazy`` other subscribers at random, mesh peers among them.
Found by an attacker (attacker37 N1): 16 do-nothing connections took a
server's 12 mesh seats first-come, and a later honest subscriber, refused a seat, heard
of a message only when the heartbeat's sample of 6 among all subscribers fell on it:
p50 1.5 s, p90 4.2-7.1 s (5.6 s / 12.6 s with 64 connections), where the docs promise
heartbeat pace.
"""

from __future__ import annotations

import pytest

from trustp2p.identity import Identity
from trustp2p.protocol.gossip import GossipRouter, PeerKey, RouterAction, sign_message
from trustp2p.protocol.gossip.lazy import SET_FROM, Holders
from trustp2p.protocol.gossip.mesh import MeshBook
from trustp2p.protocol.gossip.recent import RecentMessages

from ..conftest import FakeClock
from .test_gossip_router import (
    GRAFT,
    IHAVE,
    IWANT,
    PRUNE,
    SUBSCRIPTIONS,
    TOPIC,
    _message,
    _messages,
    _router,
    _talks,
)

SQUATTERS = range(12)  # take the mesh first, and ask for every message (iwant)
CROWD = range(12, 52)  # subscribers outside the mesh that never grafted
LATE = 52  # a subscriber that grafted once the mesh was full: refused
PUBLISHER = 100  # a peer that publishes through us and subscribes to nothing


def _squatted() -> tuple[GossipRouter, list[RouterAction], FakeClock]:
    """A default router whose 12 mesh seats are held by SQUATTERS, with 40 more
    subscribers in CROWD and LATE refused a seat."""
    router, sent, clock = _router()
    router.subscribe(TOPIC)
    router.add_peer(PUBLISHER)
    for peer in [*SQUATTERS, *CROWD, LATE]:
        router.add_peer(peer)
        router.control(peer, SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": []})
    for peer in SQUATTERS:
        router.control(peer, GRAFT, {"topics": [TOPIC]})
    sent.clear()
    router.control(LATE, GRAFT, {"topics": [TOPIC]})
    assert _talks(sent) == [(LATE, PRUNE, {"topics": [TOPIC]})]
    assert router.mesh[TOPIC] == set(SQUATTERS)
    sent.clear()
    return router, sent, clock


def _publish(router: GossipRouter, seq: int) -> str:
    """PUBLISHER's message ``seq`` arrives and is sent on; its id."""
    message = _message(seq)
    assert router.receive(PUBLISHER, message)
    router.forward(PUBLISHER, message)
    return message.id


def _reached(sent: list[RouterAction], peer: PeerKey) -> set[str]:
    """The ids pushed or announced to ``peer``."""
    pushed = {m.id for p, m in _messages(sent) if p == peer}
    return pushed | {i for p, _, body in _talks(sent, IHAVE) if p == peer for i in body["ids"]}


def test_a_subscriber_refused_a_seat_hears_of_every_id_within_a_heartbeat() -> None:
    router, sent, clock = _squatted()
    seq = 0
    for _ in range(20):
        new = set()
        for _ in range(5):
            seq += 1
            new.add(_publish(router, seq))
            for squatter in SQUATTERS:  # missing pushes: they take the fanout's places
                router.control(squatter, IWANT, {"ids": [_message(seq).id]})
            clock.advance(0.1)
        router.heartbeat()
        assert _reached(sent, LATE) == new  # (before: when sampled, 6 of 53)
        sent.clear()
        clock.advance(0.5)
    router.heartbeat()
    assert _reached(sent, LATE) == set()  # told once is enough


def test_the_crowd_outside_the_mesh_is_still_told_at_random() -> None:
    router, sent, _ = _squatted()
    message_id = _publish(router, 1)
    pushed = {p for p, _ in _messages(sent)}
    router.heartbeat()
    told = {p for p, _, body in _talks(sent, IHAVE) if body["ids"] == [message_id]}
    assert LATE in told  # the owed
    others = set(SQUATTERS) - pushed | set(CROWD)  # the rest, the mesh among them
    # (a pushed peer sampled is told nothing: review55 R4, this failed for some seeds)
    assert 0 < len(told - {LATE}) <= router.lazy and told - {LATE} <= others
    assert PUBLISHER not in told


def test_a_flood_from_one_sender_keeps_no_other_out_of_an_owed_announcement() -> None:
    """Found by an attacker (attacker39 O1): an owed peer was told the first
    ``max_ihave`` (500) of a window's new ids and no more; a connection relaying 700
    valid messages a second kept an honest publisher's out, for good (owed peers are
    not in the random sample). Each sender's ids are taken in turn."""
    router, sent, clock = _squatted()
    flooder, honest = Identity.generate(), Identity.generate()
    router.add_peer("flooder")
    for seq in range(1, router.max_ihave + 201):
        message = sign_message(flooder, TOPIC, seq, 1_700_000_000_000, {"n": seq})
        assert router.receive("flooder", message)
        router.forward("flooder", message)
    wanted = sign_message(honest, TOPIC, 1, 1_700_000_000_000, {"n": 1})
    assert router.receive(PUBLISHER, wanted)
    router.forward(PUBLISHER, wanted)
    sent.clear()
    clock.advance(1.0)
    router.heartbeat()
    told = [body["ids"] for p, _, body in _talks(sent, IHAVE) if p == LATE]
    assert len(told) == 1 and len(told[0]) == router.max_ihave
    assert wanted.id in told[0]  # (before: the flooder's first 500 only)


@pytest.mark.parametrize("validated", [False, True])
def test_the_connections_of_one_address_share_one_turn(validated: bool) -> None:
    """review56: turns by connection let eight connections of one address (the default
    ``max_per_ip``) take 8 of 9 turns: an honest publisher's 100 ids, 55 told. Peers
    added with one ``group`` share a turn; review57 R4: so do messages of a topic with
    a validator whose connections closed before they were accepted (55 told again)."""
    router, sent, clock = _squatted()
    flooder = Identity.generate()
    nat = [f"nat{n}" for n in range(8)]
    for peer in nat:
        router.add_peer(peer, group="10.1.0.0/16")
    seq, waiting = 0, []
    for peer in nat:
        for _ in range(100):
            seq += 1
            message = sign_message(flooder, TOPIC, seq, 1_700_000_000_000, {"n": seq})
            assert router.receive(peer, message, pending=validated)
            waiting.append((peer, message))
    for peer in nat if validated else ():
        router.remove_peer(peer)  # (gone while its messages were validated)
    for peer, message in waiting:
        if validated:
            router.accept(peer, message)
        router.forward(peer, message)
    honest = {_publish(router, n) for n in range(1, 101)}
    sent.clear()
    clock.advance(1.0)
    router.heartbeat()
    told = {i for p, _, body in _talks(sent, IHAVE) if p == LATE for i in body["ids"]}
    assert len(told) == router.max_ihave and honest <= told  # (before: 55 of 100)


def test_recent_ids_past_the_limit_are_taken_from_each_sender_in_turn() -> None:
    recent: RecentMessages = RecentMessages(history=3)
    flood = [_message(seq) for seq in range(1, 7)]
    for message in flood:
        recent.add(message, "flooder")
    mine = _message(1, identity=Identity.generate())
    recent.add(mine)  # (this node's own: a sender of its own)
    other = _message(1, identity=Identity.generate())
    recent.add(other, "other")
    ids = recent.ids(TOPIC)
    assert recent.fair(ids, len(ids)) == ids  # (within the limit: as they are)
    assert recent.fair(ids, 4) == [flood[0].id, mine.id, other.id, flood[1].id]


def test_a_refused_peer_that_subscribes_again_within_its_backoff_is_owed_again() -> None:
    """review52 R4: LATE, refused a seat, unsubscribes and subscribes again (an app
    leaving and re-joining a room) and grafts: within its prune backoff the graft is
    early, tolerated and unanswered, and LATE was owed nothing: told of 3 ids in 30
    heartbeats, by sampling. A tolerated early graft makes it owed."""
    router, sent, clock = _squatted()
    router.control(LATE, SUBSCRIPTIONS, {"subscribe": [], "unsubscribe": [TOPIC]})
    router.control(LATE, SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": []})
    router.control(LATE, GRAFT, {"topics": [TOPIC]})  # at once: within the backoff
    for seq in range(1, 31):
        sent.clear()
        message_id = _publish(router, seq)
        clock.advance(1.0)
        router.heartbeat()
        assert message_id in _reached(sent, LATE)


def test_a_peer_pruned_from_a_full_mesh_is_owed_announcements() -> None:
    router, sent, clock = _squatted()
    clock.advance(120.0)  # the squatters have a minute and more of seniority
    late = [200, 201]
    for peer in late:
        router.add_peer(peer)
        router.control(peer, SUBSCRIPTIONS, {"subscribe": [TOPIC], "unsubscribe": []})
    router.mesh[TOPIC].update(late)  # (as a graft crossing ours would)
    sent.clear()
    router.heartbeat()  # over degree_high: trimmed to degree, the newest first
    pruned = {p for p, _, _ in _talks(sent, PRUNE)}
    assert set(late) <= pruned and len(router.mesh[TOPIC]) == router.degree
    sent.clear()
    message_id = _publish(router, 1)
    router.heartbeat()
    for peer in [*pruned, LATE]:
        assert message_id in _reached(sent, peer)


def test_a_peer_owed_announcements_is_owed_them_until_it_has_a_seat_or_leaves() -> None:
    book = MeshBook(prune_backoff=60.0)
    for peer in ("a", "b", "c", "d"):
        book.refused(TOPIC, peer, 0.0)
    book.refused("other", "a", 0.0)
    assert book.owed(TOPIC) == ["a", "b", "c", "d"]  # the oldest refusal first
    assert not book.may_graft(TOPIC, "a", 1.0)  # a backoff too
    book.joined(TOPIC, "a", 70.0)  # a seat: pushes or the mesh's announcements now
    book.left(TOPIC, "b")  # unsubscribed
    book.forget_peer("c")  # gone
    assert book.owed(TOPIC) == ["d"]
    assert book.owed("other") == ["a"]
    book.forget_topic(TOPIC)
    assert book.owed(TOPIC) == []
    assert book.owed("unknown") == []


def test_the_owed_are_told_no_more_once_they_leave() -> None:
    router, sent, _ = _squatted()
    router.control(LATE, SUBSCRIPTIONS, {"subscribe": [], "unsubscribe": [TOPIC]})
    _publish(router, 1)
    router.heartbeat()
    assert LATE not in {p for p, _, _ in _talks(sent, IHAVE)}
    router.remove_peer(LATE)
    assert router._book.owed(TOPIC) == []


def test_holders_past_set_from_are_noted_once_each() -> None:
    holders = Holders()
    peers = list(range(3 * SET_FROM))
    holders.start("m", None)
    assert holders.untold(0, ["m"]) == ["m"]
    holders.told(0, ["m"])
    assert holders.untold(0, ["m"]) == []
    for peer in peers:
        holders.add("m", peer)
        holders.copy_from("m", peer)
    assert sorted(holders["m"]) == peers  # each once, in a set past SET_FROM
    assert all(holders.untold(peer, ["m"]) == [] for peer in peers)
    assert holders.untold("new", ["m"]) == ["m"]
    assert [holders.serve("m", peer) for peer in peers] == [True] * len(peers)
    assert not any(holders.serve("m", peer) for peer in peers)  # once each
    holders.expire("m")
    assert "m" not in holders and holders.serve("m", 0)  # a fresh start
