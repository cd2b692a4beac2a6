"""The helper for tests whose sleeps are the test (tests/pacing.py)."""

from __future__ import annotations

import pytest

from tests.pacing import Pace, paced


async def test_a_failure_at_the_tests_own_pace_is_reported_at_once() -> None:
    runs: list[Pace] = []

    async def scenario(pace: Pace) -> None:
        runs.append(pace)
        await pace.sleep(0)
        raise AssertionError("the code under test failed")

    with pytest.raises(AssertionError, match="the code under test failed"):
        await paced(scenario, limit=10.0)
    assert len(runs) == 1 and runs[0].kept


async def test_a_failure_after_a_step_overshot_runs_the_scenario_again() -> None:
    runs: list[Pace] = []

    async def scenario(pace: Pace) -> str:
        runs.append(pace)
        await pace.sleep(0.001)  # longer than the limit: the machine was slow
        if len(runs) < 3:
            raise AssertionError("stalled")
        return "done"

    assert await paced(scenario, limit=0.0) == "done"
    assert len(runs) == 3 and not any(pace.kept for pace in runs)
    runs.clear()
    with pytest.raises(AssertionError, match="stalled"):  # as many attempts as told
        await paced(scenario, limit=0.0, attempts=2)
    assert len(runs) == 2
