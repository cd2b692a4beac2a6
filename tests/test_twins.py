"""Plain mode's one connection per peer (``trustp2p.node.twins``), on stand-in
connections: which of two is dropped, and what is no twin."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from trustp2p.node.twins import DUPLICATE, Twins
from trustp2p.protocol.handshake import NONCE_KEY

_ids = itertools.count(1)


@dataclass
class FakeSocket:
    inbound: bool
    host: str = "127.0.0.1"
    peer_id: str | None = None
    closed: bool = False
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


def make(our_nonce: str) -> tuple[Twins, FakeConnections]:
    connections = FakeConnections()
    return Twins(cast(Any, connections), our_nonce), connections


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
