"""An origin's spare source in the message log: another address's path that delivered
copies of its messages. A full topic that would drop one of its messages counts it
for the spare instead if its share is bigger there (attacker38 A1: the peer that
relayed an honest origin's messages first, without a ``via``, then flooded its own
share with throwaway origins, left it 49 of 450 at the next node)."""

from __future__ import annotations

import pytest

from tests.conftest import FakeClock
from trustp2p.storage._msglog_shares import Shares
from trustp2p.storage.msglog import MessageLog

from .adapters import message
from .test_msglog_relayed import ATTACKER, HONEST_VIA, HUB, sybils
from .test_msglog_sources import kept_of, seqs

HONEST = "tphonest"


def honest(log: MessageLog, last: int, source: str, origin: str = HONEST) -> None:
    for seq in range(1, last + 1):
        log.add(message(seq, origin=origin), source)


@pytest.mark.parametrize("spare", [True, False])
async def test_an_origin_a_flooder_relayed_first_goes_to_its_honest_path(
    clock: FakeClock, spare: bool
) -> None:
    # A1 at small scale: the attacker delivers each honest message first (no via),
    # the hub a copy of it (with its via), then the attacker floods its own address.
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15, ATTACKER)
        assert log.lacks_spare(HONEST, "chat")
        if spare:
            log.spare(HONEST, "chat", HONEST_VIA)
            assert not log.lacks_spare(HONEST, "chat")
        sybils(log, 30, 3, ATTACKER)
        kept = seqs(log.range(HONEST, 1, 100))
        if spare:  # half the topic (the hub's address), all its own
            assert kept == list(range(1, 16))
            assert kept_of(log, "tpsybil") == 25
        else:  # one of the attacker's 31 origins, as before
            assert len(kept) <= 2
    finally:
        await log.close()


async def test_a_spare_is_another_address_only(clock: FakeClock) -> None:
    # A peer's other paths (sub-sources it names) are its own share: never a spare.
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    try:
        honest(log, 15, ATTACKER)
        log.spare(HONEST, "chat", f"{ATTACKER} made-up")
        log.spare("tpnobody", "chat", HONEST_VIA)  # nothing kept: nothing to do
        assert log.lacks_spare(HONEST, "chat") and not log.lacks_spare("tpnobody", "chat")
        sybils(log, 30, 3, ATTACKER)
        assert len(log.range(HONEST, 1, 100)) <= 2
    finally:
        await log.close()


async def run_attack(clock: FakeClock, spare: str | None) -> MessageLog:
    """The attack the other way: an honest origin counts for its hub's path (one of
    three), and the attacker, a peer of both, gives it a spare by sending copies, then
    looks light (one origin of its own) before it floods with 30 more."""
    log = await MessageLog.open(None, clock=clock, max_messages=40)
    honest(log, 10, HONEST_VIA)
    for name in ("hQ", "hW"):
        honest(log, 10, f"{HUB} {name}", origin=f"tp{name}")
    if spare is not None:
        log.spare(HONEST, "chat", spare)
    sybils(log, 1, 12, ATTACKER)
    sybils(log, 31, 3, ATTACKER, first=13)
    return log


@pytest.mark.parametrize("spare", [ATTACKER, f"{ATTACKER} lure"])
async def test_an_attackers_copies_take_no_honest_origin_into_its_flood(
    clock: FakeClock, spare: str
) -> None:
    # The origin goes to the attacker's path while that gives it more (there one of
    # two origins of one of two addresses: a quarter, against a sixth at the hub's),
    # and comes back once the flood makes it less: it keeps at least what it keeps
    # without the attacker's copies. (A path of the attacker's own, apart from its
    # flood's, only gives it more.)
    control = await run_attack(clock, None)
    attacked = await run_attack(clock, spare)
    try:
        kept, without = seqs(attacked.range(HONEST, 1, 100)), seqs(control.range(HONEST, 1, 100))
        assert len(without) >= 6  # 40 / 2 addresses / 3 of the hub's paths, about
        assert kept == without if spare == ATTACKER else kept == list(range(1, 11))
    finally:
        await control.close()
        await attacked.close()


def test_ways_count_a_move_before_it_is_made() -> None:
    shares = Shares()
    shares.take("tpa", "x a", 5)
    shares.take("tpb", "x b", 5)
    shares.take("tpc", "y", 5)
    shares.take("tpd", "y", 5)
    assert shares.ways("x a") == 2 * 2  # two addresses, two paths of x's
    assert shares.ways("y") == 2 * 2  # two origins of y's
    # tpa to y: x keeps one path (b), y has three origins.
    assert shares.ways("y", "x a", 5) == 2 * 3
    # tpc to x's path a: y keeps one origin, x's a has two.
    assert shares.ways("x a", "y", 5) == 2 * 2 * 2
    # To an address new to the topic, from one it held alone.
    shares.take("tpe", "z", 1)
    assert shares.ways("w c", "z", 1) == 3
    assert shares.ways("w c", "y", 5) == 4
