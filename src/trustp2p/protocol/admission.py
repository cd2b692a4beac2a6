"""
Who may connect, which of two connections to one peer stays, and what a block covers.
No I/O: the node asks, these rules answer; time comes from the caller.

"""

from __future__ import annotations

__all__ = ["Admission", "BlockScope", "Refusal", "block_scope", "keep_new_connection"]

from collections.abc import Callable
from dataclasses import dataclass

from .close import CloseCode
from .limits import AddressLimiter, is_loopback


@dataclass(frozen=True, slots=True)
class Refusal:
    """
    Why an inbound connection is refused.

    Attributes:
        code: The close code to send.
        reason: The close reason.
        warn: Worth a WARNING (a limit was hit); blocked peers are only DEBUG noise.

    """

    code: int
    reason: str
    warn: bool


class Admission:
    """
    The inbound connection rules, applied before any cryptography: the node is running,
    the address is not blocked, at most ``max_inbound`` connections, and the per-address
    limits of ``limiter``.

    Args:
        max_inbound: Inbound connections at once; ``None`` for no limit.
        limiter: Per-address concurrency and rate.
        is_blocked: Whether an address is blocked (the peer store answers).

    """

    def __init__(
        self,
        *,
        max_inbound: int | None,
        limiter: AddressLimiter,
        is_blocked: Callable[[str], bool],
    ) -> None:
        self.max_inbound = max_inbound
        self._limiter = limiter
        self._is_blocked = is_blocked
        self._admitted: dict[int, str] = {}  # connection id -> address

    def __len__(self) -> int:
        """Connections admitted and not released."""
        return len(self._admitted)

    def open_from(self, host: str) -> int:
        """Connections admitted from ``host`` and not released."""
        return self._limiter.open_from(host)

    def admit(self, conn_id: int, host: str, now: float) -> Refusal | None:
        """Admit connection ``conn_id`` from ``host``, or say why not. An admitted
        connection must be :meth:`release`\\ d when it closes."""
        if self._is_blocked(host):
            return Refusal(CloseCode.POLICY_VIOLATION, "blocked", warn=False)
        if self.max_inbound is not None and len(self._admitted) >= self.max_inbound:
            return Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)
        why = self._limiter.admit(host, now)
        if why is not None:
            return Refusal(CloseCode.TRY_AGAIN_LATER, why, warn=True)
        self._admitted[conn_id] = host
        return None

    def release(self, conn_id: int) -> None:
        """Connection ``conn_id`` closed; nothing happens if it wasn't admitted."""
        host = self._admitted.pop(conn_id, None)
        if host is not None:
            self._limiter.release(host)


def keep_new_connection(
    *,
    our_id: str,
    new_inbound: bool,
    new_peer_id: str,
    existing_inbound: bool,
    existing_peer_id: str,
) -> bool:
    """
    Of two connections to one peer, whether to keep the new one.

    Both sides decide alike without talking: keep the connection dialled by the peer
    with the smaller id; of two dialled by the same peer, keep the older (the existing).
    """

    def dialler(inbound: bool, peer_id: str) -> str:
        return peer_id if inbound else our_id

    return dialler(new_inbound, new_peer_id) < dialler(existing_inbound, existing_peer_id)


@dataclass(frozen=True, slots=True)
class BlockScope:
    """What a block covers: the peer id, the address, or both (never neither)."""

    peer_id: str | None
    address: str | None


def block_scope(
    peer_id: str | None, address: str | None, *, limit_loopback: bool
) -> BlockScope | None:
    """
    What to block for a peer that crossed the policy.

    Loopback addresses are never blocked unless ``limit_loopback``: every local peer
    shares them. ``None`` means there is nothing to block (a local peer without a peer
    id, in plain mode): the offending connection is only closed.
    """
    if address is not None and is_loopback(address) and not limit_loopback:
        address = None
    if peer_id is None and address is None:
        return None
    return BlockScope(peer_id, address)
