"""Which peers are the catch-up rounds' preferred sources (review71 F3, review75): a
peer's address group earns credit only for a message of another origin that the peer,
authenticated and still connected, was the first to bring, live and accepted; its own
messages earn it nothing (an identity that published one a minute and served nothing
took the honest relay's share of the rounds), nor do caught-up ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from trustp2p.node.gossip import Validation
from trustp2p.node.gossip_catchup import Fetcher
from trustp2p.node.gossip_log import log_source
from trustp2p.protocol.gossip import CatchUp, GossipMessage, RelaySources
from trustp2p.protocol.gossip.sources import MIN_CREDIT
from trustp2p.testing import Network

from .test_gossip_behaviour import chain, gossip, socket_to, subscribed, wait_for

pytestmark = pytest.mark.asyncio


@pytest.fixture
def credited(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The groups credited, in order."""
    groups: list[str] = []
    original = RelaySources.relayed

    def relayed(self: RelaySources[Any], group: str, now: float) -> None:
        groups.append(group)
        original(self, group, now)

    monkeypatch.setattr(RelaySources, "relayed", relayed)
    return groups


async def test_only_a_relay_of_anothers_accepted_message_earns_credit(
    credited: list[str],
) -> None:
    async with Network(3, degree=0, secure=True) as network:
        a, _, c = await chain(network)

        def judge(message: GossipMessage) -> Validation:
            return Validation.IGNORE if message.body["kind"] == "ignore" else Validation.ACCEPT

        gossip(c).set_validator("chat", judge)
        await a.publish("chat", {"kind": "ignore"})  # C's validator drops it
        await a.publish("chat", {"kind": "ok"})
        await wait_for(lambda: len(network.received[1]) == 2 and len(network.received[2]) == 1)
        # B got A's own messages (no credit to A); C got them relayed by B: B earned
        # credit for the one C's validator accepted, not for the one it ignored.
        assert credited == [log_source(c, socket_to(c, "n1"))]


async def test_a_plain_peer_earns_no_credit(credited: list[str]) -> None:
    # review75 F3: without an authenticated id a peer's own messages can't be told
    # from those it relays.
    async with Network(3, degree=0) as network:
        a, _, _ = await chain(network)
        await a.publish("chat", {"n": 1})
        await network.wait_delivered(1)
        assert credited == []


async def test_a_relay_gone_before_the_validator_accepts_earns_no_credit(
    credited: list[str],
) -> None:
    # review75 F2: the credit outlived the connection it was for.
    async with Network(3, degree=0, secure=True) as network:
        a, _, c = await chain(network)
        judging, go = asyncio.Event(), asyncio.Event()

        async def judge(message: GossipMessage) -> Validation:
            judging.set()
            await go.wait()
            return Validation.ACCEPT

        gossip(c).set_validator("chat", judge)
        await a.publish("chat", {"n": 1})
        await judging.wait()
        await socket_to(c, "n1").close()
        go.set()
        await wait_for(lambda: len(network.received[2]) == 1)
        assert credited == []


async def test_caught_up_messages_earn_no_credit(credited: list[str]) -> None:
    async with Network(3, degree=0, secure=True) as network:
        a, b, c = network.nodes
        assert a.client is not None and c.client is not None and b.url is not None
        a.client.connect(b.url)
        await wait_for(lambda: subscribed(a, "chat", 1) and subscribed(b, "chat", 1))
        for n in range(2):
            await a.publish("chat", {"n": n})
        await wait_for(lambda: len(network.received[1]) == 2)
        c.client.connect(b.url)  # C catches up from B at its introduction
        await wait_for(lambda: len(network.received[2]) == 2)
        assert credited == []


async def test_the_periodic_round_is_given_the_sources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given: list[list[tuple[Any, float]]] = []
    original = CatchUp.choose

    def choose(self: CatchUp, peers: Sequence[Any], sources: Sequence[Any] = ()) -> Any:
        given.append(list(sources))
        return original(self, peers, sources)

    monkeypatch.setattr(CatchUp, "choose", choose)
    async with Network(3, degree=0, secure=True, catchup_interval=0.05) as network:
        a, _, c = await chain(network)
        b_at_c = socket_to(c, "n1")
        # A credit of 1 is a source for two half-lives (0.1 s here), which a loaded
        # machine's rounds may miss: A publishes until a round is given B.
        for n in range(100):
            await a.publish("chat", {"n": n})
            with contextlib.suppress(TimeoutError):
                await wait_for(lambda: any(s == b_at_c for g in given for s, _ in g), 0.5)
                break
        assert any(s == b_at_c and w >= MIN_CREDIT for g in given for s, w in g)


async def test_each_periodic_round_asks_the_longest_connected_peer_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by an attacker (a43 F1, review79): servers that relayed their own throwaway
    identities' messages took K of K + 1 of the periodic rounds, whatever their marks
    said, and an origin's last messages, which no later message shows missing, stayed
    missing. Each round now asks the longest connected peer too, which peers arriving
    later can't displace."""
    draws: list[tuple[CatchUp, Sequence[Any]]] = []
    asked: list[Any] = []
    choose, spawn_round = CatchUp.choose, Fetcher.spawn_round

    def drawing(self: CatchUp, peers: Sequence[Any], sources: Sequence[Any] = ()) -> Any:
        draws.append((self, peers))  # (gap refills draw too: none here, nothing published)
        return choose(self, peers, sources)

    def spawning(self: Fetcher, socket: Any, topics: set[str] | None = None) -> None:
        if topics is None:  # (an introduction's round names its topics)
            asked.append(socket)
        spawn_round(self, socket, topics)

    monkeypatch.setattr(CatchUp, "choose", drawing)
    monkeypatch.setattr(Fetcher, "spawn_round", spawning)
    async with Network(6, degree=0, catchup_interval=0.05) as network:
        v, first, *later = network.nodes
        assert v.client is not None and first.url is not None
        v.client.connect(first.url)
        await wait_for(lambda: subscribed(v, "chat", 1))
        for node in later:
            assert node.url is not None
            v.client.connect(node.url)
        await wait_for(lambda: subscribed(v, "chat", 5))
        oldest, ours = socket_to(v, "n1"), gossip(v).catchup
        start, before = len([d for d in draws if d[0] is ours]), len(asked)
        await wait_for(lambda: len([d for d in draws if d[0] is ours]) >= start + 20)
        # (each draw and its rounds are one step, with no await between)
        drawn = [peers for catchup, peers in draws if catchup is ours][start:]
        assert all(len(peers) == 5 and peers[0] is oldest for peers in drawn)
        mine = [s for s in asked[before:] if any(s is t for t in v.sockets)]
        assert mine.count(oldest) == len(drawn)
        assert len(mine) > len(drawn)  # and a random peer, the oldest or another
