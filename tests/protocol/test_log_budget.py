"""LogBudget: a flood of bad connections makes a few log lines, not one each."""

from __future__ import annotations

import logging

import pytest

from trustp2p.protocol.log_budget import LogBudget

from ..conftest import FakeClock


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
    clock = FakeClock()
    budget = LogBudget(lines=1, window=10.0, clock=clock)
    logger = logging.getLogger("test.log_budget")
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


@pytest.mark.parametrize(("lines", "window"), [(0, 1.0), (1, 0.0)])
def test_the_budget_checks_its_arguments(lines: int, window: float) -> None:
    with pytest.raises(ValueError, match="need lines >= 1 and window > 0"):
        LogBudget(lines=lines, window=window)
