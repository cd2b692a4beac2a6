"""
The tcp driver's per-message loop (:mod:`.tcp`): the complete data frames of a read,
delivered to the listener. A module of its own so that the compiled build (``setup.py``)
can compile it: :class:`~.tcp.TcpSocket` has Python bases (``asyncio.BufferedProtocol``)
and stays pure, while this native class runs the loop for every message it reads.

"""

from __future__ import annotations

__all__ = ["DataFrames"]

import logging
import struct
from time import perf_counter
from typing import Final

from .base import Listener, Socket, SocketStats

logger = logging.getLogger("trustp2p.drivers.tcp")

_unpack_header: Final = struct.Struct(">I").unpack_from


class DataFrames:
    """
    Delivers whole data frames to ``listener`` as a socket's messages, and counts them
    in ``stats`` once the read's messages are delivered (not before each one: two
    attribute updates less per message; nothing reads them meanwhile). The socket sets
    :attr:`stop` whenever it may no longer deliver (reading paused, a close sent, the
    rest discarded), so that a listener's callback that pauses or closes it stops the
    loop at the next frame.

    A read's turn (``DriverOptions.read_turn``, ``turn``) starts with
    :meth:`start_turn`; once a message's delivery ends past it, :attr:`turned` is set
    and the loop stops: the socket holds the rest for the next iteration.
    """

    def __init__(self, listener: Listener, stats: SocketStats, limit: int, turn: float):
        # (Not the socket: a cycle, freed by the collector only: review66 B1.)
        self.on_message = listener.on_message
        self.stats = stats
        self.limit = limit  # the largest data frame delivered (max_message_size)
        self.stop = False
        self.turn = turn
        self.turn_end = 0.0
        self.turned = False

    def start_turn(self) -> None:
        """A read's turn starts now."""
        self.turn_end = perf_counter() + self.turn
        self.turned = False

    def deliver(self, socket: Socket, view: memoryview, pos: int, end: int) -> int:
        """
        Deliver the frames of ``view[pos:end]``, ``socket``'s, which starts at a frame
        boundary, until :attr:`stop` or a frame that isn't a whole data frame within
        the limit (a partial one, a control frame, an oversized one): the socket
        handles that one. Returns where it stopped, ``end`` if all was delivered.
        """
        limit = self.limit
        on_message = self.on_message
        turn_end = self.turn_end
        count = size = 0
        while pos < end and not self.stop:
            if end - pos < 4:
                break
            length: int = _unpack_header(view, pos)[0]  # (typed: compared as a C integer)
            if length > limit:  # a control frame (its top bit set) too
                break
            start = pos + 4
            stop = start + length
            if stop > end:
                break
            pos = stop
            count += 1
            size += length
            try:
                on_message(socket, bytes(view[start:stop]))
            except Exception:  # a bug in the listener must not break the transport
                logger.error("! listener failed on a message from %s", socket.peer, exc_info=True)
            if pos < end and perf_counter() > turn_end:  # (more follow: the clock read)
                self.turned = True
                break
        if count:  # counted once per read
            stats = self.stats
            stats.messages_in += count
            stats.bytes_in += size
        return pos
