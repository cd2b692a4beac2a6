"""The origins gone lately (review84 H1), on a fake clock."""

from __future__ import annotations

from trustp2p.protocol.gossip import ORIGIN_GRACE, OriginsGone

from ..conftest import FakeClock


def test_an_origin_gone_is_waited_for_the_grace_then_forgotten() -> None:
    clock = FakeClock()
    origins = OriginsGone(clock, 30.0)
    assert not origins.lately("a")
    origins.gone("a")
    assert origins.grace == ORIGIN_GRACE * 30.0 == 60.0  # (gap_timeout's default: 30 s)
    clock.advance(origins.grace - 0.001)
    assert origins.lately("a")
    clock.advance(0.001)
    assert not origins.lately("a")
    origins.gone("a")  # gone again: counted from then
    assert origins.lately("a")


def test_a_plain_peer_is_no_origin_and_the_memory_is_bounded() -> None:
    clock = FakeClock()
    origins = OriginsGone(clock, 30.0, limit=2)
    origins.gone(None)  # (a plain peer's connection: no peer id)
    for peer_id in ("a", "b", "c"):
        origins.gone(peer_id)
    assert [origins.lately(p) for p in ("a", "b", "c")] == [False, True, True]  # oldest out
    origins.gone("b")  # ...and a second close moves it to the newest
    origins.gone("d")
    assert [origins.lately(p) for p in ("b", "c", "d")] == [True, False, True]
