"""LogBudget: a flood of bad connections makes a few log lines, not one each."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from trustp2p.protocol.log_budget import LogBudget

from ..conftest import FakeClock

LOGGER = logging.getLogger("test.log_budget")


def budget_on_fake_clock(lines: int, window: float) -> tuple[FakeClock, LogBudget, logging.Logger]:
    """A budget on a fake clock, and the logger the tests log to."""
    clock = FakeClock()
    return clock, LogBudget(lines=lines, window=window, clock=clock), LOGGER


def test_the_first_lines_of_a_window_pass_then_the_rest_are_counted() -> None:
    clock = FakeClock()
    budget = LogBudget(lines=3, window=60.0, clock=clock)
    assert [budget.allow("refused") for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.allow("handshake failed") == 0  # each kind has its own
    clock.advance(59.9)
    assert budget.allow("refused") is None
    clock.advance(0.1)  # a new window: the next line says how many weren't logged
    assert budget.allow("refused") == 3
    assert budget.allow("refused") == 0


def test_log_goes_to_debug_past_the_budget_and_says_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, budget, logger = budget_on_fake_clock(lines=1, window=10.0)
    with caplog.at_level(logging.DEBUG, logger="test.log_budget"):
        for n in range(3):
            budget.log(logger, logging.WARNING, "kind", "! bad peer %d", n)
        clock.advance(10.0)
        budget.log(logger, logging.WARNING, "kind", "! bad peer %d", 3)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "! bad peer 0"),
        (logging.DEBUG, "! bad peer 1"),
        (logging.DEBUG, "! bad peer 2"),
        (logging.WARNING, "! bad peer 3 (and 2 more since, at DEBUG)"),
    ]
    assert {record.filename for record in caplog.records} == {"test_log_budget.py"}


def test_a_flood_that_stops_is_counted_once_its_window_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, budget, logger = budget_on_fake_clock(lines=1, window=10.0)
    assert budget.next_summary() is None
    with caplog.at_level(logging.INFO, logger="test.log_budget"):
        clock.advance(5.0)
        for n in range(4):
            budget.log(logger, logging.WARNING, "refused", "! refused %d", n)
        clock.advance(1.0)
        budget.log(logger, logging.INFO, "evicted", "! evicted")  # within budget
        assert budget.next_summary() == 1015.0  # the end of the window of "refused"
        clock.advance(8.5)
        budget.summarise()  # early: nothing yet
        assert len(caplog.records) == 2
        clock.advance(0.5)
        budget.summarise()
        budget.summarise()  # once
        assert budget.next_summary() is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "! refused 0"),
        (logging.INFO, "! evicted"),
        (logging.WARNING, "! 3 more 'refused' events in the last 10 s, logged at DEBUG only"),
    ]
    caplog.clear()
    clock.advance(1.0)  # a new window: the next line has nothing to add
    budget.log(logger, logging.WARNING, "refused", "! refused %d", 4)
    assert [r.getMessage() for r in caplog.records] == ["! refused 4"]


def test_summarise_every_counts_windows_not_ended_yet(caplog: pytest.LogCaptureFixture) -> None:
    clock, budget, logger = budget_on_fake_clock(lines=1, window=60.0)
    with caplog.at_level(logging.INFO, logger="test.log_budget"):
        for _ in range(3):
            budget.log(logger, logging.INFO, "closing", "! closing")
        clock.advance(2.0)
        budget.summarise(every=True)  # its owner stops
    assert [r.getMessage() for r in caplog.records] == [
        "! closing",
        "! 2 more 'closing' events in the last 2 s, logged at DEBUG only",
    ]
    assert budget.next_summary() is None


def test_the_summary_names_no_one_peer(caplog: pytest.LogCaptureFixture) -> None:
    class PeerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
        def process(self, msg: object, kwargs: Any) -> tuple[object, Any]:
            return f"[{self.extra['peer'] if self.extra else '?'}] {msg}", kwargs

    clock, budget, logger = budget_on_fake_clock(lines=1, window=1.0)
    with caplog.at_level(logging.INFO, logger="test.log_budget"):
        for peer in ("a", "b", "c"):
            budget.log(PeerLog(logger, {"peer": peer}), logging.INFO, "closing", "! closing")
        clock.advance(1.0)
        budget.summarise()
    assert [r.getMessage() for r in caplog.records] == [
        "[a] ! closing",
        "! 2 more 'closing' events in the last 1 s, logged at DEBUG only",
    ]


def test_events_counted_by_allow_alone_are_for_its_caller_to_log() -> None:
    clock = FakeClock()
    budget = LogBudget(lines=1, window=1.0, clock=clock)
    assert [budget.allow("kind") for _ in range(3)] == [0, None, None]
    assert budget.next_summary() is None


@pytest.mark.parametrize(("lines", "window"), [(0, 1.0), (1, 0.0)])
def test_the_budget_checks_its_arguments(lines: int, window: float) -> None:
    with pytest.raises(ValueError, match="need lines >= 1 and window > 0"):
        LogBudget(lines=lines, window=window)


def test_the_summary_starts_with_the_mark_of_its_kind(caplog: pytest.LogCaptureFixture) -> None:
    clock, budget, logger = budget_on_fake_clock(lines=1, window=1.0)
    with caplog.at_level(logging.INFO, logger="test.log_budget"):
        for _ in range(2):
            budget.log(logger, logging.INFO, "connected", "= connected to us")
            budget.log(logger, logging.INFO, "odd", "no mark")
        clock.advance(1.0)
        budget.summarise()
    assert [r.getMessage() for r in caplog.records][2:] == [
        "= 1 more 'connected' events in the last 1 s, logged at DEBUG only",
        "! 1 more 'odd' events in the last 1 s, logged at DEBUG only",
    ]
