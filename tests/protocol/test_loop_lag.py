"""LoopLag: the watchdog's rule of when the event loop was blocked (tester39 F4)."""

from __future__ import annotations

import pytest

from trustp2p.protocol.loop_lag import LOOP_LAG_INTERVAL, MIN_LOOP_LAG_INTERVAL, LoopLag

from ..conftest import FakeClock


def test_a_wake_late_by_the_threshold_or_more_is_reported() -> None:
    clock = FakeClock()
    lag = LoopLag(5.0, clock=clock)
    assert lag.sleep() == LOOP_LAG_INTERVAL  # one timer a second
    clock.advance(1.0 + 35.2)  # a handler called time.sleep(35.2)
    assert lag.woke() == pytest.approx(35.2)
    assert lag.sleep() == LOOP_LAG_INTERVAL
    clock.advance(1.0 + 5.0)
    assert lag.woke() == pytest.approx(5.0)


def test_a_wake_on_time_or_a_little_late_is_not() -> None:
    clock = FakeClock()
    lag = LoopLag(5.0, clock=clock)
    for late in (0.0, 0.3, 4.9):  # a loaded machine: not a blocked loop
        lag.sleep()
        clock.advance(1.0 + late)
        assert lag.woke() is None


def test_nothing_is_measured_without_a_sleep_before() -> None:
    clock = FakeClock()
    lag = LoopLag(1.0, clock=clock)
    clock.advance(100.0)  # the start of the node, however long: not a block
    assert lag.woke() is None
    lag.sleep()
    clock.advance(0.25)
    assert lag.woke() is None
    clock.advance(50.0)
    assert lag.woke() is None  # one wake, one measure


def test_a_small_threshold_wakes_more_often() -> None:
    lag = LoopLag(0.2, clock=FakeClock())
    assert lag.sleep() == pytest.approx(0.05)


def test_a_tiny_threshold_wakes_no_more_often_than_the_floor() -> None:
    """review58: 0.001 s woke the loop every 0.25 ms, a near-busy timer for every node
    on it; a block under the floor is still reported once it is measured."""
    clock = FakeClock()
    lag = LoopLag(0.001, clock=clock)
    assert lag.sleep() == MIN_LOOP_LAG_INTERVAL
    clock.advance(MIN_LOOP_LAG_INTERVAL + 0.002)
    assert lag.woke() == pytest.approx(0.002)


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan")])
def test_the_threshold_must_be_positive(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold must be positive, not"):
        LoopLag(threshold)
