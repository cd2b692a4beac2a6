"""
How many admin connections may be open at once, and which one gives way, without I/O:
the admin listener asks, :class:`AdminSlots` answers.

A connection takes a slot from accept, before it has sent anything (an idle one, kept
until the request timeout, took the node's file descriptors from its peers: found by
an attacker's test). It is *reading* until its request head is in, then *answering*
until it closes. At most :data:`MAX_CONNECTIONS` are open, and at most
:data:`MAX_PER_ADDRESS` from one address other than loopback (an IPv6 address counts
as its /64). A new connection that would pass either cap is not refused: the oldest
connection still reading makes room for it, of its own address if that one is at its
cap, else of the address holding the most slots (all of loopback counting as one).
Only when every connection it could take the place of is answering is it refused.

Why the newest wins: a scraper sends its whole head at once and is answering a moment
after accept, while a connection that sends its head a byte at a time (slowloris) stays
reading; so the scraper's connection pushes out a slow one, and slow ones push out the
scraper only if as many new ones as there are slots before it come in the moment its
head takes to arrive. That holds when the attacker and the scraper share an address,
as on a loopback-only listener, where a per-address cap would not help (found by an
attacker's test: 40 connections sending a byte every 4 s made 32 of 50 ``/metrics``
scrapes fail, refused while every slot was held). It is why loopback has no
per-address cap: there it would only shrink the slots a scraper hides among, from 32
to 8 (measured: a test's scrapes then failed, one run in five). Elsewhere (an
``admin_token`` on a public address) the cap keeps one host from holding the answering
slots, and at the total cap the address holding the most slots gives way first.

"""

from __future__ import annotations

__all__ = ["MAX_CONNECTIONS", "MAX_PER_ADDRESS", "AdminSlots", "Decision"]

from collections import Counter
from dataclasses import dataclass

from ..protocol.limits import address_key, is_loopback

MAX_CONNECTIONS = 32
"""Admin connections open at once, at most."""
MAX_PER_ADDRESS = 8
"""Admin connections open at once from one address other than loopback, at most."""


@dataclass(frozen=True, slots=True)
class Decision:
    """
    What to do with a new connection.

    Attributes:
        admitted: Whether it takes a slot (else close it at once).
        evicted: The connection to drop for it (it no longer counts), if any.

    """

    admitted: bool
    evicted: int | None = None


class AdminSlots:
    """
    The admin listener's connection slots. Connections are opaque ``int`` ids; the
    caller makes them unique. A connection counts from :meth:`admit` to :meth:`release`
    and may be evicted until :meth:`head_read`.

    Args:
        limit: Connections open at once, at most.
        per_address: Connections open at once from one address other than loopback,
            at most.

    """

    def __init__(self, *, limit: int = MAX_CONNECTIONS, per_address: int = MAX_PER_ADDRESS) -> None:
        if not 1 <= per_address <= limit:
            raise ValueError(f"per_address {per_address} is not within 1..{limit}")
        self.limit = limit
        self.per_address = per_address
        self._key: dict[int, str] = {}  # open connection -> its address key
        self._reading: dict[int, None] = {}  # those still reading their head, oldest first
        self._open_from: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._key)

    @property
    def reading(self) -> int:
        """Connections still reading their request head."""
        return len(self._reading)

    def open_from(self, host: str) -> int:
        """Connections open from ``host``'s address."""
        return self._open_from[_key(host)]

    def admit(self, conn: int, host: str) -> Decision:
        """A connection ``conn`` from ``host`` was accepted: whether it stays, and the
        connection dropped for it."""
        key = _key(host)
        evicted = None
        if key != _LOOPBACK and self._open_from[key] >= self.per_address:
            evicted = next((c for c in self._reading if self._key[c] == key), None)
            if evicted is None:
                return Decision(admitted=False)
        elif len(self._key) >= self.limit:
            # The oldest reading connection of the address holding the most slots.
            evicted = max(self._reading, key=lambda c: self._open_from[self._key[c]], default=None)
            if evicted is None:
                return Decision(admitted=False)
        if evicted is not None:
            self.release(evicted)
        self._key[conn] = key
        self._reading[conn] = None
        self._open_from[key] += 1
        return Decision(admitted=True, evicted=evicted)

    def head_read(self, conn: int) -> None:
        """``conn`` has sent its whole request head: it is answered, never evicted."""
        self._reading.pop(conn, None)

    def release(self, conn: int) -> None:
        """``conn`` closed (or was evicted); releasing it twice is harmless."""
        key = self._key.pop(conn, None)
        if key is None:
            return
        self._reading.pop(conn, None)
        self._open_from[key] -= 1
        if not self._open_from[key]:
            del self._open_from[key]


_LOOPBACK = "loopback"


def _key(host: str) -> str:
    return _LOOPBACK if is_loopback(host) else address_key(host)
