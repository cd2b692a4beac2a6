"""
What the first bytes of an inbound WebSocket connection say when they can't begin an
upgrade: both WebSocket drivers close such a connection with this reason, and their
dialler learns what went wrong.

"""

from __future__ import annotations

__all__ = ["real_ip", "upgrade_refusal"]

import ipaddress

_NOT_HTTP = "did not receive a valid HTTP request"  # websockets' words

_GET = b"GET "


def _dial_hint(first_byte: int | None) -> str:
    """What an upgrade that wasn't an HTTP request says of the peer's URL: a TLS
    ClientHello starts with a handshake record, byte 0x16 (RFC 8446, section 5.1: found
    by a tester, whose ``wss://`` dial to a ``ws://`` server was said to dial ``tcp://``);
    anything else most likely is a ``tcp://`` frame."""
    return (
        " (does the peer dial wss://?)" if first_byte == 0x16 else " (does the peer dial tcp://?)"
    )


def upgrade_refusal(head: bytes) -> str | None:
    """
    Why an inbound connection whose first bytes are ``head`` can't be a WebSocket
    upgrade, or ``None`` while they may begin one: the upgrade is an HTTP GET request
    (RFC 6455, section 4.1), so its first four bytes are ``GET``, then a space.

    A driver checks each read until four bytes came, and closes the connection at once
    when this returns a reason (tester47 F1: the ``picows`` driver held a ``tcp://``
    dial's frame, or a TLS ClientHello, for the whole ``open_timeout``).
    """
    head = head[:4]
    if head == _GET[: len(head)]:
        return None
    if 0x41 <= head[0] <= 0x5A:  # "POST", "HEAD"...: an HTTP client, not a WebSocket one
        return f"{_NOT_HTTP} (not a GET: an HTTP client?)"
    return _NOT_HTTP + _dial_hint(head[0])


def real_ip(values: list[str]) -> str:
    """The address an upgrade's ``X-Real-IP`` header gives (``values``: each of its
    values), as both WebSocket drivers take it from a loopback proxy
    (``trust_real_ip``).

    Raises:
        ValueError: If the header is repeated or not an IP address: the upgrade is
            refused with 400.
    """
    if len(values) > 1:
        raise ValueError("repeated header")
    return str(ipaddress.ip_address(values[0].strip()))
