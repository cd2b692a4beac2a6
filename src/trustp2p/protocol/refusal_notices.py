"""
Which connections refused at accept are told why, and which are dropped untold. No
I/O: time comes from the caller.

"""

from __future__ import annotations

__all__ = ["NOTICE_BURST", "NOTICE_INTERVAL", "RefusalNotices"]

from .hosts import share_group
from .limits import BudgetTable, is_loopback

NOTICE_INTERVAL = 10.0
"""Seconds in which an address (an IPv6 /48) is told why its connections were refused
at accept :data:`NOTICE_BURST` times (a token bucket: one more each
``NOTICE_INTERVAL / NOTICE_BURST``); the others are dropped untold."""

NOTICE_BURST = 4
"""Connections of an address refused at accept and told why at once, then
:data:`NOTICE_BURST` per :data:`NOTICE_INTERVAL`."""


class RefusalNotices:
    """
    Which connections refused at accept are told why. Telling costs the node the
    connection's WebSocket upgrade and a close frame, where dropping it costs a
    ``close()``: an address (:func:`~trustp2p.protocol.hosts.share_group`: an IPv6 /48)
    is told :data:`NOTICE_BURST` times at once, then at :data:`NOTICE_BURST` per
    :data:`NOTICE_INTERVAL`, and its other refused connections are dropped (found by
    an attacker: 32,540 connections in 12 s from one /48, each refused only after its
    upgrade, kept a node at 61-99 % of a core). A peer that backs off between its
    dials (trustp2p's wait 1, 2, 4 s...) is told every time. Loopback addresses are
    always told, unless ``exempt_loopback`` is False (``limit_loopback``). The budgets
    of ``size`` addresses at most are kept (:class:`~trustp2p.protocol.limits.BudgetTable`).
    """

    __slots__ = ("_budgets", "_exempt_loopback")

    def __init__(
        self,
        *,
        interval: float = NOTICE_INTERVAL,
        burst: int = NOTICE_BURST,
        exempt_loopback: bool = True,
        size: int = 4096,
    ) -> None:
        self._budgets = BudgetTable(burst / interval, burst, max_tracked=size)
        self._exempt_loopback = exempt_loopback

    def tell(self, host: str, now: float) -> bool:
        """A connection from ``host`` is refused at ``now``: whether to tell it why
        (else drop it)."""
        if self._exempt_loopback and is_loopback(host):
            return True
        return self._budgets.get(share_group(host), now).take(now)
