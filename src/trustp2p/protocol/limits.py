"""
Rate limits and network groups, free of I/O: token buckets, per-address connection
accounting, and the netgroup of an address (for eclipse resistance). Time comes from
the caller.

"""

from __future__ import annotations

__all__ = ["AddressLimiter", "TokenBucket", "is_loopback", "netgroup"]

import ipaddress
from collections import Counter


class TokenBucket:
    """
    ``rate`` tokens per second, up to ``burst`` stored.

    :meth:`take` spends one token if there is one. :attr:`debt` counts the tokens
    asked for but refused since the bucket was last full, so a caller can tell a peer a
    little over the limit from one far over it.

    """

    __slots__ = ("_last", "burst", "debt", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, not {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.debt = 0
        self._last = now

    def take(self, now: float) -> bool:
        elapsed = now - self._last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            if self.tokens >= self.burst - 1:
                self.debt = 0
            return True
        self.debt += 1
        return False

    def full(self, now: float) -> bool:
        """True if the bucket has refilled completely by ``now``."""
        return self.tokens + (now - self._last) * self.rate >= self.burst


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # before 3.13, ::ffff:127.0.0.1 isn't "loopback"
    return address.is_loopback


def netgroup(host: str) -> str:
    """
    The network group of an address: its /16 for IPv4, its /32 for IPv6, as Bitcoin
    Core groups outbound peers. Names that aren't addresses are their own group.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 16 if address.version == 4 else 32
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network)


class AddressLimiter:
    """
    Per-address limits on inbound connections: at most ``max_concurrent`` at once, and
    new ones at ``rate`` per second with a burst of ``burst``.

    Args:
        exempt_loopback: Loopback addresses skip both limits.

    """

    def __init__(
        self,
        *,
        max_concurrent: int | None = 8,
        rate: float = 0.2,
        burst: int = 16,
        exempt_loopback: bool = True,
        max_tracked: int = 100_000,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.rate = rate
        self.burst = burst
        self.exempt_loopback = exempt_loopback
        self._open: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}
        self._max_tracked = max_tracked

    def open_from(self, host: str) -> int:
        return self._open[host]

    def admit(self, host: str, now: float) -> str | None:
        """Account for a new connection from ``host``; return why it is refused, if so."""
        if self.exempt_loopback and is_loopback(host):
            self._open[host] += 1
            return None
        if self.max_concurrent is not None and self._open[host] >= self.max_concurrent:
            return f"too many connections from your address (limit {self.max_concurrent})"
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= self._max_tracked:
                self._forget_full(now)
            bucket = self._buckets[host] = TokenBucket(self.rate, self.burst, now)
        if not bucket.take(now):
            return f"connecting too often (limit {self.rate:g}/s, burst {self.burst})"
        self._open[host] += 1
        return None

    def release(self, host: str) -> None:
        """A connection admitted from ``host`` closed."""
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]

    def _forget_full(self, now: float) -> None:
        # Buckets that refilled completely carry no information: drop them.
        for host, bucket in list(self._buckets.items()):
            if bucket.full(now):
                del self._buckets[host]
