"""
How connections end: the close codes trustp2p uses on every driver, and close reasons
that fit the WebSocket limit. No I/O.

"""

from __future__ import annotations

__all__ = ["MAX_BLOCK_WAIT", "CloseCode", "block_left", "fit_reason"]

import enum
import re


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


MAX_BLOCK_WAIT = 900.0
"""Seconds at most that a peer's "blocked for N s" holds our redials of it: its
operator may lift the block (found in review: a day's wait kept peers away that long
after an unblock); one refused handshake in 15 minutes, not one a minute."""


def block_left(reason: str | None) -> float:
    """The seconds a close reason "blocked for N s: ..." says the block lasts, or a
    refusal "...: try again in N s" the wait (a reconnect storm's cooldown, new ids
    refused at a shared address: each redial before it cost both sides a refused
    handshake, found in review), at most :data:`MAX_BLOCK_WAIT`; else 0."""
    match = _BLOCKED_FOR.match(reason or "") or _TRY_AGAIN.search(reason or "")
    return min(float(match[1]), MAX_BLOCK_WAIT) if match else 0.0


_BLOCKED_FOR = re.compile(r"blocked for (\d{1,9}) s\b")
_TRY_AGAIN = re.compile(r": try again in (\d{1,9}) s$")
