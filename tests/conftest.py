"""
Shared test helpers: one time unit, a fake clock, and the only two ways an integration
test waits: :func:`wait_for` a condition, and :func:`stays` for "nothing happens".

Temporary files (``tmp_path``, and the directories that nodes, simulations and the
demo make with :mod:`tempfile`) go to ``/dev/shm`` when the machine has it and
``TMPDIR`` is not set: every node opens two SQLite databases, whose commits wait for
the disk; on a busy disk that made starting and stopping nodes most of the suite's time.

"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from trustp2p import Node

# No timing in unit tests: on a loaded 2-core CI machine, hypothesis' deadline and
# "generation is slow" checks fail for reasons that have nothing to do with the code.
settings.register_profile("trustp2p", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("trustp2p")

if "TMPDIR" not in os.environ and os.access("/dev/shm", os.W_OK | os.X_OK):
    os.environ["TMPDIR"] = "/dev/shm"  # subprocesses too
    tempfile.tempdir = None  # gettempdir() looks again


def _ignored_here(signum: int, frame: object) -> None:
    """Ignores a signal in this process, not in its children: see below."""


# A signal ignored when the tests started (SIGINT for `make test &` in a script, or
# `trap '' INT`; SIGHUP under nohup) is ignored by every child process too, and the
# tests that send one to a node failed by timeout, leaving it running (tester39 F7).
# Handled here by a function that does nothing, it is still ignored by the tests, and
# their children start with its default action (exec resets a handled signal, not an
# ignored one).
for _signum in (signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, _ignored_here)

MS = 0.001 * float(os.environ.get("TRUSTP2P_TESTS_TIMEOUT_FACTOR", "1"))
"""One millisecond, scaled by TRUSTP2P_TESTS_TIMEOUT_FACTOR on slow machines."""


async def wait_for(
    predicate: Callable[[], object], timeout: float = 5000 * MS, *, interval: float = MS
) -> None:
    """
    Wait until ``predicate()`` is true, checking it every ``interval`` seconds.

    This is how a test waits for something to happen: on the condition itself (a
    counter, a socket's state, a log record), never for a fixed time. ``timeout``
    (seconds) only bounds a failing test; a passing one never waits it out. Give a
    longer ``interval`` only to a predicate that costs something (a database query).

    Raises:
        TimeoutError: If ``predicate()`` is still false after ``timeout`` seconds.

    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - conditions on plain attributes
            await asyncio.sleep(interval)


async def stays(predicate: Callable[[], object], duration: float) -> bool:
    """
    Whether ``predicate()`` holds all through the next ``duration`` seconds (checked
    every millisecond); returns False as soon as it fails.

    Unlike :func:`wait_for`, this is about real time passing: when all is well it
    waits the whole ``duration``. Use it only to check that something does *not*
    happen, and make ``duration`` what the rule under test needs (a few periods of
    the timer behind it), not a guess at "long enough".

    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while predicate():
        if loop.time() >= deadline:
            return True
        await asyncio.sleep(MS)
    return False


async def settles(
    predicate: Callable[[], object], duration: float, timeout: float = 5000 * MS
) -> bool:
    """
    Whether ``predicate()`` comes to hold for a whole ``duration`` within ``timeout``:
    for a state that may flicker on its way (two dials crossing, resolved to one
    connection) but must then stay. A state that keeps breaking at shorter intervals
    than ``duration`` never settles.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            await wait_for(predicate, max(deadline - loop.time(), MS))
            if await stays(predicate, duration):
                return True
    return False


@contextlib.contextmanager
def gc_runs() -> Iterator[list[int]]:
    """Count the cyclic garbage collector's runs within the block: the list it gives
    holds one item per collection begun."""
    begun: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            begun.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield begun
    finally:
        gc.callbacks.remove(count)


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
    """Start nodes with the fast options (``tests.nodes.FAST``) and the given ones;
    stopped after the test."""
    from .nodes import node_factory  # here: tests.nodes imports from this module

    async for make in node_factory():
        yield make


@pytest.fixture(autouse=True)
def _restore_signals() -> Iterator[None]:
    """Put the signals' handlers back after each test: the CLI's node, run in-process,
    leaves SIGINT, SIGTERM and SIGHUP ignored for the process's exit."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = [signal.getsignal(signum) for signum in signums]
    yield
    for signum, handler in zip(signums, handlers, strict=True):
        if handler is not None:
            signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Kill the child processes a test left running (:class:`tests.processes.Spawned`):
    one whose wait failed, say (tester39 F7: three servers outlived a failed run)."""
    from .processes import kill_left  # here: it imports trustp2p's package path

    yield
    kill_left()


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
