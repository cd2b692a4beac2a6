"""
WebSocket binary frames written by hand (RFC 6455 §5.2), for a driver that sends
several messages in one write.

"""

from __future__ import annotations

__all__ = ["binary_frames"]

import os
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

_HEADER = struct.Struct("!BB")  # FIN + opcode, mask bit + length
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def binary_frames(messages: list[bytes], *, masked: bool) -> bytes:
    """Binary frames carrying ``messages``, in one piece; a client's are masked
    (RFC 6455 §5.3), with keys from :func:`os.urandom`."""
    mask_bit = 0x80 if masked else 0
    keys = os.urandom(4 * len(messages)) if masked else b""
    parts: list[bytes] = []
    append = parts.append
    for index, data in enumerate(messages):
        size = len(data)
        if size < 126:
            append(_HEADER.pack(0x82, mask_bit | size))
        elif size < 65536:
            append(_HEADER_16.pack(0x82, mask_bit | 126, size))
        else:
            append(_HEADER_64.pack(0x82, mask_bit | 127, size))
        if masked:
            key = keys[4 * index : 4 * index + 4]
            append(key)
            append(apply_mask(data, key))
        else:
            append(data)
    return b"".join(parts)
