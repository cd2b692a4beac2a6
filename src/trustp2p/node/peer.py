"""
What the node keeps per open connection: :class:`PeerConnection`, a logger that names
the peer, and the watch on a peer that doesn't read (:func:`watch_stall`).

"""

from __future__ import annotations

__all__ = [
    "FAIR_CEILING",
    "GROUP_SHARE",
    "INTRODUCTION_WAIT",
    "MAX_GOSSIP_BACKLOG",
    "PeerConnection",
    "PeerLog",
    "SendBacklog",
    "watch_stall",
]

import asyncio
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ..exceptions import ConnectionClosed
from ..protocol.connection import ConnectionState
from ..protocol.package import PackageType
from ..protocol.path import WriteStall
from ..protocol.source_shares import SourceShares

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from ..options import NodeOptions
    from ..protocol.connection import ConnectionProtocol
    from ..protocol.package import Body, Package
    from .dispatch import Worker
    from .roles import Role


MAX_GOSSIP_BACKLOG = 64 * 1024 * 1024
"""Bytes written without waiting to peers that aren't reading, all connections together
(gossip leaves the count as the peer takes it: :class:`SourceShares`), past which no
more gossip is written to such a peer (it catches up when it reads again).
Found by an attacker: each connection may hold ``max_send_bytes`` (16 MiB) unread, and
any connection may ask for the recent messages (``iwant``): 90 that read nothing took a
node from 243 MB to 1.73 GB of RSS with one round of 20 MB published."""

INTRODUCTION_WAIT = 10.0
"""Seconds a request or a talk waits for a secure peer's introduction (its limits)."""

_BEFORE_INTRODUCTION = (ConnectionState.HANDSHAKING, ConnectionState.INTRODUCED)


GROUP_SHARE = 4
"""One address (an IPv6 /48) may hold a ``1 / GROUP_SHARE`` of the node's
:data:`MAX_GOSSIP_BACKLOG` in gossip queued for its connections, loopback excepted.
Found by an attacker: 5 connections of one address that read 4 KB a second each held
16 MiB queued, all of the node's backlog, and every honest subscriber that fell a
moment behind had its messages dropped (726-915 of 1,600, caught up seconds late)."""


FAIR_CEILING = 2
"""Past :data:`MAX_GOSSIP_BACKLOG`, a connection holding less than an even share of it
(among the connections holding gossip) still gets gossip, up to this many times the
bound in all. Found by an attacker: 10 connections of 5 addresses reading 4 KB a second
held the whole bound (never still for a whole ``send_stall_timeout``), and an honest
subscriber a moment behind had 816 of 916 pushes dropped. (Cutting slow readers instead
cut honest subscribers on 2 Mbit/s links in a burst: review46.) At the ceiling, a
connection under its share that is refused has the slowest reader over its own share
cut (:func:`watch_stall`): shares taken one after another add up (1 + 1/2 + 1/3 ...),
and slow readers of about 9 addresses filled the ceiling (review47); the largest
holder could be an honest subscriber a burst behind (review48)."""


class SendBacklog:
    """The bytes written without waiting to peers that aren't reading, in all of a
    node's connections (each :class:`PeerConnection` counts its own in it), and by
    address (``groups``: :func:`~trustp2p.protocol.hosts.share_group`), gossip only
    (review: a connection's unread answers kept its address's gossip from the others);
    ``holding``: the connections holding gossip; ``evicted``: those of them to cut
    for it (see :data:`FAIR_CEILING`)."""

    __slots__ = ("_looked", "bytes", "evicted", "groups", "holding", "limit")

    def __init__(self, limit: int = MAX_GOSSIP_BACKLOG) -> None:
        self.bytes = 0
        self.limit = limit
        self.groups: dict[str, int] = {}
        self.holding: dict[PeerConnection, None] = {}
        self.evicted: dict[PeerConnection, None] = {}
        self._looked = -1.0  # when evict_slowest() last walked the holders

    @property
    def holders(self) -> int:
        """How many connections hold gossip."""
        return len(self.holding)

    def over_share(self, conn: PeerConnection) -> bool:
        """Whether ``conn`` holds more gossip than an even share of the bound."""
        return conn.gossip_backlog[1] > self.limit // max(self.holders, 1)

    def evict_slowest(self) -> None:
        """Unless one is marked already, mark the slowest reader (by its stall watch's
        last sample) of the connections holding more than an even share of the bound:
        the largest holder could be an honest subscriber a burst behind, which an
        attacker's connections, each holding a little less, made the largest (found
        in review)."""
        now = time.monotonic()
        if self.evicted or now - self._looked < 0.1:
            return  # (a look a tenth of a second at most: each walks the holders)
        self._looked = now
        over = [c for c in self.holding if c.pace is not None and self.over_share(c)]
        if over:
            self.evicted[min(over, key=lambda c: (c.pace, -c.gossip_backlog[1]))] = None

    def add(self, group: str | None, size: int) -> None:
        """``size`` bytes more are held unread by a peer of ``group`` (None: loopback)."""
        self.bytes += size
        if group is not None:
            self.groups[group] = self.groups.get(group, 0) + size

    def release(self, group: str | None, size: int) -> None:
        """A peer of ``group`` took (or dropped) the ``size`` bytes it held."""
        self.bytes -= size
        if group is not None and size:
            left = self.groups.get(group, 0) - size
            if left > 0:
                self.groups[group] = left
            else:
                self.groups.pop(group, None)


class PeerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the peer and puts it in ``extra``, as websockets does."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = self.extra
        return f"[{self.extra['peer']}] {msg}", kwargs


class PeerConnection:
    """
    What the node keeps per open connection; get it with :meth:`Node.connection`.

    Attributes:
        socket: The connection.
        role: The role it belongs to (``node.server`` or ``node.client``).
        protocol: Its sans-I/O protocol state (introduction, counts, heartbeat).
        log: A logger that names the peer.
        opened: When it opened, in seconds since the epoch.
        opened_at: When it opened, by :func:`time.monotonic` (what compares with other
            times: the wall clock may step).

    """

    __slots__ = (
        "backlog",
        "backlog_bytes",
        "counted",
        "gossip_backlog",
        "group",
        "held",
        "intro_waiters",
        "log",
        "opened",
        "opened_at",
        "other_backlog",
        "oversized",
        "pace",
        "protocol",
        "role",
        "shared",
        "socket",
        "sources",
        "stall",
        "throttle",
        "worker",
    )

    def __init__(
        self,
        socket: Socket,
        role: Role,
        protocol: ConnectionProtocol,
        log: PeerLog,
        shared: SendBacklog | None = None,
        group: str | None = None,
    ) -> None:
        self.socket = socket
        self.shared = SendBacklog() if shared is None else shared
        self.role = role
        self.protocol = protocol
        self.log = log
        self.worker: Worker | None = None
        self.opened = time.time()
        self.opened_at = time.monotonic()
        self.pace: float | None = None  # bytes/s it took, while its stall watch samples
        self.backlog = 0  # packages written while the peer wasn't reading...
        self.backlog_bytes = 0  # ...and their bytes
        self.gossip_backlog = self.other_backlog = (0, 0)  # of them: packages, bytes
        self.counted = 0  # valid packages already counted in the peer store
        self.throttle: asyncio.TimerHandle | None = None  # over a budget: pause_for
        self.stall: asyncio.Task[None] | None = None  # watching a peer that may not read
        self.held = False  # reading paused: too much of its gossip waits for handlers
        self.oversized = 0  # gossip messages not sent: over the peer's max_package_size
        self.intro_waiters: list[asyncio.Future[None]] = []  # see introduction()
        self.group = group  # its address's share of ``shared`` (None: local, none)
        self.sources = SourceShares()  # its gossip backlog by source

    async def introduction(self, wait: float = INTRODUCTION_WAIT) -> None:
        """
        Wait, ``wait`` seconds at most (:data:`INTRODUCTION_WAIT`), for a secure peer's
        introduction (a trustp2p peer sends it first thing: its limits are known then).
        A plain peer may be the original, which never introduces itself: not waited
        for. Found by a tester: a request over the peer's limit sent right after
        ``connection_to()`` returned, before the peer's hello was in, closed the
        connection (1009) rather than raising.

        Raises:
            ConnectionClosed: If the connection is closed (by the end of the wait: a
                fault test's request then went on, and waited 300 s).

        """
        deadline = time.monotonic() + wait
        while self.protocol.secure and self.protocol.state in _BEFORE_INTRODUCTION:
            left = deadline - time.monotonic()
            if left <= 0 or self.socket.closed:
                break
            future = asyncio.get_running_loop().create_future()
            self.intro_waiters.append(future)
            try:
                # Not asyncio.wait_for: on Python 3.11 a cancel that came as the future
                # was set was swallowed (found by a tester: a request cancelled right
                # after connection_to() went on for 3 s, up to response_timeout).
                async with asyncio.timeout(left):
                    await future
            except TimeoutError:
                break
            finally:
                self.intro_waiters.remove(future)
        if self.socket.closed:
            raise ConnectionClosed(self.socket.close_code, self.socket.close_reason)

    def introduced(self, body: Body) -> None:
        """The peer introduced itself with ``body``: said at DEBUG, and waiters woken."""
        self.log.debug("= peer runs %s %s", body.get("library"), body.get("library_version"))
        self._wake()

    def _wake(self) -> None:
        for future in self.intro_waiters:
            if not future.done():
                future.set_result(None)

    def queued(
        self, size: int, options: NodeOptions, *, gossip: bool = False, source: str = ""
    ) -> str | None:
        """A package of ``size`` bytes is to be written without waiting while the peer
        isn't reading: None if the send queue has room for it (it counts), else why not
        (``max_send_queue``, ``max_send_bytes``; for ``gossip``, shared by ``source``
        among the sources holding some (:class:`SourceShares`), and the node's
        :data:`MAX_GOSSIP_BACKLOG` too)."""
        max_packages = options.max_send_queue
        max_bytes = max(options.max_send_bytes, options.max_package_size or 0)  # one fits
        # Gossip and the rest are counted apart: gossip past the bound is dropped, and
        # must not leave the rest none (found in review: a publisher's burst filled a
        # slow peer's queue, and the next control talk disconnected it).
        if gossip:  # what the peer took since leaves it (as the stall watch sees it)
            in_flight = self.socket.bytes_in_flight()  # (0: the driver can't tell)
            if in_flight:
                self._took(*self.sources.taken(self.socket.stats.bytes_out - in_flight))
        count, total = self.gossip_backlog if gossip else self.other_backlog
        if gossip:  # (attacker37 N5: the source over its share, not the newest push)
            refused = self.sources.refuses(
                source, size, packages=count, total=total, max_packages=max_packages,
                max_bytes=max_bytes, pace=self.pace,
            )  # fmt: skip
            if refused is not None:
                return refused
        elif count >= max_packages:
            return f"send queue full: {max_packages} packages unread"
        elif total + size > max_bytes:
            return f"send queue full: over {max_bytes} bytes unread"
        shared = self.shared
        if gossip and shared.bytes + size > shared.limit and not self._fair(total + size, size):
            return f"the node's peers hold over {shared.limit} bytes unread"
        group = self.group
        if gossip and group is not None:
            share = shared.limit // GROUP_SHARE
            if shared.groups.get(group, 0) + size > share:
                return f"the peers of its address hold over {share} bytes unread"
        if gossip:
            if not count:
                shared.holding[self] = None  # (it holds gossip from now)
            self.gossip_backlog = (count + 1, total + size)
            self.sources.add(source, size, self.socket.stats.bytes_out + size)
        else:
            self.other_backlog = (count + 1, total + size)
        self.backlog += 1
        self.backlog_bytes += size
        shared.add(group if gossip else None, size)  # (an address's share: its gossip)
        return None

    def _took(self, packages: int, size: int) -> None:
        """The peer took ``packages`` pushes of gossip, ``size`` bytes, of its queue."""
        if not packages:
            return
        count, total = self.gossip_backlog
        self.gossip_backlog = (count - packages, total - size)
        self.backlog -= packages
        self.backlog_bytes -= size
        shared = self.shared
        shared.release(self.group, size)
        if count == packages:  # (it holds no gossip now)
            shared.holding.pop(self, None)
            shared.evicted.pop(self, None)

    def _fair(self, held: int, size: int) -> bool:
        """Past the node's bound: whether this connection, holding ``held`` bytes of
        gossip with the next ``size``, holds no more than an even share of the bound
        among the connections holding gossip, the node less than ``FAIR_CEILING`` times
        it (a peer a moment behind holds little; those that read slowly hold much). At
        the ceiling, one under its share refused marks the slowest over its own."""
        shared = self.shared
        holders = shared.holders + (0 if self.gossip_backlog[0] else 1)  # (with this one)
        if held > shared.limit // holders:
            return False
        if shared.bytes + size > shared.limit * FAIR_CEILING:
            shared.evict_slowest()  # (under its share, refused: the slowest makes room)
            return False
        return True

    def fits(self, package: Package, size: int) -> bool:
        """
        Whether ``package``, ``size`` bytes encoded, may be written: False for a gossip
        message over the largest package the peer takes (its introduction says it; see
        ``ConnectionProtocol.peer_max_size``), left out (counted in ``oversized``, said
        once): the peer couldn't catch it up either. Found by a tester: a node with a
        larger limit pushed its messages to a smaller-limit peer, which closed the
        connection (1009) on each one, and again after each redial.

        Other packages are written whatever the peer said (an application's request is
        checked before it is sent): found in review, a peer claiming a tiny limit made
        our pongs and error answers raise in the read path, past its request budget.
        """
        limit = self.protocol.peer_max_size
        if limit is None or size <= limit or package.type is not PackageType.GOSSIP:
            return True
        self.oversized += 1
        if self.oversized == 1:
            self.log.warning(
                "! gossip %r of %d bytes not sent: over the peer's max_package_size (%d);"
                " no gossip over it is sent to this peer (counted in send_oversized)",
                package.event[:64],
                size,
                limit,
            )
        return False

    def drained(self) -> None:
        """The peer reads again (or is gone): what it held unread no longer counts;
        those waiting for its introduction look again (it may be gone)."""
        self._wake()
        self.shared.holding.pop(self, None)
        self.shared.evicted.pop(self, None)
        gossip = self.gossip_backlog[1]
        self.shared.release(self.group, gossip)
        self.shared.release(None, self.backlog_bytes - gossip)
        self.backlog = self.backlog_bytes = 0
        self.gossip_backlog = self.other_backlog = (0, 0)
        self.sources.clear()

    def can_read(self) -> bool:
        """Whether nothing holds reading from the peer: its request budget
        (``throttle``), its handlers (``worker``), the gossip delivery (``held``)."""
        worker = self.worker
        return self.throttle is None and not self.held and (worker is None or not worker.paused)

    def pause_for(self, delay: float) -> bool:
        """Stop reading from the peer for ``delay`` seconds at least: it is over a budget
        (its request budget, its gossip budget or its share of the node's). True if it
        wasn't paused for one already (a new throttle, to count)."""
        loop = asyncio.get_running_loop()
        throttle = self.throttle
        if throttle is None:
            self.socket.pause_reading()
        elif throttle.when() >= loop.time() + delay:
            return False  # paused longer already
        else:
            throttle.cancel()
        self.throttle = loop.call_later(delay, self._unthrottle)
        return throttle is None

    def _unthrottle(self) -> None:
        self.throttle = None
        if self.can_read():
            self.socket.resume_reading()

    def read_again(self) -> None:
        """Read from the peer again whatever its request budget and its gossip (it is
        closing: its close must be read); only its handlers' full inbox still holds it."""
        if self.throttle is None and not self.held:
            return
        if self.throttle is not None:
            self.throttle.cancel()
            self.throttle = None
        self.held = False
        if self.can_read():
            self.socket.resume_reading()

    def hold(self, held: bool) -> None:
        """Pause reading from the peer while gossip it sent waits for the node's handlers
        beyond their bound (``held``), or read again if nothing else holds it."""
        if held and not self.held:
            self.socket.pause_reading()
        was, self.held = self.held, held
        if was and not held and self.can_read():
            self.socket.resume_reading()

    @property
    def listen_urls(self) -> list[str]:
        """The URLs the peer said it listens on (hello or ``my_url``)."""
        return self.protocol.listen_urls

    @listen_urls.setter
    def listen_urls(self, urls: list[str]) -> None:
        self.protocol.listen_urls = urls

    @property
    def peer_version(self) -> Body | None:
        """The peer's version or hello body, once received."""
        return self.protocol.peer_version


async def watch_stall(
    conn: PeerConnection, timeout: float, disconnect: Callable[[PeerConnection, str], None]
) -> None:
    """While data waits for the peer, call ``disconnect(conn, reason)`` if it takes
    nothing for ``timeout`` seconds: it reads nothing (see :class:`WriteStall`; longer
    while TCP shows the path congested)."""
    socket = conn.socket
    stats = socket.stats
    loop = asyncio.get_running_loop()
    # What the peer took: what we wrote, less what is still on its way (our buffers and
    # the kernel's; the kernel takes bytes from our buffer in large steps, as room
    # frees in its own, and sends them on at the link's pace).
    then, taken = loop.time(), stats.bytes_out - socket.bytes_in_flight()
    stall = WriteStall(timeout, then, taken)
    shared = conn.shared
    try:
        while socket.write_paused and not socket.closed:
            # Sampling a buffer is about real time passing: 8 samples per timeout.
            await asyncio.sleep(timeout / 8)
            now, before = loop.time(), taken
            taken = stats.bytes_out - socket.bytes_in_flight()
            if stall.stalled(now, taken, socket.path_view):
                disconnect(conn, f"peer read nothing for {timeout:g} s")
                return
            conn.pace, then = max(taken - before, 0) / max(now - then, 1e-3), now
            if conn in shared.evicted:  # (see FAIR_CEILING)
                if shared.over_share(conn):  # (still)
                    held = conn.gossip_backlog[1]
                    disconnect(conn, f"holds {held} bytes of unread gossip, over its share")
                    return
                del shared.evicted[conn]
    finally:
        conn.stall = None
        conn.pace = None
    if not socket.write_paused:  # it reads again: its backlog no longer counts (review)
        conn.drained()
