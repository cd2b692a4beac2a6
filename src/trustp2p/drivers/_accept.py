"""
Accepting stream connections (``tcp`` and ``ws``) in a way that survives running out of
file descriptors.

asyncio's accept loop (``loop.create_server``) handles EMFILE and ENFILE badly: for each
readiness of the listening socket it tries up to 100 ``accept()`` calls, and each one
that fails logs a traceback and schedules its own retry a second later, so retries
multiply (CPython gh-151615). Measured on the first build with RLIMIT_NOFILE 64 and 100
connection attempts: 29,242 tracebacks in 14 s, rising to 4,500/s, at 59 % CPU.

:class:`StreamServer` accepts by itself instead. When ``accept()`` fails for want of a
resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) or for any reason other than "nothing to
accept", it stops watching its listening sockets, logs one warning for the episode, and
looks again after a pause that starts at 50 ms and doubles up to ``retry_max`` (1 s by
default). Connected peers are served meanwhile, and new ones wait in the kernel's
backlog; the first connection accepted ends the episode, with one INFO line.

Needs an event loop with ``add_reader()``: asyncio's selector loops (Linux, macOS).

"""

from __future__ import annotations

__all__ = ["ACCEPT_BACKLOG", "ACCEPT_RETRY_INITIAL", "StreamServer", "bind"]

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterator

from ..protocol.backoff import backoff

logger = logging.getLogger(__name__)

ACCEPT_BACKLOG = 100
"""The ``listen()`` backlog, and the most connections accepted per readiness event (as
asyncio)."""

ACCEPT_RETRY_INITIAL = 0.05
"""The first pause of accepting after a failed ``accept()``, in seconds; it doubles."""

_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


async def bind(host: str, port: int) -> list[socket.socket]:
    """
    Open listening sockets on every address ``host`` resolves to (as
    ``loop.create_server`` does); with ``port=0``, they all get the port the first one
    got.

    Raises:
        OSError: If an address can't be resolved or bound; no socket is left open.

    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Each address family gets its own socket, as asyncio does.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(ACCEPT_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class StreamServer:
    """
    Listening sockets and their accept loop.

    Args:
        factory: Makes the protocol of each accepted connection.
        sockets: Bound, listening, non-blocking sockets (:func:`bind`); the server owns
            them from now on.
        retry_max: Longest pause of accepting after a failed ``accept()``, in seconds.

    """

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        sockets: list[socket.socket],
        *,
        retry_max: float = 1.0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._factory = factory
        self._sockets = sockets
        self._retry_max = retry_max
        self._tasks: set[asyncio.Task[None]] = set()
        self._watching = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        # The current episode of failures: when it began, its pauses, how many.
        self._episode: float | None = None
        self._delays: Iterator[float] = iter(())
        self._failures = 0

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        return list(self._sockets)

    @property
    def accepting(self) -> bool:
        """True while the listening sockets are watched (not paused, not closed)."""
        return self._watching

    def start(self) -> None:
        """Start accepting."""
        if not self._closed:
            self._watch()

    def close(self) -> None:
        """Stop accepting and close the listening sockets; accepted connections stay."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._unwatch()
        for sock in self._sockets:
            sock.close()

    async def wait_closed(self) -> None:
        """Wait until the connections accepted so far have their transports."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # Internals

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            for sock in self._sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BACKLOG):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # nothing more to accept
            except ConnectionAbortedError:
                continue  # the peer gave up while waiting in the backlog
            except OSError as exc:
                self._pause(exc)
                return
            if self._episode is not None:
                self._recovered()
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as exc:
            logger.debug("! accepted connection failed: %r", exc)
            conn.close()

    def _pause(self, exc: OSError) -> None:
        """Stop accepting for a while: one warning per episode, then a back-off."""
        self._unwatch()
        if self._retry is not None or self._closed:
            return  # another listening socket failed in the same round
        self._failures += 1
        if self._episode is None:
            self._episode = self._loop.time()
            self._delays = backoff(
                min(ACCEPT_RETRY_INITIAL, self._retry_max), self._retry_max, 2.0, 0.0
            )
            what = "out of file descriptors" if exc.errno in _EXHAUSTED else "accept() failed"
            logger.warning(
                "! can't accept connections, %s (%s): paused, trying again every %g s at most",
                what,
                exc.strerror or exc,
                self._retry_max,
            )
        else:
            logger.debug("! accept() failed again: %s", exc.strerror or exc)
        self._retry = self._loop.call_later(next(self._delays), self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._watch()

    def _recovered(self) -> None:
        assert self._episode is not None
        logger.info(
            "= accepting connections again after %.1f s (%d failed attempts)",
            self._loop.time() - self._episode,
            self._failures,
        )
        self._episode = None
        self._failures = 0
