"""Plain mode's one connection per peer (``trustp2p.node.twins``), on stand-in
connections: which of two is dropped, and what is no twin."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from trustp2p.node.twins import CROSSING, DUPLICATE, Twins
from trustp2p.protocol.close import CloseCode
from trustp2p.protocol.handshake import NONCE_KEY

from .conftest import FakeClock
from .nodes import MakeNode, wait_for

_ids = itertools.count(1)


@dataclass
class FakeSocket:
    inbound: bool
    host: str = "127.0.0.1"
    peer_id: str | None = None
    closed: bool = False
    close_reason: str = ""
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def peer(self) -> str:
        return f"{self.host}:{1000 + self.id}"


@dataclass
class FakeProtocol:
    peer_version: dict[str, Any] | None = None


@dataclass
class FakeConn:
    socket: FakeSocket
    protocol: FakeProtocol = field(default_factory=FakeProtocol)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test"))


class FakeConnections:
    def __init__(self) -> None:
        self.closed: list[tuple[FakeConn, int, str]] = []

    def close(self, conn: FakeConn, code: int, reason: str) -> None:
        self.closed.append((conn, code, reason))
        conn.socket.closed = True


def introduce(twins: Twins, conn: FakeConn, nonce: str | None) -> None:
    body = {} if nonce is None else {NONCE_KEY: nonce}
    conn.protocol.peer_version = body
    twins.introduced(cast(Any, conn), body)


def make(our_nonce: str, clock: FakeClock | None = None) -> tuple[Twins, FakeConnections]:
    connections = FakeConnections()
    return Twins(cast(Any, connections), our_nonce, clock or FakeClock()), connections


@pytest.mark.parametrize(("ours", "theirs", "kept_ours"), [("a", "b", True), ("b", "a", False)])
def test_of_two_connections_the_one_dialled_by_the_smaller_nonce_stays(
    ours: str, theirs: str, kept_ours: bool
) -> None:
    twins, connections = make(ours)
    outbound = FakeConn(FakeSocket(inbound=False))
    inbound = FakeConn(FakeSocket(inbound=True))
    introduce(twins, outbound, theirs)
    introduce(twins, inbound, theirs)
    dropped = inbound if kept_ours else outbound
    kept = outbound if kept_ours else inbound
    assert connections.closed == [(dropped, 1000, DUPLICATE)]
    # The dialer learns its own dial was dropped, once, and finds the one that stays.
    assert twins.dropped(cast(Any, outbound.socket)) == (None if kept_ours else theirs)
    assert twins.dropped(cast(Any, outbound.socket)) is None
    assert twins.connection_to(theirs) is kept.socket


@pytest.mark.parametrize("ours", ["a", "c"])
def test_a_claim_made_once_a_link_is_up_closes_the_claimant_not_the_link(ours: str) -> None:
    """Found by an attacker's test: a process on the peer's host that replayed its
    nonce after the link was up got the link closed whenever the nonces favoured the
    claim, and our dialer waited for the claimant to leave (60 s, as long as it
    stayed). Two connections introduced more than CROSSING apart: the older stays."""
    clock = FakeClock()
    twins, connections = make(ours, clock)
    link = FakeConn(FakeSocket(inbound=False))
    introduce(twins, link, "b")
    clock.advance(CROSSING + 0.001)
    claim = FakeConn(FakeSocket(inbound=True))
    introduce(twins, claim, "b")
    assert connections.closed == [(claim, 1000, DUPLICATE)]
    assert twins.connection_to("b") is link.socket
    assert twins.dropped(cast(Any, link.socket)) is None  # our dialer waits for nothing


def test_both_ends_keep_the_same_of_two_connections_far_apart() -> None:
    # A dialled B; B's own dial came later: both ends drop B's, whatever the nonces.
    clock = FakeClock()
    a, a_closed = make("b", clock)
    b, b_closed = make("a", clock)
    first_at_a, first_at_b = FakeConn(FakeSocket(False)), FakeConn(FakeSocket(True))
    introduce(a, first_at_a, "a")
    introduce(b, first_at_b, "b")
    clock.advance(CROSSING * 3)
    second_at_a, second_at_b = FakeConn(FakeSocket(True)), FakeConn(FakeSocket(False))
    introduce(a, second_at_a, "a")
    introduce(b, second_at_b, "b")
    assert a_closed.closed == [(second_at_a, 1000, DUPLICATE)]
    assert b_closed.closed == [(second_at_b, 1000, DUPLICATE)]
    assert b.dropped(cast(Any, second_at_b.socket)) == "b"  # B's dialer waits for A's


def test_a_nonce_from_another_address_is_a_claim_not_a_twin() -> None:
    twins, connections = make("b")
    honest = FakeConn(FakeSocket(inbound=False, host="192.0.2.1"))
    claim = FakeConn(FakeSocket(inbound=True, host="198.51.100.7"))
    introduce(twins, honest, "a")
    introduce(twins, claim, "a")  # would win: dialled by "a" < "b"
    assert connections.closed == []


def test_the_original_sends_no_nonce_and_secure_peers_have_ids() -> None:
    twins, connections = make("b")
    for _ in range(2):
        introduce(twins, FakeConn(FakeSocket(inbound=True)), None)
        introduce(twins, FakeConn(FakeSocket(inbound=True, peer_id="tp1")), "a")
    assert connections.closed == []


def test_a_closed_connection_is_forgotten_with_what_the_dialer_would_wait_for() -> None:
    twins, connections = make("b")
    inbound = FakeConn(FakeSocket(inbound=True))
    outbound = FakeConn(FakeSocket(inbound=False))
    introduce(twins, inbound, "a")
    introduce(twins, outbound, "a")  # dialled by "b": dropped, the inbound one stays
    assert connections.closed == [(outbound, 1000, DUPLICATE)]
    assert twins.connection_to("a") is inbound.socket
    inbound.socket.closed = True
    twins.closed(cast(Any, inbound))
    assert twins.connection_to("a") is None  # the dialer may dial again
    again = FakeConn(FakeSocket(inbound=False))
    introduce(twins, again, "a")  # the peer's first connection now
    assert connections.closed == [(outbound, 1000, DUPLICATE)]


async def test_a_peer_exchange_dial_dropped_as_a_twin_is_not_redialled(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a new user (tester36 F1): two plain nodes that learned each other by
    peer exchange dialled each other; the one whose dial was dropped as the twin
    dialled again from its peer store every 1, 2, 4 ... 60 s for as long as both ran,
    each new connection closed as a duplicate (its threads' hooks each time). The
    outbound manager leaves a peer's URL alone while the twin that stays is open."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    options = {"secure": False, "peer_exchange": True, "target_outbound": 4}
    hub = await make_node(server=True, **options)
    a = await make_node(server=True, client=True, peers=[hub.url], **options)
    b = await make_node(server=True, client=True, peers=[hub.url], **options)
    assert a.url is not None and b.url is not None

    def linked() -> bool:  # a and b have one connection between them, either way
        ports = {a.url.rsplit(":", 1)[1], b.url.rsplit(":", 1)[1]}
        return any(s.peer.rsplit(":", 1)[1] in ports for s in a.sockets + b.sockets)

    await wait_for(linked, timeout=10)

    def duplicates() -> int:
        said = f"({CloseCode.NORMAL_CLOSURE} {DUPLICATE})"
        return sum(said in r.getMessage() for r in caplog.records)

    await wait_for(lambda: duplicates() >= 2, timeout=10)  # they dialled each other
    await asyncio.sleep(0.5)  # (dials under way meanwhile are dropped too)
    settled = duplicates()
    assert settled <= 4  # (each dial dropped is said at both ends)
    await asyncio.sleep(1.5)  # redials come within 0.1 s here (22 closes in 2 s before)
    assert duplicates() == settled
