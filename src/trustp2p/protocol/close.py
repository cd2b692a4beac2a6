"""
How connections end: the close codes trustp2p uses on every driver, and close reasons
that fit the WebSocket limit. No I/O.

"""

from __future__ import annotations

__all__ = ["CloseCode", "fit_reason"]

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 §7.4.1) that trustp2p uses, on every driver."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    ABNORMAL_CLOSURE = 1006  # never sent: the connection dropped without a close
    INVALID_DATA = 1007  # a WebSocket text message that isn't UTF-8
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


def fit_reason(reason: str, limit: int = 123) -> str:
    """Shorten a close reason to ``limit`` UTF-8 bytes (123 is WebSocket's maximum),
    without cutting a character in two."""
    data = reason.encode()
    if len(data) <= limit:
        return reason
    return data[:limit].decode(errors="ignore")
