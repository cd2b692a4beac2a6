"""
The kernel's view of a TCP connection (Linux ``TCP_INFO``, tcp(7)) as a
:class:`~trustp2p.protocol.path.PathView`, for the stall rules (see
:mod:`trustp2p.protocol.path`). Every network driver runs on a TCP socket (``tcp``,
``ws``, ``picows``); elsewhere than on Linux, before Linux 5.4 (no peer's window in it),
and for a socket that isn't TCP, there is no view (``None``): no grace.

"""

from __future__ import annotations

__all__ = ["path_view", "read_path_view"]

import asyncio
import socket
import struct
import sys

from ..protocol.path import PathView

# struct tcp_info (linux/tcp.h): retransmits, probes, backoff are bytes 2-4; lost and
# retrans the u32 at 32, 36; last_data_recv and last_ack_recv (ms) at 52
# and 56; total_retrans at 100; rcv_ooopack and snd_wnd (Linux 5.4 on) at 224 and 228.
_HEAD = struct.Struct("=2xBBB27xII12xII40xI")
_TAIL = struct.Struct("=II")
_TAIL_AT = 224
_SIZE = _TAIL_AT + _TAIL.size


def read_path_view(sock: socket.socket) -> PathView | None:
    """TCP's view of ``sock``'s connection now, or ``None`` if it can't be read."""
    if sys.platform != "linux" or sock.type != socket.SOCK_STREAM:
        return None
    try:
        data = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _SIZE)
    except (OSError, AttributeError):  # (not TCP: a Unix socket; or no TCP_INFO)
        return None
    if len(data) < _SIZE:  # (before Linux 5.4: no peer's window, review86 M1: a peer
        return None  # that read nothing, its probes answered, looked congested)
    fields = _HEAD.unpack_from(data)
    retransmits, probes, backoff, lost, retrans, last_data, last_ack, resent = fields
    out_of_order, window = _TAIL.unpack_from(data, _TAIL_AT)
    resent += out_of_order  # the peer's segments after a gap: one was lost
    return PathView(
        window_closed=probes > 0 or window == 0,
        resending=retransmits > 0 or backoff > 0 or lost > 0 or retrans > 0,
        losses=resent,
        heard=min(last_data, last_ack) / 1000,
    )


def path_view(transport: asyncio.BaseTransport | None) -> PathView | None:
    """TCP's view of ``transport``'s connection, or ``None`` (none, or closing)."""
    if transport is None or transport.is_closing():
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    return read_path_view(sock)
