"""A message dropped as delivered though its origin published it after its mark moved
here: the origin numbers again below what it published (its message log lost), said
and counted, not dropped unsaid."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

from tests.conftest import FakeClock
from trustp2p.identity import Identity
from trustp2p.node.gossip_drops import signed_twice
from trustp2p.node.gossip_log import to_logged
from trustp2p.protocol.gossip import CLOCK_SKEW, sign_message, stream_key
from trustp2p.storage.msglog import MessageLog


async def test_an_origin_numbering_again_below_its_mark_is_said() -> None:
    # Found by a tester: a publisher whose log was lost once its messages had aged out
    # of its peers' logs numbered from 1 again; every node held its mark (5) and
    # dropped the next 5 messages as delivered, with no WARNING and no count.
    said: list[tuple[int, str, str]] = []

    def log(logger: Any, level: int, kind: str, message: str, *args: object) -> None:
        said.append((level, kind, message % args))

    node = cast(Any, SimpleNamespace(connections=SimpleNamespace(inbound=SimpleNamespace(log=log))))
    clock = FakeClock(1_000_000.0)
    messages = await MessageLog.open(None, clock=clock)
    try:
        origin = Identity.generate()
        stream = stream_key("chat", origin.peer_id)
        messages.mark_delivered(stream, 5)  # delivered up to 5, then aged out of the log

        def published(seq: int, after: float) -> Any:
            return sign_message(origin, "chat", seq, int((clock() + after) * 1000), {"n": seq})

        # Published about when the mark moved (clocks differ): maybe the one delivered.
        assert not signed_twice(node, messages, published(2, CLOCK_SKEW), CLOCK_SKEW, clock())
        assert said == []
        renumbered = published(2, CLOCK_SKEW + 60)
        # Not if it is timestamped ahead of our clock by more than CLOCK_SKEW: the
        # origin's clock runs fast, and a late copy would look so (found in review).
        assert not signed_twice(node, messages, renumbered, CLOCK_SKEW, clock())
        assert said == []
        clock.advance(CLOCK_SKEW)  # (the mark moved CLOCK_SKEW + 60 s before it)
        assert signed_twice(node, messages, renumbered, CLOCK_SKEW, clock())
        assert said == [
            (logging.WARNING, "renumbered", f"! origin {origin.peer_id} numbers again below"
             " what it published on 'chat': seq 2, published after seq 5 was delivered here"
             " (a publisher whose message log was lost?): dropped as delivered"),
        ]  # fmt: skip
        # Another origin, without a mark here: nothing to tell.
        other = sign_message(Identity.generate(), "chat", 2, int(clock() * 1000) + 10**9, {})
        assert not signed_twice(node, messages, other, CLOCK_SKEW, clock())
        # The log keeps another message for the number: signed twice, as before.
        messages.add(to_logged(published(7, 0)))
        messages.mark_delivered(stream, 7)
        again = sign_message(origin, "chat", 7, int(clock() * 1000), {"n": "another"})
        assert not signed_twice(node, messages, again, CLOCK_SKEW, clock())
        assert said[-1][1] == "signed twice"
    finally:
        await messages.close()
