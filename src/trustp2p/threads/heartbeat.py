"""
The heartbeat thread: keeps connections alive and drops peers that went silent.

``trustp2p init`` copies this file into ``threads-available/``; it is also a complete
example of a thread.

Server side, every ``heartbeat_interval`` seconds plus up to ``heartbeat_jitter``, it
pings each client that has sent nothing for ``heartbeat_timeout`` seconds. A client that
doesn't answer within ``heartbeat_response_timeout`` is closed ("lost peer"). Client
side, it answers each ping with a pong carrying the ping's tag and a ``sleep`` flag.
The round trip of the last ping is kept in ``socket.stats.last_rtt``.

"""

from __future__ import annotations

import asyncio
import random

from trustp2p import (
    Body,
    CloseCode,
    ConnectionClosed,
    EventMap,
    Package,
    PackageType,
    RemoteError,
    RequestTimeout,
    Socket,
    Thread,
)


class HeartbeatThread(Thread):
    sleep = False
    """Sent in each pong; a client may set it to tell servers it is dozing."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.HEARTBEAT_PING: {"ping": self._handle_ping}}

    def _handle_ping(self, socket: Socket, package: Package) -> Body:
        # Returned bodies go back as a HEARTBEAT_PONG "pong" with the ping's tag.
        return {"sleep": self.sleep}

    def start(self) -> None:
        self._pinging: set[Socket] = set()
        if self.server is not None:
            self.create_task(self._run(), name="heartbeat")

    async def _run(self) -> None:
        options = self.node.options
        while True:
            await asyncio.sleep(
                options.heartbeat_interval + random.uniform(0, options.heartbeat_jitter)
            )
            self._ping_silent_clients()

    def _ping_silent_clients(self) -> None:
        assert self.server is not None
        now = asyncio.get_running_loop().time()
        timeout = self.node.options.heartbeat_timeout
        for socket in self.server.sockets:
            # Skip this client, not the rest: the original `break`s here, so one busy
            # client kept every other client from being pinged.
            if socket in self._pinging or now - socket.last_seen < timeout:
                continue
            self._pinging.add(socket)
            self.create_task(self._ping(socket), name=f"ping {socket.peer}")

    async def _ping(self, socket: Socket) -> None:
        assert self.server is not None
        loop = asyncio.get_running_loop()
        timeout = self.node.options.heartbeat_response_timeout
        sent = loop.time()
        try:
            await self.server.request(
                socket, "ping", {}, package_type=PackageType.HEARTBEAT_PING, timeout=timeout
            )
        except RemoteError:
            # A peer without a heartbeat thread answers with an error: it is alive.
            socket.stats.last_rtt = loop.time() - sent
        except RequestTimeout:
            self.log.info("x lost peer %s: no pong within %g s", socket.peer, timeout)
            await socket.close(CloseCode.GOING_AWAY, "lost peer")
        except ConnectionClosed:
            pass
        else:
            socket.stats.last_rtt = loop.time() - sent
        finally:
            self._pinging.discard(socket)
