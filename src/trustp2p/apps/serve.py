"""Running one node until Ctrl-C or SIGTERM (``trustp2p server``, ``client``, ``node``)."""

from __future__ import annotations

__all__ = ["serve", "serve_process"]

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..node import Node, NodeState
from ..options import NodeOptions
from ..tasks import quiet_signals


async def serve(options: NodeOptions) -> int:
    """
    Start a node with ``options``, run it until SIGINT, SIGTERM or SIGHUP (its terminal
    closed), then stop it. A second signal while it stops, :data:`_AGAIN` seconds or
    more after the first, cuts the stop short: it drops the connections that haven't
    closed yet (a frozen peer holds a closing handshake for ``close_timeout``), and
    gives up what the stop waits for (:meth:`StopWaits.hurry
    <trustp2p.node.stopping.StopWaits.hurry>`: a thread's ``stop()`` that hangs, the
    handlers running), saying what that was. The signals' handlers are removed
    at the end (:func:`serve_process` ignores them from then on instead).

    Returns:
        The exit status: 130 after SIGINT (Ctrl-C, at any moment, start-up included),
        0 after SIGTERM (a service manager's stop), 129 after SIGHUP.

    Raises:
        TrustP2PError: If the node fails to start: a thread that doesn't load, a port
            in use.

    """
    signals = _Signals(asyncio.get_running_loop())
    try:
        return await _run(options, signals)
    finally:
        signals.close()


async def _run(options: NodeOptions, signals: _Signals) -> int:
    """:func:`serve`'s work, its signals handled by ``signals``."""
    node = Node(options)
    stop = asyncio.Event()
    received = signals.received
    loop = asyncio.get_running_loop()

    first = 0.0  # when the first signal came

    def on_signal(signum: int) -> None:
        nonlocal first
        if not stop.is_set():
            stop.set()
            first = loop.time()
            node.stop_waits.hint = f"{_name(signum)} again cuts the stop short"
            return
        # One request delivered twice (timeout(1) signals the process, then its group),
        # before the stop began or just after it (a tester, 2 runs in 16): not a second.
        # (review61: one during a start's undo was ignored, waiting was out close_timeout)
        if loop.time() - first < _AGAIN:
            return
        signals.hurried = True
        _cut_short(node, signum)

    signals.handler = on_signal
    if not await _started(node, stop, options.close_timeout):
        return _EXIT.get(received[0], 0)
    await stop.wait()
    again = _name(received[0])
    if node.sockets:
        node.log.info(
            "x %s: closing %d connection(s), each within close_timeout (%g s); %s again"
            " drops them",
            again, len(node.sockets), options.close_timeout, again,
        )  # fmt: skip
    await node.stop()
    return _EXIT.get(received[0], 0)


async def _started(node: Node, stop: asyncio.Event, timeout: float) -> bool:
    """
    Start ``node``; False if ``stop`` was set first (a signal): the start is cancelled
    and undone, or stopped if it ended anyway; one that doesn't end within ``timeout``
    of its cancel (a thread's ``start()`` that ignores it) is left behind. Found by a
    tester: a signal during the start was acted on once it ended, after a thread's slow
    ``start()`` or the wait for a stopping node's identity (the node listened, then
    stopped), and never if a ``start()`` hung: only ``kill -9`` ended the process.

    Raises:
        TrustP2PError: As :meth:`~trustp2p.Node.start` raises it.

    """
    starting = asyncio.ensure_future(node.start())
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        if not stop.is_set() and not starting.done():  # (we were cancelled)
            starting.cancel()
    if not starting.done():
        node.log.info("x stopping during the start: the start is undone")
        starting.cancel()
        await asyncio.wait((starting,), timeout=timeout)
        # Ended anyway (a start() that caught the cancel and returned: review), or
        # undoing: stopped, within the stop's own bounds (cut off here, threads' stop()
        # went unfinished: review). Still in a start() that won't end: left behind.
        if starting.done() or node.state is NodeState.STOPPING:
            await node.stop()
            await asyncio.wait((starting,), timeout=timeout)
        if starting.done() and not starting.cancelled():
            starting.exception()  # (a start that failed as it was undone: said by it)
        return False
    starting.result()  # (what it raised, if it failed)
    return True


class _Signals:
    """
    The handlers of SIGTERM, and of SIGINT and SIGHUP unless ignored, on ``loop``: each
    signal is appended to :attr:`received`, then :attr:`handler` is called with it.
    """

    __slots__ = ("_loop", "handled", "handler", "hurried", "received")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.hurried = False  # a second signal cut the stop short
        self.received: list[int] = []
        self.handler: Callable[[int], None] = lambda signum: None
        self.handled = _handled_signals()
        for signum in self.handled:
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        self.received.append(signum)
        self.handler(signum)

    def close(self, *, ignore: bool = False) -> None:
        """Remove the handlers: the signals' default actions again, or with ``ignore``,
        the signals ignored (for a process about to exit; they are blocked meanwhile,
        so that none finds the default action between the two)."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, self.handled)
        try:
            for signum in self.handled:
                self._loop.remove_signal_handler(signum)
                if ignore:
                    signal.signal(signum, signal.SIG_IGN)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _handled_signals() -> tuple[int, ...]:
    """SIGTERM, and SIGINT and SIGHUP unless ignored: a node a shell started in the
    background inherits an ignored SIGINT, as every program does, and keeps ignoring it
    (a Ctrl-C is for the shell's foreground job); so does SIGHUP, for a node started
    with nohup. (Not handled, a closed terminal or ssh session killed the node as kill
    -9 would: a tester.)"""
    return tuple(
        signum
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if signum == signal.SIGTERM or signal.getsignal(signum) is not signal.SIG_IGN
    )


def _cut_short(node: Node, signum: int) -> None:
    """Asked again while stopping: a peer that doesn't answer our close (frozen, or its
    link dead) would hold the stop for close_timeout, as would a thread's ``stop()``
    that hangs (tester39 F8). Drop the connections, and give up what the stop waits
    for, saying what it was."""
    waited = node.stop_waits.hurry()
    given_up = f"; not waiting for {', '.join(waited)} any more" if waited else ""
    node.log.warning(
        "x %s again: dropping the connections not closed yet%s", _name(signum), given_up
    )
    layer = node.secure_layer  # in secure mode, its transports: handshakes too
    transports = layer.raw_sockets if layer is not None else node.sockets
    for socket in transports:
        socket.abort()  # (nothing if it is closed)


_AGAIN = 0.05  # seconds after the first signal before another is a second request
_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGHUP: 129}


async def serve_process(options: NodeOptions) -> int:
    """
    :func:`serve` as the main coroutine of a process (the CLI's): once the node stopped,
    what its threads left running (tasks, work in asyncio's thread pool) has
    ``close_timeout`` to end; then the process says what is left and exits without it.
    Signals are ignored from the end of the stop on (or of a failed start): the process
    exits with the first signal's status.
    """
    # asyncio.to_thread's pool, ours: its threads are told from others' at the end
    pool = ThreadPoolExecutor(thread_name_prefix=_POOL, initializer=quiet_signals)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(pool)
    signals = _Signals(loop)
    try:
        code = await _run(options, signals)
    finally:
        # Ignored until the process exits: the default action, restored, killed it
        # (status 143 for a SIGTERM) when a second signal came 0.1 s after the first,
        # with "x node stopped" said (found by a tester; timeout(1) signals twice).
        signals.close(ignore=True)
    # (Cut short by a second signal: what is left is cancelled, hardly waited for.)
    timeout = _IDLE_EXIT if signals.hurried else options.close_timeout
    if not await _left_behind(pool, timeout):
        logging.shutdown()  # (the log's last lines written)
        os._exit(code)
    return code


_POOL = "trustp2p-pool"
_IDLE_EXIT = 0.2  # seconds for the pool's idle threads to end once it is shut down
logger = logging.getLogger(__name__)


async def _left_behind(pool: ThreadPoolExecutor, timeout: float) -> bool:
    """
    Wait ``timeout`` at most for what the node's threads left running once it stopped:
    the loop's other tasks, cancelled, and work in ``pool``, asyncio's thread pool
    (``asyncio.to_thread``). Return whether all of it ended; if not, say what is left.

    The process would wait for them without a word, for ever (a task that catches its
    CancelledError) or as long as the work takes: found by a tester, a node said
    "x node stopped" and lived 120 s on, until a service manager's SIGKILL.
    """
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = (await asyncio.wait(tasks, timeout=timeout))[1] if tasks else set()
    # (Not loop.shutdown_default_executor(): on 3.11, cancelled, it joins the thread.)
    pool.shutdown(wait=False)  # its idle threads end; the busy ones once their work does
    # A moment for the idle ones to see it (a tester: they were said to be at work).
    deadline = max(deadline, loop.time() + _IDLE_EXIT)

    def busy() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith(_POOL)]

    while busy() and loop.time() < deadline:  # noqa: ASYNC110 (threads set no event)
        await asyncio.sleep(0.05)
    left = []
    if pending:
        # (A compiled coroutine has no __qualname__: the node's own start, left behind.)
        names = ", ".join(getattr(t.get_coro(), "__qualname__", t.get_name()) for t in pending)
        left.append(f"{len(pending)} task(s) that didn't end when cancelled ({names})")
    if threads := busy():
        left.append(f"{len(threads)} thread(s) still at work (asyncio.to_thread, run_in_executor)")
    if not left:
        return True
    message = "x exiting without what the threads left running %g s after the stop: %s"
    logger.warning(message, timeout, "; ".join(left))
    return False


def _name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
