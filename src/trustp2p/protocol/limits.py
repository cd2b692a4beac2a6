"""
Rate limits and network groups, free of I/O: token buckets, per-address connection
accounting, and the netgroup of an address (for eclipse resistance). Time comes from
the caller.

"""

from __future__ import annotations

__all__ = [
    "AddressLimiter",
    "BudgetTable",
    "TokenBucket",
    "WriteStall",
    "is_loopback",
    "netgroup",
]

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

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; return whether there was."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            if self.tokens >= self.burst - 1:
                self.debt = 0
            return True
        self.debt += 1
        return False

    def spend(self, now: float) -> float:
        """
        Spend one token, going into debt when there is none: for rates that slow a peer
        down rather than refuse it.

        Returns:
            The seconds until the balance is back at zero: ``0.0`` while the peer is
            within its budget; otherwise how long to stop reading from it.

        """
        self._refill(now)
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

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


class BudgetTable:
    """
    Token buckets by key (a peer id, or an address in plain mode) that outlive the
    connections: a peer that reconnects finds its budget as it left it.

    Buckets that have refilled completely carry no information and are forgotten when
    more than ``max_tracked`` keys are held.

    """

    def __init__(self, rate: float, burst: float, *, max_tracked: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._max_tracked = max_tracked

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: str, now: float) -> TokenBucket:
        """The bucket of ``key``, full if it has none yet."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_tracked:
                for other, old in list(self._buckets.items()):
                    if old.full(now):
                        del self._buckets[other]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket


class WriteStall:
    """
    Tells a peer that reads nothing from one that reads slowly.

    While data waits for a peer (its write buffer is above the limit), the node samples
    the buffer's size. Any decrease is progress: the peer took bytes, however few, so a
    large frame crawling over a slow link is never taken for a stall. A peer whose buffer
    hasn't shrunk for ``timeout`` seconds reads nothing.

    Args:
        timeout: Seconds without progress that make a stall.
        now: When the buffer was first seen above the limit.
        size: Its size then, in bytes.

    """

    __slots__ = ("_lowest", "_since", "timeout")

    def __init__(self, timeout: float, now: float, size: int) -> None:
        self.timeout = timeout
        self._lowest = size
        self._since = now

    def stalled(self, now: float, size: int) -> bool:
        """Record the buffer's ``size`` at ``now``; True once there was no progress for
        :attr:`timeout` seconds."""
        if size < self._lowest:
            self._lowest = size
            self._since = now
            return False
        return now - self._since >= self.timeout
