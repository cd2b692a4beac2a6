"""Shared test helpers: one time unit, a fake clock."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from trustp2p import Node

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


@pytest.fixture
async def make_node() -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Start nodes with fast options (``tests.nodes.FAST``); stopped after the test.
    Modules with a ``make_node`` of their own use theirs."""
    from .nodes import node_factory  # here: tests.nodes imports MS from this module

    async for make in node_factory():
        yield make


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """
    Put the root logger back as it was after each test: the CLI, called in-process,
    points it at the sys.stderr of the moment (pytest's capture, closed afterwards), and
    every later record would then cost a "Logging error" traceback.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    websockets_level = logging.getLogger("websockets").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(websockets_level)
