"""
One kind of owner for background tasks: the node, gossip, threads, the dialler and the
stores each spawn through a :class:`TaskOwner`, and cancel and await everything in
``aclose()``. No task is started bare.

"""

from __future__ import annotations

__all__ = ["STOP_SIGNALS", "TaskOwner", "quiet_signals"]

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from .exceptions import NodeStateError


class TaskOwner:
    """
    Keeps the tasks it spawns, logs what they raise, and cancels the rest on close.

    Like a trio nursery without the ``async with``: the owner lives as long as the
    object that holds it, and ``aclose()`` is its end.

    Args:
        logger: Where a task's exception is logged, at ERROR with its traceback.
        owner: Named in that log line (``"! task <name> of <owner> failed"``).

    """

    def __init__(self, logger: logging.Logger, owner: str | None = None) -> None:
        self._logger = logger
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: :meth:`spawn` refuses new tasks."""
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """
        Run ``coro`` in a task this owner keeps until it ends.

        Raises:
            NodeStateError: If the owner is closed; ``coro`` is closed unstarted.

        """
        if self._closed:
            coro.close()
            raise NodeStateError(f"can't start task {name!r}: its owner is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if self._owner is None:
                self._logger.error("! %s failed", task.get_name(), exc_info=exc)
            else:
                self._logger.error(
                    "! task %s of %s failed", task.get_name(), self._owner, exc_info=exc
                )

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the running tasks to end by themselves."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Refuse new tasks and cancel the running ones; return them, for the caller to
        wait for (within a bound: a task can catch its CancelledError and go on). One
        that ends later is still logged if it raises."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    async def aclose(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until they have ended (a
        caller may bound the wait, or use :meth:`cancel`)."""
        tasks = self.cancel()
        while tasks:
            # Not gather(): cancelled, it waits for its tasks to end, and a task that
            # caught its CancelledError held the node's stop for ever (a tester).
            await asyncio.wait(tasks)
            self._tasks.difference_update(tasks)
            tasks = self.cancel()


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""The signals that stop a node's process (the CLI's: :mod:`trustp2p.apps.serve`), of
those the platform has (Windows has no SIGHUP)."""


def quiet_signals() -> None:
    """
    A worker thread's initializer: :data:`STOP_SIGNALS` are blocked in it, so that the
    process takes them in its main thread only. Found in CI: while the CLI switched its
    handlers to "ignored" (blocking them in the main thread meanwhile), a SIGINT taken
    by a pool thread ran the default handler, and a Ctrl-C after "x node stopped"
    printed a KeyboardInterrupt traceback (a SIGTERM then would have killed the
    process, status 143).
    """
    if hasattr(signal, "pthread_sigmask"):  # (not on Windows)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
