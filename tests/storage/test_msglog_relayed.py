"""The message log's shares nest a relay's attribution (``via``) under the relay's own
share: behind a hub, an attacker's many origins injected at the hub no longer divide the
topic with an honest origin by their number (attacker36 F2), and the sub-sources a peer
names only divide its own share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FakeClock
from trustp2p.storage._msglog_shares import MAX_NAMED, Shares, source_nodes
from trustp2p.storage.msglog import LOG_PATH, SOURCE_SEPARATOR, SUB_LEVELS, MessageLog

from .adapters import message
from .sqlite_helpers import query
from .test_msglog_sources import kept_of, seqs

HUB, ATTACKER = "192.0.2.1", "198.51.100.7"
# The hub's tokens for its clients' sources (its honest publisher's, the attacker's).
HONEST_VIA, SYBIL_VIA = f"{HUB} hP", f"{HUB} hA"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / LOG_PATH


def honest(log: MessageLog, last: int, source: str = HONEST_VIA) -> None:
    for seq in range(1, last + 1):
        log.add(message(seq, origin="tphonest"), source)


def sybils(log: MessageLog, origins: int, per_origin: int, source: str, first: int = 1) -> None:
    """``per_origin`` messages from each of ``origins`` throwaway origins, round-robin;
    ``source`` may name ``{n}``, the origin's number (a sub-source of its own)."""
    for seq in range(first, first + per_origin):
        for n in range(origins):
            log.add(message(seq, origin=f"tpsybil{n}"), source.format(n=n))


def test_a_source_reads_as_its_top_and_its_sub_sources() -> None:
    assert SUB_LEVELS == 3 and SOURCE_SEPARATOR == " "
    # An address group alone (schema 3, or a message without via): one sub-source, "".
    assert source_nodes(HUB) == ((HUB,), (HUB, ""), (HUB, "", ""), (HUB, "", "", ""))
    assert source_nodes("") == (("",), ("", ""), ("", "", ""), ("", "", "", ""))
    assert source_nodes(f"{HUB} a b") == ((HUB,), (HUB, "a"), (HUB, "a", "b"), (HUB, "a", "b", ""))
    # More than SUB_LEVELS: the rest is left out (it only divided the last one's share).
    assert source_nodes(f"{HUB} a b c d")[-1] == (HUB, "a", "b", "c")


async def test_a_hubs_attribution_keeps_its_clients_apart(clock: FakeClock) -> None:
    # attacker36 F2 at small scale: everything comes from the hub. By the hub's
    # attribution the honest origin is one of two sub-sources (20 of 40 each).
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15)
        sybils(log, 30, 3, SYBIL_VIA)
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 16))
        assert kept_of(log, "tpsybil") == 25
    finally:
        await log.close()


async def test_without_attribution_the_hubs_origins_share_by_number(clock: FakeClock) -> None:
    # What a node behind an older hub still sees (no via): one source, 31 origins.
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15, HUB)
        sybils(log, 30, 3, HUB)
        assert len(log.range("tphonest", 1, 100)) <= 2
    finally:
        await log.close()


async def test_sub_sources_a_peer_makes_up_divide_its_own_share(clock: FakeClock) -> None:
    # The attacker, connected directly, names a new sub-source for each origin (and
    # two levels of them): its top source's share is all it divides.
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15)
        sybils(log, 30, 3, ATTACKER + " t{n} u{n}")
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 16))
    finally:
        await log.close()


async def test_at_two_hops_the_first_hubs_attribution_still_counts(clock: FakeClock) -> None:
    # Behind V behind the hub: V's token for the hub, then the hub's for its clients.
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15, "192.0.2.9 vR hP")
        sybils(log, 30, 3, "192.0.2.9 vR hA")
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 16))
    finally:
        await log.close()


async def test_the_payload_is_shared_by_sub_source_too(clock: FakeClock) -> None:
    log = await MessageLog.open(None, clock=clock, max_bytes=10_000)
    try:
        for seq in range(1, 41):
            log.add(message(seq, origin="tphonest", data='{"x": "' + "a" * 100 + '"}'), HONEST_VIA)
        for n in range(300):
            data = '{"x": "' + "a" * 1000 + '"}'
            log.add(message(1, origin=f"tpsybil{n}", data=data), SYBIL_VIA)
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 41))
    finally:
        await log.close()


async def test_nested_sources_survive_a_restart(path: Path, clock: FakeClock) -> None:
    log = await MessageLog.open(path, clock=clock, max_messages=40)
    honest(log, 15)
    sybils(log, 30, 3, SYBIL_VIA)
    await log.close()
    assert sorted(query(path, "SELECT DISTINCT source FROM messages")) == [
        (SYBIL_VIA,),
        (HONEST_VIA,),
    ]
    log = await MessageLog.open(path, clock=clock, max_messages=40)
    try:
        sybils(log, 30, 3, SYBIL_VIA, first=4)
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 16))
    finally:
        await log.close()


async def test_a_claim_takes_an_origin_out_of_a_hubs_sub_source(clock: FakeClock) -> None:
    # The origin's own connection delivers one of its messages: its stream counts for
    # that connection's source (a top source with one sub-source) from then on.
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15)
        log.claim("tphonest", "chat", "203.0.113.5")
        sybils(log, 30, 3, SYBIL_VIA)
        sybils(log, 30, 3, HUB, first=4)  # the hub's own "" sub-source
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 16))
    finally:
        await log.close()


def test_the_sub_sources_named_under_a_source_are_bounded() -> None:
    # A peer names sub-sources freely: one per origin, 3 levels deep, costs the topic
    # memory. Past MAX_NAMED right under any level, a new origin counts for the levels
    # above the first new one.
    shares = Shares()
    for n in range(3 * MAX_NAMED):
        source = shares.admit(f"{ATTACKER} t{n} u{n} v{n}")
        if n < MAX_NAMED:
            assert source == f"{ATTACKER} t{n} u{n} v{n}"
        else:
            assert source == ATTACKER
        shares.add(f"tpsybil{n}", source, 1)
    for n in range(2 * MAX_NAMED):  # below one name
        source = shares.admit(f"{ATTACKER} t0 w{n}")
        kept = n < MAX_NAMED - 1  # (u0 is named right under t0 already)
        assert source == (f"{ATTACKER} t0 w{n}" if kept else f"{ATTACKER} t0")
        shares.add(f"tpdeep{n}", source, 1)
    named = [node for node in shares.counts if len(node) > 1 and node[-1]]
    assert len(named) == 4 * MAX_NAMED - 1
    assert shares.admit(f"{ATTACKER} t1 u1 v1") == f"{ATTACKER} t1 u1 v1"  # kept: known
    assert shares.admit(f"{HUB} hP x") == f"{HUB} hP x"  # another top's: its own count


def test_one_clients_made_up_sub_sources_dont_crowd_out_the_hubs_other_clients() -> None:
    # The attacker, a client of the hub, names sub-sources of its own at the hub: at
    # the node behind it they are under the hub's token for the attacker, and fill the
    # count of names under that token only; a client of the hub new after that keeps
    # its own, and the names under it (review49 R1).
    shares = Shares()
    shares.add("tphonest", shares.admit(HONEST_VIA), 1)
    for n in range(2 * MAX_NAMED):
        shares.add(f"tpsybil{n}", shares.admit(f"{SYBIL_VIA} j{n}"), 1)
    assert shares.admit(f"{HUB} hQ") == f"{HUB} hQ"
    assert shares.admit(f"{HUB} hQ x") == f"{HUB} hQ x"


@pytest.mark.parametrize("exhaust", [False, True])
@pytest.mark.parametrize("namer", ["hA", "hH hA"])
async def test_one_clients_names_leave_the_other_clients_theirs(
    clock: FakeClock, exhaust: bool, namer: str
) -> None:
    """Found in review: the bound on names was counted once a source (review49 R1:
    one client's names through hub R, ``hA``, filled it for the clients of hub H behind
    R), then once a first-level name (review51 R2: a client of H naming below its own
    token, ``hH hA``, filled it for H's other clients); those then fell in with the
    attacker's flood at H: 45 of 450 kept. Counted per level."""
    hub = "192.0.2.1"  # at V: R's tokens hA (the attacker's connection), hH (hub H)
    log = await MessageLog.open(None, clock=clock, max_messages=10_000)
    try:
        log.add(message(1, origin="tphubH"), f"{hub} hH")
        if exhaust:
            for n in range(MAX_NAMED):
                log.add(message(1, origin=f"tpnamer{n}"), f"{hub} {namer} j{n}")
        for seq in range(1, 451):
            log.add(message(seq, origin="tphonest"), f"{hub} hH hP")
        sybils(log, 200, 70, f"{hub} hH hA2")
        assert seqs(log.range("tphonest", 1, 1000, limit=10_000, max_bytes=10**9)) == list(
            range(1, 451)
        )
    finally:
        await log.close()
