"""The reconnect storm rule on a fake clock: a peer that reconnects in a storm is
refused new connections for a while, and an honest client redialling with the default
back-off never is."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from trustp2p.options import NodeOptions
from trustp2p.protocol.deliver import ConnId
from trustp2p.protocol.limits import (
    STORM_CONNECTIONS,
    STORM_COOLDOWN,
    STORM_WINDOW,
    ReconnectStorms,
)
from trustp2p.protocol.outbound import OutboundPolicy, Reconnect

from ..conftest import FakeClock


def test_defaults() -> None:
    storms = ReconnectStorms()
    assert (storms.connections, storms.window, storms.cooldown) == (20, 10.0, 60.0)
    assert (STORM_CONNECTIONS, STORM_WINDOW, STORM_COOLDOWN) == (20, 10.0, 60.0)
    options = NodeOptions(server=True)
    rule = options.reconnect_storms()
    assert rule is not None
    assert (rule.connections, rule.window, rule.cooldown) == (20, 10.0, 60.0)
    assert NodeOptions(server=True, storm_connections=None).reconnect_storms() is None


def test_a_storm_is_refused_then_allowed_after_the_cooldown(clock: FakeClock) -> None:
    storms = ReconnectStorms()
    refused = []
    for _ in range(50):  # 50 connections in 1 s from one peer
        refused.append(storms.arrive("address:10.0.0.1", clock()))
        clock.advance(0.02)
    assert refused[:19] == [None] * 19
    first = refused[19]
    assert first is not None and first.started and first.left == 60.0
    assert first.reason == "reconnecting too often: try again in 60 s"
    later = refused[20:]
    assert all(c is not None and not c.started for c in later)
    assert storms.cooling("address:10.0.0.1", clock()) == pytest.approx(60.0 - 31 * 0.02)
    # Other peers are not touched.
    assert storms.arrive("address:10.0.0.2", clock()) is None
    clock.advance(59.0)
    assert storms.arrive("address:10.0.0.1", clock()) is not None
    clock.advance(1.0)
    assert storms.cooling("address:10.0.0.1", clock()) == 0.0
    # After the cooldown the count starts over: a full window's worth again.
    assert [storms.arrive("address:10.0.0.1", clock()) for _ in range(19)] == [None] * 19
    assert storms.arrive("address:10.0.0.1", clock()) is not None


def test_knocking_during_the_cooldown_does_not_lengthen_it(clock: FakeClock) -> None:
    storms = ReconnectStorms(connections=3, window=10.0, cooldown=30.0)
    for _ in range(3):
        storms.arrive("tpa", clock())
    for _ in range(29):
        clock.advance(1.0)
        assert storms.arrive("tpa", clock()) is not None
    clock.advance(1.0)
    assert storms.arrive("tpa", clock()) is None


def test_connections_that_left_the_window_do_not_count(clock: FakeClock) -> None:
    storms = ReconnectStorms(connections=3, window=10.0, cooldown=30.0)
    for _ in range(100):  # one every 5 s: two in any window, never three
        assert storms.arrive("tpa", clock()) is None
        clock.advance(5.0)
    # Three within 10 s make a storm: the last at 495 s, then 501 s and 502 s.
    clock.advance(1.0)
    assert storms.arrive("tpa", clock()) is None
    clock.advance(1.0)
    cooldown = storms.arrive("tpa", clock())
    assert cooldown is not None and cooldown.started


def test_memory_is_bounded(clock: FakeClock) -> None:
    storms = ReconnectStorms(connections=2, window=10.0, cooldown=30.0, max_tracked=100)
    for n in range(100):
        storms.arrive(f"address:10.0.0.{n}", clock())
        storms.arrive(f"address:10.0.0.{n}", clock())  # each in a cooldown
    assert len(storms) == 100
    clock.advance(31.0)
    storms.arrive("tpnew", clock())
    assert len(storms) == 1


def test_invalid_rule() -> None:
    for kwargs in ({"connections": 1}, {"window": 0.0}, {"cooldown": -1.0}):
        with pytest.raises(ValueError, match="need connections"):
            ReconnectStorms(**kwargs)  # type: ignore[arg-type]


def _redial(
    storms: ReconnectStorms,
    rng: Callable[[], float],
    lifetime: Callable[[], float | None],
    horizon: float,
) -> int:
    """An honest client redialling one server with the default back-off (the same
    :class:`Reconnect` the node uses), each connection living ``lifetime()`` seconds
    (``None``: the dial failed); the server applies ``storms``. Returns the dials."""
    clock = FakeClock(0.0)
    options = NodeOptions(client=True)
    reconnect = Reconnect(
        clock=clock,
        initial=options.reconnect_initial,
        maximum=options.reconnect_max,
        factor=options.reconnect_factor,
        jitter=options.reconnect_jitter,
        rng=rng,
    )
    dials = 0
    while clock() < horizon:
        dials += 1
        assert storms.arrive("tphonest", clock()) is None, f"refused at {clock():.2f} s"
        lived = lifetime()
        if lived is None:
            delay = reconnect.failed()
        else:
            reconnect.opened()
            clock.advance(lived)
            delay = reconnect.closed()
        clock.advance(delay)
    return dials


@pytest.mark.parametrize("lived", [None, 0.0, 0.5, 1.5, 1.51, 2.0, 3.0, 10.0])
def test_the_default_back_off_is_never_refused(lived: float | None) -> None:
    # The shortest delays (the most jitter) and each connection dropped after the same
    # time; 1.51 s is the worst: just long enough to start the delays over each time
    # (a dial every 2.26 s, 5 in 10 s).
    rule = NodeOptions(server=True).reconnect_storms()
    assert rule is not None
    dials = _redial(rule, lambda: 0.999999, lambda: lived, horizon=3600.0)
    assert dials > 10


def test_the_default_back_off_is_never_refused_whatever_its_luck() -> None:
    rng = random.Random(9)
    lifetimes = [None, 0.0, 0.2, 0.75, 1.0, 1.5, 1.6, 2.0, 2.5, 3.0, 4.0, 8.0, 30.0]
    for _ in range(300):
        rule = NodeOptions(server=True).reconnect_storms()
        assert rule is not None
        _redial(rule, rng.random, lambda: rng.choice(lifetimes), horizon=600.0)


@pytest.mark.parametrize("lived", [None, 0.0, 0.5, 2.0, 2.01, 4.0])
def test_the_outbound_manager_is_never_refused(lived: float | None) -> None:
    # The manager woken every 50 ms (as often as peer exchange and closes could), its
    # one store URL's connections each dropped after ``lived`` s (None: the dial fails)
    # by a server with the default rule; default retry options. The URL is a bootstrap
    # peer's (proven), so the bound on unproven dials doesn't pace it.
    options = NodeOptions(client=True)
    clock = FakeClock(0.0)
    server = "ws://10.0.0.1:1107"
    policy = OutboundPolicy(
        clock=clock,
        bootstrap=[server],
        target=1,
        retry_initial=options.reconnect_initial,
        retry_max=options.reconnect_max,
        retry_factor=options.reconnect_factor,
    )
    rule = NodeOptions(server=True).reconnect_storms()
    assert rule is not None
    conns = iter(range(1_000_000))
    dials = 0
    while clock() < 600.0:
        selection = policy.selection(set(), (), None)
        if selection is not None and selection.query() is not None:
            for dial in selection.offer([server]):
                dials += 1
                assert rule.arrive("address:10.0.0.1", clock()) is None, clock()
                policy.dial_done(dial.url)
                if lived is None:
                    policy.dial_failed(dial.dial_url)
                else:
                    conn = ConnId(next(conns))
                    policy.connection_opened(conn, dial.dial_url, None)
                    clock.advance(lived)
                    policy.connection_closed(conn)
                policy.dial_ended(dial.url)
        clock.advance(0.05)
    assert dials > 10
