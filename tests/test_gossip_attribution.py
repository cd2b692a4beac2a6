"""How a node attributes a message it takes in (attacker36 F2): the source its log
counts it for, and the ``via`` it sends it on with; no sockets."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

from trustp2p.identity import Identity
from trustp2p.node.gossip_log import Attribution
from trustp2p.protocol.gossip import GossipMessage, sign_message


class _Connections:
    def share_group(self, socket: SimpleNamespace) -> str | None:
        return str(socket.host)

    def budget_key(self, socket: SimpleNamespace) -> str:
        return str(socket.host)


def test_a_node_counts_a_message_under_its_connection_then_what_the_via_names() -> None:
    attribution = Attribution(SimpleNamespace(connections=_Connections()))  # type: ignore[arg-type]
    hub, other = SimpleNamespace(host="192.0.2.1"), SimpleNamespace(host="192.0.2.2")
    message = sign_message(Identity.generate(), "chat", 1, 1_700_000_000_000, {})
    mine = attribution.passed_on(hub, message, live=True)
    (token,) = mine.via.split(".")  # a token for the hub's source: no address in it
    assert re.fullmatch(r"[A-Za-z0-9_-]{8}", token) and attribution.source(hub, mine) == "192.0.2.1"
    relayed = attribution.passed_on(hub, GossipMessage.relayed(mine), live=True)
    assert relayed.via == f"{token}.{token}"  # the same for one source
    assert attribution.source(hub, relayed) == f"192.0.2.1 {token}"
    named = dataclasses.replace(message, via="a.b.c.d.e")  # (checked when read)
    passed = attribution.passed_on(other, named, live=True)
    first = passed.via.split(".")[0]
    assert first != token and passed.via == f"{first}.a.b.c"  # SUB_LEVELS of them
    assert attribution.source(other, passed) == "192.0.2.2 a b c"
    fetched = attribution.passed_on(other, named, live=False)  # a catch-up answer's
    assert fetched.via == first and attribution.source(other, fetched) == "192.0.2.2"
    assert attribution.passed_on(None, named, live=True).via == ""  # the node's own


def test_the_origins_that_come_by_one_path_share_its_source() -> None:
    # The log keeps a source for each origin new to a topic: a hub's many origins, by
    # one path, hold one string, not one each.
    attribution = Attribution(SimpleNamespace(connections=_Connections()))  # type: ignore[arg-type]
    hub = SimpleNamespace(host="192.0.2.1")
    sources = [
        attribution.source(hub, dataclasses.replace(message, via="r.a.b"))
        for message in (
            sign_message(Identity.generate(), "chat", 1, 1_700_000_000_000, {}) for _ in range(2)
        )
    ]
    assert sources[0] == "192.0.2.1 a b" and sources[0] is sources[1]
