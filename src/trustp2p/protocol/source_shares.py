"""
Per-source fairness of the gossip pushed to one peer that isn't reading
(:class:`SourceShares`), free of I/O.

Found by an attacker (attacker37 N5): a hub forwarded every message of a topic to a
2 Mbit/s subscriber in arrival order, and once its write buffer was full, its send
queue (``max_send_queue``, ``max_send_bytes``) took whatever came first and dropped
the rest: one publisher sending 32 KB messages, within its budget, filled it, and the
subscriber got 15 of an honest publisher's 1,000 messages of 2 KB. Nothing divided a
receiver's link among the sources of what it gets.

"""

from __future__ import annotations

from collections import deque

__all__ = ["MIN_PACE", "SHARE_CEILING", "SHARE_HORIZON", "SourceShares"]

SHARE_CEILING = 2
"""A source under its even share of a peer's send queue still gets its pushes in when
the queue is full, up to this many times its bounds in all: a source alone filled it
before the others came, and what was written can't be taken back."""

SHARE_HORIZON = 4.0
"""With other sources holding some, a source's share of the bytes is of what the peer
takes in this many seconds at most (at its pace, :data:`MIN_PACE` at least): the queue
is a FIFO, and each byte one source keeps queued delays the others' messages. With
shares of the whole 16 MiB, the attacker's source kept 4 MB queued for a 2 Mbit/s
peer: the others' messages arrived 20 s late, and the peer's pongs too (it took the
hub for gone)."""

MIN_PACE = 128 * 1024
"""Bytes/s: the pace :data:`SHARE_HORIZON` takes for a peer slower than this (or
frozen a moment), as publishing does (``protocol/gossip/pacing.py``)."""


class SourceShares:
    """
    The gossip written to one peer while it isn't reading, by source, and whose next
    push to refuse.

    A source is whom the node has a message from: the address group of the connection
    it came by (a local peer's: its own), as the message log counts it (the first token
    of the message's ``via``); ``""`` for the node's own messages. A publisher can make
    origins (keys) for free, but not connections from many addresses, so an origin
    would share nothing. (Behind a relay, all it forwards is one source: the relay's
    own sub-sources are its word, and one claiming many would take many shares.)

    Each source may hold an even share of the queue's bounds among the sources holding
    some of it (``max_packages / n`` and ``max_bytes / n``, this one counted): the one
    over its share is refused, not the newest push; a source under its share gets in
    even when the queue is full, up to :data:`SHARE_CEILING` times the bounds. Alone, a
    source has the whole queue, as before. A source's first package always fits its
    share (one package may be as large as ``max_bytes``). With other sources, a share of
    the bytes is of :data:`SHARE_HORIZON` seconds of the peer's pace at most.

    The queue is what the peer hasn't taken yet: the writes are in order, each known by
    where it ends in the connection's count of bytes written, and the writer tells
    (:meth:`taken`) how far the peer took them; the first measure counted what was
    written since the peer last read everything (:meth:`clear`), and one source that
    kept the peer's buffers full left another its share of that once (230 of the
    1,000 in the attacker's run, the rest dropped).
    """

    __slots__ = ("_held", "_pace", "_writes")

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, int]] = {}  # source -> (packages, bytes)
        # (end, source, size), in order; made at the first push: every connection has
        # one of these, and an empty deque takes 600 bytes (a 1,000-node simulation's
        # 24,000 connections: about 14 MiB).
        self._writes: deque[tuple[int, str, int]] | None = None
        self._pace: float | None = None  # the peer's, last known (kept from a pause on)

    def __len__(self) -> int:
        """How many sources hold gossip in the queue."""
        return len(self._held)

    def held(self, source: str) -> tuple[int, int]:
        """The packages and bytes ``source`` holds in the queue."""
        return self._held.get(source, (0, 0))

    def refuses(
        self,
        source: str,
        size: int,
        *,
        packages: int,
        total: int,
        max_packages: int,
        max_bytes: int,
        pace: float | None = None,
    ) -> str | None:
        """
        Why a push of ``size`` bytes from ``source`` is refused, or None if it may be
        written (then call :meth:`add`).

        Args:
            packages: Gossip packages in the queue, all sources together.
            total: Their bytes.
            max_packages: The queue's bound in packages (``max_send_queue``).
            max_bytes: ...and in bytes (``max_send_bytes``, one package at least).
            pace: The bytes per second the peer takes, if known now; else the last
                known is taken (its pace is sampled a while into each pause, and in
                the attacker's run each pause began with 4 MB of its source).

        """
        held_packages, held_bytes = self._held.get(source, (0, 0))
        sources = len(self._held) + (0 if held_packages else 1)
        share_bytes = max_bytes
        if pace is None:
            pace = self._pace
        else:
            self._pace = pace
        if sources > 1 and pace is not None:
            share_bytes = min(max_bytes, int(max(pace, MIN_PACE) * SHARE_HORIZON))
        # Shares bind only once the queue is full (review54 R1: binding from the first
        # push, they cut two honest publishers' bursts to a 2 Mbit/s peer at 128 of
        # 256 packages, and each refused message held its stream's later ones for its
        # gap fill: p50 3.1 -> 10.5 s, up to 746 of 900 over 20 s late).
        full = packages + 1 > max_packages or total + size > share_bytes
        if (
            held_packages
            and (sources == 1 or full)
            and (
                held_packages + 1 > max_packages // sources
                or held_bytes + size > share_bytes // sources
            )
        ):
            if sources == 1:  # (the queue's own bound)
                if held_packages >= max_packages:
                    return f"send queue full: {max_packages} packages unread"
                return f"send queue full: over {max_bytes} bytes unread"
            return (
                f"its source holds {held_packages} packages ({held_bytes} bytes) unread,"
                f" an even share of the send queue among {sources} sources"
            )
        if packages >= max_packages * SHARE_CEILING:
            return f"send queue full: {packages} packages unread"
        if total + size > max_bytes * SHARE_CEILING:
            return f"send queue full: over {max_bytes * SHARE_CEILING} bytes unread"
        return None

    def add(self, source: str, size: int, end: int) -> None:
        """A push of ``size`` bytes from ``source`` was written to the queue; ``end``:
        the connection's count of bytes written, with it."""
        held_packages, held_bytes = self._held.get(source, (0, 0))
        self._held[source] = (held_packages + 1, held_bytes + size)
        if self._writes is None:
            self._writes = deque()
        self._writes.append((end, source, size))

    def taken(self, upto: int) -> tuple[int, int]:
        """The peer took the first ``upto`` bytes written to the connection: the pushes
        that end there at most leave the queue. Returns their packages and bytes."""
        writes, held = self._writes, self._held
        packages = total = 0
        if writes is None:
            return packages, total
        while writes and writes[0][0] <= upto:
            _, source, size = writes.popleft()
            held_packages, held_bytes = held[source]
            if held_packages == 1:
                del held[source]
            else:
                held[source] = (held_packages - 1, held_bytes - size)
            packages += 1
            total += size
        return packages, total

    def clear(self) -> None:
        """The peer read everything (or is gone): nobody holds any of the queue."""
        self._held.clear()
        self._writes = None
