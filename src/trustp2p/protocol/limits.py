"""
Rate limits and network groups, free of I/O: token buckets, per-address connection
accounting, the netgroup of an address (for eclipse resistance; defined, with
:func:`is_loopback` and :func:`address_key`, in :mod:`~trustp2p.protocol.hosts`), and
the limits on addresses learned from peers (how many a peer may make us store, and how
many dials go to addresses nobody has proven). Time comes from the caller.

"""

from __future__ import annotations

__all__ = [
    "ADDRESS_BURST",
    "ADDRESS_RATE",
    "FIRST_ADDRESSES",
    "MAX_ADDRESS_SHARE",
    "MAX_PER_IP",
    "SITE_SHARE",
    "STORM_CONNECTIONS",
    "STORM_COOLDOWN",
    "STORM_WINDOW",
    "UNPROVEN_DIALS",
    "UNPROVEN_DIAL_BURST",
    "UNPROVEN_DIAL_RATE",
    "AddressBudget",
    "AddressLimiter",
    "BudgetTable",
    "Cooldown",
    "ReconnectStorms",
    "TokenBucket",
    "UnprovenDials",
    "address_key",
    "address_share",
    "is_loopback",
    "netgroup",
]

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .hosts import address_key, is_loopback, netgroup, site_key


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
            raise ValueError(f"need rate > 0 and burst >= 1, not {rate:g} and {burst:g}")
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

    def spend(self, now: float, tokens: float = 1.0) -> float:
        """
        Spend ``tokens`` (one by default), going into debt when there are too few: for
        rates that slow a peer down rather than refuse it.

        Returns:
            The seconds until the balance is back at zero: ``0.0`` while the peer is
            within its budget; otherwise how long to stop reading from it.

        """
        self._refill(now)
        self.tokens -= tokens
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        """True if the bucket has refilled completely by ``now``."""
        return self.tokens + (now - self._last) * self.rate >= self.burst

    def level(self, now: float) -> float:
        """The tokens in the bucket at ``now`` (negative while in debt); spends none."""
        return min(self.burst, self.tokens + max(now - self._last, 0.0) * self.rate)


MAX_PER_IP = 8
"""Inbound connections at once from one address, by default (``max_per_ip``)."""


MAX_ADDRESS_SHARE = 16.0
"""The most :func:`address_share` gives (review57: ``max_per_ip`` 10,000 made 1,250)."""


def address_share(max_per_ip: int | None) -> float:
    """How many addresses' worth of new connections (rate, burst, reconnect storms) an
    address may make that may hold ``max_per_ip`` at once: ``max_per_ip /``
    :data:`MAX_PER_IP`, from 1 (``None``, no limit: 1) to :data:`MAX_ADDRESS_SHARE`."""
    return min(MAX_ADDRESS_SHARE, max(1.0, (max_per_ip or MAX_PER_IP) / MAX_PER_IP))


SITE_SHARE = 16
"""How many addresses' worth of connection rate and burst an IPv6 /48 has in all."""


class AddressLimiter:
    """
    Per-address limits on inbound connections: at most ``max_concurrent`` at once, and
    new ones at ``rate`` per second with a burst of ``burst``. An IPv6 address counts
    as its /64 (:func:`address_key`), and the /64s of one /48 (:func:`site_key`) share
    :data:`SITE_SHARE` times the rate and the burst besides (an attacker's test: 500
    /64s of one /48 opened 1,560 connections a second, each /64 within its limits, and
    kept a core busy refusing them).

    Args:
        exempt_loopback: Loopback addresses skip both limits.
        max_tracked: The most addresses (and as many /48s) whose rate is remembered:
            past it, those that refilled completely are forgotten, and if too few
            did, the least recently seen (a :class:`BudgetTable` each; review38: only
            full buckets went, so a flood of new addresses grew the table past its
            bound, and each new one scanned all of it).
        share: How many addresses' worth ``rate`` and ``burst`` are
            (:func:`address_share`); a /48 has :data:`SITE_SHARE` addresses' worth.

    """

    def __init__(
        self,
        *,
        max_concurrent: int | None = 8,
        rate: float = 0.2,
        burst: int = 16,
        exempt_loopback: bool = True,
        max_tracked: int = 100_000,
        share: float = 1.0,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.rate = rate
        self.burst = burst
        self.exempt_loopback = exempt_loopback
        self._open: Counter[str] = Counter()
        self._hosts = BudgetTable(rate, burst, max_tracked=max_tracked)
        site = SITE_SHARE / share  # (not the address's share: review57, it rose with it)
        self._sites = BudgetTable(rate * site, burst * site, max_tracked=max_tracked)

    @property
    def tracked(self) -> int:
        """Addresses (IPv4, IPv6 /64s) and IPv6 /48s whose rate is remembered."""
        return len(self._hosts) + len(self._sites)

    def open_from(self, host: str) -> int:
        """Connections open from ``host`` (from its /64, for IPv6)."""
        return self._open[address_key(host)]

    def exempts(self, host: str) -> bool:
        """Whether connections from ``host`` skip the limits (loopback, if exempt)."""
        return self.exempt_loopback and is_loopback(host)

    def admit(self, host: str, now: float) -> str | None:
        """Account for a new connection from ``host``; return why it is refused, if so."""
        if self.exempts(host):
            self._open[address_key(host)] += 1
            return None
        host = address_key(host)
        if self.max_concurrent is not None and self._open[host] >= self.max_concurrent:
            return f"too many connections from your address (limit {self.max_concurrent})"
        site = site_key(host)
        # The /48 first, if the /64 has a token: refused there, a /64 leaves no bucket
        # (review39: a /48's fresh /64s pushed other addresses out of the table).
        if (
            site is not None
            and self._hosts.level(host, now) >= 1
            and not self._sites.get(site, now).take(now)
        ):
            rate, burst = self._sites.rate, self._sites.burst
            return f"connecting too often from your /48 (limit {rate:g}/s, burst {burst:g})"
        if not self._hosts.get(host, now).take(now):
            return f"connecting too often (limit {self.rate:g}/s, burst {self.burst})"
        self._open[host] += 1
        return None

    def release(self, host: str) -> None:
        """A connection admitted from ``host`` closed."""
        host = address_key(host)
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]


class BudgetTable:
    """
    Token buckets by key (a peer id, or an address in plain mode) that outlive the
    connections: a peer that reconnects finds its budget as it left it.

    At most ``max_tracked`` keys are held. When the table is full, the buckets that
    have refilled completely (they carry no information) are forgotten; if that frees
    less than a tenth of it, the least recently used go too, down to nine tenths, so
    that a peer churning through identities neither grows the table nor makes every
    new key scan it. A connection keeps its bucket while it lasts, forgotten or not.

    """

    def __init__(self, rate: float, burst: float, *, max_tracked: int = 10_000) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, not {max_tracked}")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}  # the least recently used first
        self._max_tracked = max_tracked

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: str, now: float) -> TokenBucket:
        """The bucket of ``key``, full if it has none yet."""
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self._max_tracked:
                self._make_room(now)
            bucket = TokenBucket(self.rate, self.burst, now)
        buckets[key] = bucket  # the most recently used, last
        return bucket

    def level(self, key: str, now: float) -> float:
        """The tokens ``key`` has (a full burst if it has no bucket); spends none, and
        leaves the order of use alone."""
        bucket = self._buckets.get(key)
        return self.burst if bucket is None else bucket.level(now)

    def _make_room(self, now: float) -> None:
        buckets = self._buckets
        for key in [key for key, bucket in buckets.items() if bucket.full(now)]:
            del buckets[key]
        keep = self._max_tracked - max(1, self._max_tracked // 10)
        for key in list(itertools.islice(buckets, max(0, len(buckets) - keep))):
            del buckets[key]


STORM_CONNECTIONS = 20
"""Connections from one peer within :data:`STORM_WINDOW` that make a reconnect storm:
four times what the default reconnect back-off can make (5 in any 10 s)."""

STORM_WINDOW = 10.0
"""Seconds over which connections are counted for a storm."""

STORM_COOLDOWN = 60.0
"""Seconds a peer that reconnected in a storm is refused new connections."""


@dataclass(frozen=True, slots=True)
class Cooldown:
    """
    A new connection is refused: its peer reconnected in a storm.

    Attributes:
        left: Seconds before the peer may connect again.
        started: This connection set the cooldown off (the first refusal of a storm).

    """

    left: float
    started: bool

    @property
    def reason(self) -> str:
        """The close reason to send."""
        return f"reconnecting too often: try again in {math.ceil(self.left)} s"


class ReconnectStorms:
    """
    A peer that reconnects in a storm is refused new connections for a while.

    Each new connection of a peer (by peer id, or by address in plain mode) is counted
    at :meth:`arrive`. The one that makes ``connections`` within ``window`` seconds is
    refused, and so is every new connection of that peer for ``cooldown`` seconds; then
    the count starts over. Refused connections don't count, so a peer that keeps
    knocking during its cooldown doesn't lengthen it. Connections already open are not
    touched: this only slows a reconnecting peer down.

    Peers whose last connection left the window and whose cooldown is over carry no
    information: past ``max_tracked`` peers, they are forgotten.

    Args:
        connections: Connections within ``window`` that make a storm
            (:data:`STORM_CONNECTIONS`), at least 2.
        window: Seconds over which they are counted (:data:`STORM_WINDOW`).
        cooldown: Seconds of refusals after a storm (:data:`STORM_COOLDOWN`).
        max_tracked: Peers tracked before the idle ones are forgotten.
        address_connections: Connections that make a storm for a key counted
            ``by_address`` (:meth:`arrive`), where many peers may share the address
            (behind a NAT); ``connections`` if not given.

    Raises:
        ValueError: If ``connections`` is under 2, or ``window`` or ``cooldown`` isn't
            positive.

    """

    def __init__(
        self,
        *,
        connections: int = STORM_CONNECTIONS,
        window: float = STORM_WINDOW,
        cooldown: float = STORM_COOLDOWN,
        max_tracked: int = 100_000,
        address_connections: int | None = None,
    ) -> None:
        if connections < 2 or window <= 0 or cooldown <= 0:
            raise ValueError(
                "need connections >= 2, window > 0 and cooldown > 0, "
                f"not {connections}, {window} and {cooldown}"
            )
        self.connections = connections
        self.window = window
        self.cooldown = cooldown
        self.address_connections = max(address_connections or connections, 2)
        self._max_tracked = max_tracked
        # The last few, oldest first: a list (a deque took 600 bytes a peer, kept
        # until max_tracked: 60 MB at 100,000 peers that each came once).
        self._arrivals: dict[str, list[float]] = {}
        self._until: dict[str, float] = {}  # peer -> end of its cooldown

    def __len__(self) -> int:
        """Peers tracked."""
        return len(self._arrivals.keys() | self._until.keys())

    def arrive(self, key: str, now: float, *, by_address: bool = False) -> Cooldown | None:
        """
        Count a new connection of peer ``key`` at ``now``: ``None`` to let it in, or
        the :class:`Cooldown` that refuses it. ``by_address``: ``key`` is an address,
        which makes a storm at ``address_connections``.
        """
        until = self._until.get(key)
        if until is not None:
            if now < until:
                return Cooldown(until - now, started=False)
            del self._until[key]
        arrivals = self._arrivals.get(key)
        if arrivals is None:
            if len(self._arrivals) + len(self._until) >= self._max_tracked:
                self._forget(now)
            arrivals = self._arrivals[key] = []
        gone, since = 0, now - self.window
        while gone < len(arrivals) and arrivals[gone] <= since:
            gone += 1
        del arrivals[:gone]
        if len(arrivals) < (self.address_connections if by_address else self.connections) - 1:
            arrivals.append(now)
            return None
        del self._arrivals[key]  # the count starts over after the cooldown
        self._until[key] = now + self.cooldown
        return Cooldown(self.cooldown, started=True)

    def cooling(self, key: str, now: float) -> float:
        """Seconds of cooldown left to peer ``key`` at ``now`` (``0.0``: none)."""
        return max(self._until.get(key, now) - now, 0.0)

    def _forget(self, now: float) -> None:
        for key, arrivals in list(self._arrivals.items()):
            if not arrivals or arrivals[-1] <= now - self.window:
                del self._arrivals[key]
        for key, until in list(self._until.items()):
            if until <= now:
                del self._until[key]


ADDRESS_RATE = 0.1
"""New addresses per second a peer may make us store: Bitcoin Core's rate for the
addresses a peer relays (``MAX_ADDR_RATE_PER_SECOND``)."""

ADDRESS_BURST = 1000
"""...up to this many saved up (Bitcoin Core's ``MAX_ADDR_PROCESSING_TOKEN_BUCKET``)."""

FIRST_ADDRESSES = 100
"""What a peer's bucket holds when we first hear from it: one full ``get_peers`` answer.
Bitcoin Core starts a peer at 1 and credits 1,000 when it asks for addresses; we ask
every server we dial, so a new peer starts with one answer's worth."""


class AddressBudget:
    """
    How many new addresses each peer may make us store: one token bucket per key (the
    node's: a peer's address, local peers by id), of ``rate`` tokens per second up to
    ``burst``, starting at ``initial``. A URL we already know costs nothing; each new
    one costs a token; the rest are dropped, whatever their source (``get_peers``
    answers, ``my_url``, hello). An honest peer loses nothing that matters: a network's
    addresses repeat from answer to answer, and the new ones keep coming at ``rate``.

    Buckets outlive connections (reconnecting doesn't refill one). Past ``max_tracked``
    peers, buckets holding at least ``initial`` tokens are forgotten: a new one would
    hold no more.

    Args:
        rate: Tokens per second (:data:`ADDRESS_RATE`).
        burst: Most tokens a bucket holds (:data:`ADDRESS_BURST`).
        initial: Tokens of a new bucket (:data:`FIRST_ADDRESSES`), at most ``burst``.
        max_tracked: Peers tracked before full-enough buckets are forgotten.

    Raises:
        ValueError: If ``rate`` isn't positive, ``burst`` is under 1 or ``initial`` is
            out of ``[0, burst]``.

    """

    def __init__(
        self,
        *,
        rate: float = ADDRESS_RATE,
        burst: int = ADDRESS_BURST,
        initial: int = FIRST_ADDRESSES,
        max_tracked: int = 100_000,
    ) -> None:
        if rate <= 0 or not 0 <= initial <= burst or burst < 1:
            raise ValueError(
                "need rate > 0 and 0 <= initial <= burst >= 1,"
                f" not {rate:g}, {initial:g} and {burst:g}"
            )
        self.rate = rate
        self.burst = burst
        self.initial = initial
        self._buckets: dict[str, TokenBucket] = {}
        self._max_tracked = max_tracked

    def __len__(self) -> int:
        """Peers tracked."""
        return len(self._buckets)

    def level(self, key: str, now: float) -> float:
        """The tokens of peer ``key`` at ``now``: new addresses it may still add."""
        bucket = self._buckets.get(key)
        return float(self.initial) if bucket is None else bucket.level(now)

    def take(
        self, key: str, urls: Iterable[str], now: float, *, known: Callable[[str], bool]
    ) -> list[str]:
        """
        Of ``urls`` that peer ``key`` gave us, those to store, in order: the ones
        ``known`` already, and new ones while the peer has tokens (one each).
        """
        bucket = self._bucket(key, now)
        return [url for url in urls if known(url) or bucket.take(now)]

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_tracked:
                for other, old in list(self._buckets.items()):
                    if old.level(now) >= self.initial:
                        del self._buckets[other]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            bucket.tokens = float(self.initial)
        return bucket


UNPROVEN_DIALS = 8
"""Dials to unproven addresses under way at once."""

UNPROVEN_DIAL_RATE = 0.5
"""Dials to unproven addresses started per second..."""

UNPROVEN_DIAL_BURST = 8
"""...with bursts of this many: a new node still dials a full outbound set at once."""


class UnprovenDials:
    """
    Bounds the dials to addresses nobody has proven: URLs learned from peers that we
    never connected to (not bootstrap peers, not ``connect()`` URLs, not URLs of peers
    we met there before). At most ``max_concurrent`` such dials are under way, and they
    start at ``rate`` per second with a burst of ``burst``, so that a peer's list of
    addresses (a hundred that don't answer, or a victim's) costs a bounded number of
    dials, however often the dialler is woken up.

    The dialler asks :meth:`start` before each such dial, and reports its end (success
    or not) with :meth:`ended`; :meth:`wait` says when to try again.

    Args:
        max_concurrent: Dials under way at once (:data:`UNPROVEN_DIALS`).
        rate: Dials started per second (:data:`UNPROVEN_DIAL_RATE`).
        burst: Dials that may start at once (:data:`UNPROVEN_DIAL_BURST`).

    """

    def __init__(
        self,
        *,
        max_concurrent: int = UNPROVEN_DIALS,
        rate: float = UNPROVEN_DIAL_RATE,
        burst: int = UNPROVEN_DIAL_BURST,
    ) -> None:
        if max_concurrent < 1 or rate <= 0 or burst < 1:
            raise ValueError(
                "need max_concurrent >= 1, rate > 0 and burst >= 1, "
                f"not {max_concurrent}, {rate} and {burst}"
            )
        self.max_concurrent = max_concurrent
        self.rate = rate
        self.burst = burst
        self._bucket: TokenBucket | None = None  # made at the first start()
        self._under_way: set[str] = set()

    def __len__(self) -> int:
        """Dials under way."""
        return len(self._under_way)

    def start(self, url: str, now: float) -> bool:
        """
        Whether to dial the unproven ``url`` now; if so, it counts as under way until
        :meth:`ended`. A URL already under way is allowed again at no cost.
        """
        if url in self._under_way:
            return True
        if len(self._under_way) >= self.max_concurrent:
            return False
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(self.rate, self.burst, now)
        if bucket.level(now) < 1:
            return False  # not take(): a refusal here is no debt
        bucket.take(now)
        self._under_way.add(url)
        return True

    def ended(self, url: str) -> None:
        """The dial of ``url`` ended, however; nothing happens if it wasn't started."""
        self._under_way.discard(url)

    def wait(self, now: float) -> float | None:
        """
        Seconds from ``now`` before :meth:`start` may allow a new dial: ``0.0`` now,
        ``None`` while ``max_concurrent`` dials are under way (one must end first).
        """
        if len(self._under_way) >= self.max_concurrent:
            return None
        bucket = self._bucket
        level = float(self.burst) if bucket is None else bucket.level(now)
        return 0.0 if level >= 1 else (1 - level) / self.rate
