"""Shared test helpers: one time unit, a fake clock."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# No timing in unit tests: on a loaded 2-core CI machine, hypothesis' deadline and
# "generation is slow" checks fail for reasons that have nothing to do with the code.
settings.register_profile("trustp2p", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("trustp2p")

MS = 0.001 * float(os.environ.get("TRUSTP2P_TESTS_TIMEOUT_FACTOR", "1"))
"""One millisecond, scaled by TRUSTP2P_TESTS_TIMEOUT_FACTOR on slow machines."""


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
