"""
Peer keys: how a node names a peer in its books (the peer store, block decisions).

A peer that proved its id (secure mode) is known by its peer id. A peer without one
(plain mode, or a failed handshake) is known by the address it connects from, spelt
``address:<ip>``. Keys are built by :func:`peer_key` and read by :func:`is_address_key`
and :func:`address_of_key`, and nowhere else. No I/O.

"""

from __future__ import annotations

__all__ = ["PeerKey", "address_of_key", "is_address_key", "peer_key"]

from typing import NewType

PeerKey = NewType("PeerKey", str)
"""A peer id, or ``address:<ip>`` for a peer known only by its address."""

_ADDRESS_PREFIX = "address:"


def peer_key(peer_id: str | None, address: str) -> PeerKey:
    """
    The key of a peer: its id if it proved one, else its IP address.

    Args:
        peer_id: The peer's proven id, or None.
        address: The IP address it connects from, as the drivers report it
            (``socket.host``).

    """
    return PeerKey(peer_id or _ADDRESS_PREFIX + address)


def is_address_key(key: str) -> bool:
    """Whether ``key`` names a peer by its address (no proven id): never a peer id."""
    return key.startswith(_ADDRESS_PREFIX)


def address_of_key(key: str) -> str | None:
    """The IP address an address key names; None for a peer id."""
    return key[len(_ADDRESS_PREFIX) :] if is_address_key(key) else None
