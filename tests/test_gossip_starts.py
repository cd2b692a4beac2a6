"""How a node says the gaps it gives up: losses at WARNING within their budget, a
stream's start (history nobody keeps) apart, small ones at DEBUG only, and a catch-up's
starts in one line at INFO."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from trustp2p import Node
from trustp2p.drivers.memory import MemoryHub
from trustp2p.identity import Identity
from trustp2p.node.gossip_drops import START_SAID, STARTS_SAID_EVERY, SkipsSaid
from trustp2p.protocol.gossip import GapSkipped, GossipMessage, sign_message
from trustp2p.protocol.package import PackageType, build_package

from .conftest import FakeClock, wait_for
from .test_gossip_behaviour import memory_node, socket_to, subscribed

Said = list[tuple[int, str, str]]


def _skips(clock: FakeClock) -> tuple[SkipsSaid, Said]:
    """A :class:`SkipsSaid` whose node's log budget lets every line through, into the
    list returned: (level, kind, line)."""
    said: Said = []

    def log(logger: Any, level: int, kind: str, message: str, *args: object) -> None:
        said.append((level, kind, message % args))

    node = cast(Any, SimpleNamespace(connections=SimpleNamespace(inbound=SimpleNamespace(log=log))))
    return SkipsSaid(node, clock), said


def test_starts_are_said_apart_from_losses_and_small_ones_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by a measurement: under an attacker's 200 throwaway origins, each with its
    first message gone, their starts used up the log budget and hid an honest
    origin's start of 153 messages."""
    skips, said = _skips(FakeClock())
    caplog.set_level(logging.DEBUG, logger="trustp2p.node.gossip")
    for n in range(200):
        skips.skipped(GapSkipped("chat", f"tpsybil{n}", 1, 1, "start"))
    skips.skipped(GapSkipped("chat", "tphonest", 1, 153, "start"))
    skips.skipped(GapSkipped("chat", "tphonest", 160, 169, "timeout"))
    skips.heartbeat(fetching=False)
    assert said == [
        (logging.WARNING, "gap skipped", "! 10 messages of tphonest on 'chat' before seq 170"
         " skipped (timeout)"),
        (logging.INFO, "stream start", "= tphonest on 'chat' starts at seq 154 here: the peers"
         " asked keep none of the 153 before"),
    ]  # fmt: skip
    assert len([r for r in caplog.records if "starts at seq 2 here" in r.message]) == 200
    assert START_SAID == 10


def test_a_catch_ups_starts_are_one_line_once_nothing_is_fetched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by a tester (tester46 LOW 4): a new node joining a hub that kept the last
    500 messages of each of 20 origins said "starts at seq 21 here" for 10 of them at
    INFO (the log budget's), then "10 more 'stream start' events ... at DEBUG only"."""
    clock = FakeClock()
    skips, said = _skips(clock)
    caplog.set_level(logging.DEBUG, logger="trustp2p.node.gossip")
    for n in range(20):
        skips.skipped(GapSkipped("chat" if n % 2 else "news", f"tporigin{n}", 1, 20 + n, "start"))
    skips.heartbeat(fetching=True)  # more may come
    clock.advance(STARTS_SAID_EVERY - 1)
    skips.heartbeat(fetching=True)
    assert said == []
    skips.heartbeat(fetching=False)
    assert said == [
        (logging.INFO, "stream start", "= 20 streams start here, on 2 topic(s): the peers asked"
         " keep none of the 590 messages before them (the most: tporigin19 on 'chat' at seq 40,"
         " 39 before; each said at DEBUG)"),
    ]  # fmt: skip
    details = [r for r in caplog.records if "starts at seq" in r.message]
    assert len(details) == 20 and {r.levelno for r in details} == {logging.DEBUG}
    said.clear()
    skips.heartbeat(fetching=False)
    assert said == []  # said once
    # A catch-up that goes on: its starts are said every STARTS_SAID_EVERY.
    skips.skipped(GapSkipped("chat", "tpa", 1, 10, "start"))
    skips.skipped(GapSkipped("chat", "tpb", 1, 12, "start"))
    clock.advance(STARTS_SAID_EVERY)
    skips.heartbeat(fetching=True)
    assert [line for _, _, line in said] == [
        "= 2 streams start here, on 1 topic(s): the peers asked keep none of the 22 messages"
        " before them (the most: tpb on 'chat' at seq 13, 12 before; each said at DEBUG)"
    ]


@pytest.mark.parametrize("stop_early", [False, True], ids=["caught-up", "stopped"])
async def test_a_node_joining_a_hub_with_history_says_its_starts_in_one_line(
    caplog: pytest.LogCaptureFixture, stop_early: bool
) -> None:
    """tester46 LOW 4 over memory connections: a hub keeps the last 10 of each origin's
    20 messages; a new node catches up ORIGINS streams, each starting at seq 11 here.
    Before: a line at INFO for each of them (10 within the log budget). ``stop_early``:
    the new node stops as its first start is decided, and says those gathered then
    (review91 F3: they were said at DEBUG only)."""
    origins, per, kept = 12, 20, 10
    hub = MemoryHub()
    async with (
        memory_node(hub, "feed") as feed,
        # (announcing nothing: the new node gets only what catch-up brings, not the
        # recent messages it would pull, seqs 1 to 10 among them)
        memory_node(hub, "hub", log_max_messages=origins * kept, gossip_history=1) as server,
    ):
        delivered: list[GossipMessage] = []
        server.subscribe("chat", delivered.append)
        assert feed.client is not None and server.url is not None
        feed.client.connect(server.url)
        await wait_for(lambda: bool(feed.sockets))
        identities = [Identity.generate() for _ in range(origins)]
        old = int((time.time() - 60) * 1000)  # (a start is decided past START_AGE)
        for seq in range(1, per + 1):
            for identity in identities:  # round robin: the hub's log keeps the last 10
                body = sign_message(identity, "chat", seq, old + seq, {"n": seq}).to_body()
                await feed.send(
                    socket_to(feed, "hub"), build_package(PackageType.GOSSIP, "chat", body)
                )
        await wait_for(lambda: len(delivered) == origins * per)
        assert server.gossip is not None and server.gossip.message_log is not None
        assert len(server.gossip.message_log) == origins * kept
        caplog.set_level(logging.DEBUG if stop_early else logging.INFO, "trustp2p.node.gossip")
        # (stop_early: small fetches, the catch-up goes on after the first start)
        async with memory_node(hub, "new", **({"catchup_batch": 1} if stop_early else {})) as new:
            got: list[GossipMessage] = []
            new.subscribe("chat", got.append)
            assert new.client is not None
            new.client.connect(server.url)
            await wait_for(lambda: subscribed(server, "chat", 1))
            if stop_early:
                await wait_for(lambda: any("starts at seq" in r.message for r in caplog.records))
                return await _stop_and_check(new, caplog)
            await wait_for(lambda: len(got) == origins * kept, timeout=20)
            assert {m.seq for m in got} == set(range(per - kept + 1, per + 1))
            await wait_for(lambda: starts(caplog) != [])
            assert starts(caplog) == [
                f"= {origins} streams start here, on 1 topic(s): the peers asked keep none of"
                f" the {origins * (per - kept)} messages before them"
            ]  # (before: 10 lines, one a stream)


async def _stop_and_check(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    await node.stop()
    said = starts(caplog)
    assert len(said) == 1 and said[0].startswith("= "), said


def starts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines said at INFO about streams that start, up to the detail."""
    return [
        r.getMessage().split(" (the most")[0]
        for r in caplog.records
        if r.levelno == logging.INFO and "start" in r.getMessage() and "here" in r.getMessage()
    ]
