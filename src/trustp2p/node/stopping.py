"""
What a node's stop waits for: the gossip handlers running and the threads' ``stop()``,
side by side (:func:`stop_threads`), each wait bounded by ``close_timeout``, said once it
has gone on for :data:`SAY_AFTER` seconds, and cut short by :meth:`StopWaits.hurry` (the
CLI's second SIGTERM or Ctrl-C). Work cancelled that doesn't end (it caught its
``CancelledError`` and goes on) is waited for what is left of that bound, or
:data:`CANCEL_GRACE`, then left to run on after the stop, said at WARNING (review61 F2,
review63 F2 and F3: it held the stop as long as it liked, hurried or not).

Found in review (R57-3): the stop waited for the handlers running, then called the
threads' ``stop()``: a handler waiting for something its thread's ``stop()`` ends (an
event, a queue) held every stop for ``close_timeout``, then was cancelled, and got its
message again after a restart. Found by a tester (tester39 F8): a thread's ``stop()``
that hung held the stop for ``close_timeout`` without a word, and a second SIGTERM
didn't shorten it.

"""

from __future__ import annotations

__all__ = [
    "CANCEL_GRACE",
    "SAY_AFTER",
    "StopWaits",
    "handlers_end",
    "say_left",
    "stop_thread",
    "stop_threads",
    "tasks_end",
]

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from .dispatch import call_thread

if TYPE_CHECKING:
    from ..tasks import TaskOwner
    from ..threads.base import Thread
    from .node import Node

logger = logging.getLogger(__name__)

SAY_AFTER = 3.0
"""Seconds a wait of the stop goes on before it is said, at INFO, with what it waits for."""

CANCEL_GRACE = 0.1
"""Seconds work the stop cancelled has at least to end (it unwinds: a ``finally`` that
awaits), hurried too, past what is left of ``close_timeout`` for it: then it is left
running (:meth:`StopWaits.wait_cancelled`)."""


Said = str | Callable[[], str]
"""What a wait of the stop waits for: a text, or a function that says it when it is
said (tester49 F2: a count taken at the wait's start said 2 connections when 1 was
left)."""


def _text(what: Said) -> str:
    return what if isinstance(what, str) else what()


class StopWaits:
    """
    The waits of a node's stop: what each waits for (:attr:`waiting`), said at INFO on
    ``log`` once it went on :data:`SAY_AFTER` seconds; :meth:`hurry` ends them.

    Attributes:
        hint: Said with that line, in brackets after its bound (the CLI's: "SIGTERM
            again cuts the stop short").
        hurried: Whether :meth:`hurry` was called.

    """

    __slots__ = ("_hurry", "_log", "_waiting", "hint", "hurried")

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._waiting: dict[object, Said] = {}
        self._hurry: asyncio.Event | None = None
        self.hint = ""
        self.hurried = False

    @property
    def waiting(self) -> list[str]:
        """What the stop waits for now: ``"stop() of app.py"``, ``"2 gossip
        handler(s) running"``..."""
        return [_text(what) for what in self._waiting.values()]

    def hurry(self) -> list[str]:
        """Give up the stop's waits now, and those after it at once, as at their
        timeout (what they wait for is cancelled); return what they waited for."""
        waiting = self.waiting
        self.hurried = True
        if self._hurry is not None:
            self._hurry.set()
        return waiting

    async def wait(
        self, what: Said, futures: Collection[asyncio.Future[Any]], timeout: float
    ) -> set[asyncio.Future[Any]]:
        """Wait for ``futures`` (``what`` they are, as said: a text, or a function that
        says it when it is said), ``timeout`` seconds at most; once hurried, a loop
        turn only (a ``stop()`` that doesn't wait still runs). Return those not done,
        for the caller to cancel."""
        if self.hurried or not futures:
            if futures:
                await asyncio.sleep(0)
            return {future for future in futures if not future.done()}
        loop = asyncio.get_running_loop()
        if self._hurry is None:
            self._hurry = asyncio.Event()
        hurried = loop.create_task(self._hurry.wait())
        done = loop.create_task(asyncio.wait(futures))  # (cancelled: they aren't)
        key = object()
        self._waiting[key] = what
        said = loop.call_later(SAY_AFTER, self._say, what, timeout)
        try:
            ended = (hurried, done)
            await asyncio.wait(ended, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            said.cancel()
            del self._waiting[key]
            hurried.cancel()
            done.cancel()
            await asyncio.wait((hurried, done))  # (they end at once)
        return {future for future in futures if not future.done()}

    async def wait_cancelled(
        self, what: str, futures: Collection[asyncio.Future[Any]], timeout: float
    ) -> set[asyncio.Future[Any]]:
        """Wait for ``futures``, just cancelled (``what`` they are), ``timeout`` seconds
        at most (what is left of their bound), :data:`CANCEL_GRACE` at least, hurried
        or not. Return those still running: they run on after the stop (one caught its
        ``CancelledError``), for the caller to say."""
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + CANCEL_GRACE
        left = await self.wait(f"{what}, cancelled", futures, max(timeout, 0.0))
        if left and (grace := grace_end - loop.time()) > 0:
            await asyncio.wait(left, timeout=grace)
            left = {future for future in left if not future.done()}
        return left

    def _say(self, what: Said, timeout: float) -> None:
        hint = f"; {self.hint}" if self.hint else ""
        said = _text(what)
        self._log.info("x the stop waits for %s (%g s at most%s)", said, timeout, hint)


async def stop_threads(node: Node, caller: asyncio.Task[Any] | None) -> None:
    """Stop delivering gossip (no next message starts), then call each thread's
    ``stop()`` (:func:`stop_thread`, in load order) while the handlers running finish
    (:meth:`Gossip.halt <trustp2p.node.gossip.Gossip.halt>`); once both ended, cancel
    the threads' tasks (review61: cancelled meanwhile, a handler finishing with
    ``create_task`` failed, and its message was counted as delivered)."""
    timeout, waits = node.options.close_timeout, node.stop_waits
    halting = asyncio.ensure_future(node.gossip.halt(caller)) if node.gossip else None
    try:
        for thread in node.threads:
            await stop_thread(thread, timeout, waits, tasks=False)
    finally:
        if halting is not None:
            await halting
    for thread in node.threads:
        await _cancel_tasks(thread, timeout, waits)


Abandon = Callable[[Collection[asyncio.Future[Any]]], Collection[asyncio.Future[Any]]]
"""``abandon(left)``: says the gossip deliveries among ``left``, which run on after the
stop (see :meth:`~.gossip_delivery.TopicQueues.abandon`); returns them."""


async def handlers_end(
    node: Node, running: Collection[asyncio.Task[Any]], tasks: TaskOwner, abandon: Abandon
) -> None:
    """Give the gossip handlers (and validators) ``running`` up to ``close_timeout`` to
    end (less if the stop is hurried), then cancel ``tasks`` and wait for what is left
    of ``close_timeout`` (:meth:`StopWaits.wait_cancelled`); those still running then
    run on after the stop: ``abandon`` says the deliveries, this the other tasks."""
    timeout, waits = node.options.close_timeout, node.stop_waits
    loop = asyncio.get_running_loop()
    began = loop.time()
    what = f"{len(running)} gossip handler(s) running" if running else "the gossip tasks"
    if running:
        logger.info("x waiting up to %g s for the gossip handlers running", timeout)
        await waits.wait(what, running, timeout)
    rest = timeout - (loop.time() - began)
    left = await waits.wait_cancelled(what, tasks.cancel(), rest)
    said = abandon(left)
    say_left("gossip", [task for task in left if task not in said])


async def tasks_end(node: Node) -> None:
    """Cancel the node's tasks (request handlers, hooks of errors...) and wait
    ``close_timeout`` at most for them to end; say those that run on."""
    waits, timeout = node.stop_waits, node.options.close_timeout
    say_left("the node", await waits.wait_cancelled("the node's tasks", node.tasks.cancel(),
                                                    timeout))  # fmt: skip


def say_left(owner: str, tasks: Collection[asyncio.Future[Any]]) -> None:
    """Say, at WARNING, ``tasks`` of ``owner`` that didn't end when cancelled."""
    if tasks:
        names = ", ".join(sorted(_name(task) for task in tasks))
        logger.warning("x %d task(s) of %s didn't end when cancelled: they run on after the "
                       "stop (%s)", len(tasks), owner, names)  # fmt: skip


def _name(future: asyncio.Future[Any]) -> str:
    return future.get_name() if isinstance(future, asyncio.Task) else repr(future)


async def stop_thread(
    thread: Thread, timeout: float, waits: StopWaits, *, tasks: bool = True
) -> None:
    """Call a thread's ``stop()``, for ``timeout`` seconds at most; then (if ``tasks``)
    cancel its tasks, and wait ``timeout`` at most for them to end (:data:`CANCEL_GRACE`
    once ``waits`` is hurried); what is left runs on, said at WARNING."""
    where = thread.path or type(thread).__name__
    # (In a task: a stop() that catches its CancelledError held the stop for ever.)
    loop = asyncio.get_running_loop()  # (named: review61, one left running said "Task-6")
    stopping = loop.create_task(call_thread(thread, "stop"), name=f"stop() of {where}")
    if await _bounded(waits, f"stop() of {where}", stopping, timeout):
        if waits.hurried:
            logger.warning("! stop of %s cancelled: the stop was cut short", where)
        else:
            logger.warning("! stop of %s didn't return within %g s: going on", where, timeout)
    if tasks:
        await _cancel_tasks(thread, timeout, waits)


async def _cancel_tasks(thread: Thread, timeout: float, waits: StopWaits) -> None:
    """Cancel a thread's tasks, and wait ``timeout`` at most for them to end."""
    where = thread.path or type(thread).__name__
    # (a task that catches its CancelledError held the stop for ever: a tester)
    closing = thread.cancel_tasks()
    if await _bounded(waits, f"the tasks of {where}", closing, timeout, cancelled=True):
        within = "when cancelled (the stop was cut short)" if waits.hurried else (
            f"within {timeout:g} s of being cancelled")  # fmt: skip
        logger.warning("! tasks of %s didn't end %s: they run on after the stop", where, within)


async def _bounded(
    waits: StopWaits, what: str, work: Awaitable[None], timeout: float, *, cancelled: bool = False
) -> bool:
    """Run ``work`` for ``timeout`` at most (see :meth:`StopWaits.wait`, or
    :meth:`~StopWaits.wait_cancelled` if it waits for work ``cancelled``); True if it
    was cancelled unfinished."""
    future = asyncio.ensure_future(work)
    wait = waits.wait_cancelled if cancelled else waits.wait
    if not await wait(what, (future,), timeout):
        future.result()  # (what it raised)
        return False
    future.cancel()
    return True
