"""
The client's feeler dials, in asyncio: every ``feeler_interval``, one URL of the peer
store that nobody has proven is dialled to find out whether it works. Which one and when
is decided by :class:`~trustp2p.protocol.feelers.FeelerPolicy`; this module carries its
decisions out.

A feeler is a managed dial (:class:`~trustp2p.protocol.outbound.OutboundPolicy`): its
address is busy while it runs, and it honours the dials' limits. Its outcome goes where
any dial's goes: a connection that works (handshake, and the peer's proven id in secure
mode) is recorded by the node as a dial that worked (the store's URL proven), a failed
dial or handshake counts against the URL (not a refusal for want of room, 1013: a
wait only, :meth:`~trustp2p.node.dialer.Dialer.dial_failed`). Then the connection is
closed (code 1000), at DEBUG, unless the client is short of its ``target_outbound``, or
the node kept it in place of a connection it had to that peer (one connection per peer:
the URL learned was a connected peer's, and the rule kept the newer one): then it stays,
one of the outbound connections, as a managed dial's would.

"""

from __future__ import annotations

__all__ = ["Feelers"]

import asyncio
import logging
from typing import TYPE_CHECKING

from ..exceptions import DriverError
from ..protocol.close import CloseCode
from ..protocol.feelers import FeelerPolicy
from ..protocol.outbound import Dial

if TYPE_CHECKING:
    from ..drivers.base import Socket
    from .dialer import Dialer

logger = logging.getLogger("trustp2p.node.dialer")

FEELER_REASON = "feeler: checked, thanks"
"""The reason of a feeler's close: the peer's log says why we left at once."""


class Feelers:
    """
    Dials the feelers of a client (``node.client.dialer.feelers``).

    Args:
        dialer: The client's dialer: its policy, its dials, and where failures go.

    """

    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self._connected: set[str] = set()  # the peers connected when the feeler was chosen
        self.policy = FeelerPolicy(
            clock=dialer.policy.clock, interval=dialer.node.options.feeler_interval
        )

    async def run(self) -> None:
        """Dial a feeler whenever one is due, one at a time, until cancelled (the
        dialer's stop); returns at once if feelers are off."""
        self.policy.start()
        while (wait := self.policy.wake_in()) is not None:
            await asyncio.sleep(wait)
            dial = self._choose()
            if dial is not None:
                await self._feel(dial)

    def _choose(self) -> Dial | None:
        dialer = self.dialer
        node = dialer.node
        store = node.store
        if store is None:
            return None
        connected = self._connected = dialer.connected_ids()
        own = [*node.listen_urls, *dialer.ourselves, *dialer.twins_open()]
        candidates = store.untried(exclude_ids=connected)
        return self.policy.choose(candidates, dialer.policy, connected, own, store)

    async def _feel(self, dial: Dial) -> None:
        """Dial ``dial``, wait for the handshake, close the connection (or keep it)."""
        dialer = self.dialer
        outbound = dialer.policy
        kept = False
        try:
            try:
                socket = await dialer.dial(dial.dial_url, dial.expected)
            except DriverError as exc:
                dialer.dial_failed(dial.dial_url, exc)
                logger.debug("! feeler %s: %s", dial.url, exc)
                return
            finally:
                outbound.dial_done(dial.url)
            opened = await _opened(dialer, socket)
            if opened is not None:
                socket = opened  # (in secure mode, the channel over the one dialled)
                # Kept short of the target (it counts among the outbound connections), or
                # if the node kept it for the peer's connection it had (one per peer).
                if outbound.missing() >= 0 or socket.peer_id in self._connected:
                    logger.debug("= feeler %s worked: kept", dial.url)
                    kept = True
                    dialer.tasks.spawn(self._held(dial, socket), f"dial {dial.url}")
                    return
                logger.debug("= feeler %s worked: closing", dial.url)
                socket.close_soon(CloseCode.NORMAL_CLOSURE, FEELER_REASON)
            await self._closed(dial, socket)
            if opened is None:  # (refused: a duplicate, a blocked id, a handshake failed)
                logger.debug("= feeler %s: closed (%s %s)", dial.url, socket.close_code,
                             socket.close_reason or "-")  # fmt: skip
        finally:
            if not kept:
                outbound.dial_ended(dial.url)
            self.policy.ended()
            dialer.wake()

    async def _held(self, dial: Dial, socket: Socket) -> None:
        """A feeler kept: a managed dial until its connection closes."""
        try:
            await self._closed(dial, socket)
        finally:
            self.dialer.policy.dial_ended(dial.url)
            self.dialer.wake()

    async def _closed(self, dial: Dial, socket: Socket) -> None:
        await socket.wait_closed()
        self.dialer.dial_closed(dial, socket)  # (as a managed dial's: review69 F3)


async def _opened(dialer: Dialer, socket: Socket) -> Socket | None:
    """Wait until the node opened the connection dialled, ``socket`` (its handshakes
    worked), or it closed; the connection as the node opened it, if it did (its address
    is the feeler's while it runs: no other is opened there)."""
    client = dialer.node.client
    if client is None:
        return None
    opened = asyncio.ensure_future(client.connection_to(socket.peer))
    closed = asyncio.ensure_future(socket.wait_closed())
    try:
        await asyncio.wait((opened, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (opened, closed):
            task.cancel()
        await asyncio.gather(opened, closed, return_exceptions=True)
    if opened.cancelled() or opened.exception() is not None:  # (NodeStateError: stopping)
        return None
    return opened.result()
