"""
Running trustp2p on an event loop of your choice: asyncio's own, or uvloop.

uvloop (trustp2p's ``fast`` extra, or ``pip install uvloop``) is a drop-in event loop
written in Cython on libuv. :func:`run` runs a coroutine on either, as :func:`asyncio.run` does::

    trustp2p.run(main(), loop="uvloop")

which is the same as ``asyncio.Runner(loop_factory=uvloop.new_event_loop)``, or
``uvloop.run(main())``. The command line takes ``--loop uvloop``.

"""

from __future__ import annotations

__all__ = ["LOOPS", "loop_clock", "loop_factory", "run"]

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .exceptions import UsageError

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")
"""The event loops :func:`run` knows, by name."""


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """
    Return what makes the event loop named ``loop`` (for :class:`asyncio.Runner`);
    ``None`` for asyncio's default.

    Raises:
        UsageError: If ``loop`` names no known loop, or uvloop isn't installed.

    """
    if loop == "asyncio":
        return None
    if loop == "uvloop":
        try:
            import uvloop
        except ModuleNotFoundError as exc:
            raise UsageError(
                "the uvloop event loop needs the uvloop package (trustp2p's fast extra): "
                "pip install uvloop"
            ) from exc
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise UsageError(f"unknown event loop {loop!r}; known loops: {', '.join(LOOPS)}")


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """
    The clock of ``loop`` (its ``time()``), as cheap to read as can be: asyncio's own
    loops' ``time()`` is :func:`time.monotonic` behind a Python call, which a package's
    path reads a few times; other loops' (uvloop's) as they are.
    """
    clock = loop.time
    if getattr(clock, "__func__", None) is asyncio.BaseEventLoop.time:  # (not patched)
        return time.monotonic
    return clock


def run(main: Coroutine[Any, Any, T], *, loop: str = "asyncio", debug: bool | None = None) -> T:
    """
    Run ``main`` on a new event loop of the kind ``loop`` names and return its result,
    as :func:`asyncio.run` does.

    Args:
        main: The coroutine to run.
        loop: ``"asyncio"`` (the default) or ``"uvloop"``.
        debug: asyncio's debug mode, as in :func:`asyncio.run`.

    Raises:
        UsageError: If ``loop`` names no known loop, or uvloop isn't installed; ``main``
            is then closed without running.

    """
    try:
        factory = loop_factory(loop)
    except UsageError:
        main.close()
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
