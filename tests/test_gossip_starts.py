"""How a node says the gaps it gives up: losses at WARNING within their budget, a
stream's start (history nobody keeps) apart, small ones at DEBUG only."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from trustp2p.node.gossip_drops import START_SAID, say_skipped
from trustp2p.protocol.gossip import GapSkipped


def test_starts_are_said_apart_from_losses_and_small_ones_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by a measurement: under an attacker's 200 throwaway origins, each with its
    first message gone, their starts used up the log budget and hid an honest
    origin's start of 153 messages."""
    said: list[tuple[int, str, str]] = []

    def log(logger: Any, level: int, kind: str, message: str, *args: object) -> None:
        said.append((level, kind, message % args))

    node = cast(Any, SimpleNamespace(connections=SimpleNamespace(inbound=SimpleNamespace(log=log))))
    caplog.set_level(logging.DEBUG, logger="trustp2p.node.gossip")
    for n in range(200):
        say_skipped(node, GapSkipped("chat", f"tpsybil{n}", 1, 1, "start"))
    say_skipped(node, GapSkipped("chat", "tphonest", 1, 153, "start"))
    say_skipped(node, GapSkipped("chat", "tphonest", 160, 169, "timeout"))
    assert said == [
        (logging.INFO, "stream start", "= tphonest on 'chat' starts at seq 154 here: the peers"
         " asked keep none of the 153 before"),
        (logging.WARNING, "gap skipped", "! 10 messages of tphonest on 'chat' before seq 170"
         " skipped (timeout)"),
    ]  # fmt: skip
    assert len([r for r in caplog.records if "starts at seq 2 here" in r.message]) == 200
    assert START_SAID == 10
