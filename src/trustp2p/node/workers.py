"""
Every connection's :class:`~.dispatch.Worker`, made at its first item, and their tasks;
at the stop, the wait for them, bounded (:meth:`Workers.wait`).

"""

from __future__ import annotations

__all__ = ["Workers"]

import asyncio
import logging
from typing import TYPE_CHECKING

from .dispatch import Hook, Worker

if TYPE_CHECKING:
    from ..protocol.package import Package
    from .node import Node
    from .peer import PeerConnection

logger = logging.getLogger("trustp2p.node.dispatch")  # (its records kept their name)


class Workers:
    """Every connection's :class:`Worker`, made at its first item, and their tasks."""

    __slots__ = ("_closed", "_node", "_tasks")

    def __init__(self, node: Node) -> None:
        self._node = node
        self._tasks: dict[asyncio.Task[None], Worker] = {}
        self._closed = False  # the stop cancelled them: nothing new runs

    def put(self, conn: PeerConnection, item: Package | Hook) -> None:
        """Queue ``item`` in the inbox of ``conn``; nothing once the workers were
        cancelled by the stop."""
        if self._closed:
            return
        worker = conn.worker
        if worker is None:
            worker = conn.worker = Worker(
                conn.socket,
                self._node,
                max_pending=self._node.options.max_pending_packages,
                max_bytes=self._node.options.max_pending_bytes,
                can_resume=conn.can_read,
            )
        task = worker.put(item)
        if task is not None:
            self._tasks[task] = worker
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        worker = self._tasks.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:  # (a bug of ours)
            peer = worker.peer if worker is not None else "?"
            logger.error("! worker of %s failed", peer, exc_info=exc)

    async def wait(self, timeout: float, caller: object = None) -> None:
        """
        Let the workers finish (``on_socket_close`` hooks) for ``timeout`` seconds at
        most, then cancel the rest, and wait for what is left of ``timeout``
        (:meth:`~.stopping.StopWaits.wait_cancelled`); not ``caller``, a worker whose
        handler stops the node (it waits for the stop). From the cancel on, no worker
        takes a next item; ``caller``'s runs its hooks still once its handler returns
        (its connection's ``on_socket_close``: review67 F3), no package. One still
        running then (its hook or handler caught its ``CancelledError``) runs on after
        the stop, said at WARNING with what it dropped of its inbox (review63 F3: it
        went on with its inbox after the stop, unsaid; review61 F2: unbounded, it held
        the stop, hurried too).
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        workers = [task for task in self._tasks if task is not caller]
        waits = self._node.stop_waits
        what = f"the hooks and handlers of {len(workers)} connection(s)"
        if workers:
            await waits.wait(what, workers, timeout)
        self._closed = True
        for task, worker in self._tasks.items():
            worker.stop(hooks=task is caller)
        running = [task for task in workers if not task.done()]
        for task in running:
            task.cancel()
        if running:
            left = await waits.wait_cancelled(what, running, timeout - (loop.time() - began))
            for task in running:
                if task in left and (running_on := self._tasks.get(task)) is not None:
                    running_on.left_running()
