"""
WebSocket binary frames written by hand (RFC 6455 §5.2), for a driver that sends
several messages in one write, or a large message without copying it into its frame.

"""

from __future__ import annotations

__all__ = ["binary_frame_parts", "binary_frames"]

import os
import struct
import threading

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

_HEADER = struct.Struct("!BB")  # FIN + opcode, mask bit + length
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _header(size: int, mask_bit: int) -> bytes:
    """A final binary frame's header for ``size`` bytes of data, without the mask key."""
    if size < 126:
        return _HEADER.pack(0x82, mask_bit | size)
    if size < 65536:
        return _HEADER_16.pack(0x82, mask_bit | 126, size)
    return _HEADER_64.pack(0x82, mask_bit | 127, size)


def binary_frames(messages: list[bytes], *, masked: bool) -> bytes:
    """Binary frames carrying ``messages``, in one piece; a client's are masked
    (RFC 6455 §5.3), with keys from :func:`os.urandom`."""
    parts: list[bytes] = []
    append = parts.append
    pack, pack_16 = _HEADER.pack, _HEADER_16.pack  # _header(), written out: per message
    if not masked:
        for data in messages:
            size = len(data)
            if size < 126:
                append(pack(0x82, size))
            else:
                append(pack_16(0x82, 126, size) if size < 65536 else _header(size, 0))
            append(data)
        return b"".join(parts)
    keys = os.urandom(4 * len(messages))
    for start, data in zip(range(0, len(keys), 4), messages, strict=True):
        size = len(data)
        if size < 126:
            append(pack(0x82, 0x80 | size))
        else:
            append(pack_16(0x82, 0xFE, size) if size < 65536 else _header(size, 0x80))
        key = keys[start : start + 4]
        append(key)
        append(apply_mask(data, key))
    return b"".join(parts)


class _MaskKeys(threading.local):
    """Mask keys drawn from :func:`os.urandom` a batch at a time (a system call per
    frame cost a microsecond), one batch per thread."""

    def __init__(self) -> None:
        self.batch = b""
        self.next = 0

    def take(self) -> bytes:
        start = self.next
        if start >= len(self.batch):
            self.batch, start = os.urandom(4096), 0
        self.next = start + 4
        return self.batch[start : start + 4]


_mask_keys = _MaskKeys()


def binary_frame_parts(data: bytes, *, masked: bool) -> list[bytes]:
    """
    One binary frame carrying ``data``, as its header (with the mask key, if masked)
    and its data: ``data`` itself when unmasked, so that a large message is written
    without a copy into its frame.
    """
    if not masked:
        return [_header(len(data), 0), data]
    key = _mask_keys.take()
    return [_header(len(data), 0x80) + key, apply_mask(data, key)]
