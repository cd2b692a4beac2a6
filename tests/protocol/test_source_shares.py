"""The gossip pushed to a peer that isn't reading is shared among its sources: the
source over its share is refused, not the newest push (attacker37 N5)."""

from __future__ import annotations

from trustp2p.protocol.source_shares import (
    MIN_PACE,
    SHARE_CEILING,
    SHARE_HORIZON,
    SourceShares,
)

LIMITS = {"max_packages": 8, "max_bytes": 1000}


class Queue:
    """A peer's gossip queue as PeerConnection.queued keeps it: totals, then shares."""

    def __init__(self) -> None:
        self.shares = SourceShares()
        self.packages = self.total = 0
        self.written = 0  # the connection's count of bytes written

    def push(self, source: str, size: int, pace: float | None = None) -> str | None:
        shares = self.shares
        refused = shares.refuses(
            source, size, packages=self.packages, total=self.total, pace=pace, **LIMITS
        )
        if refused is None:
            self.written += size
            shares.add(source, size, self.written)
            self.packages += 1
            self.total += size
        return refused

    def take(self, upto: int) -> None:
        packages, size = self.shares.taken(upto)
        self.packages -= packages
        self.total -= size

    def pushes(self, source: str, size: int, count: int) -> int:
        """Push ``count`` packages; how many were taken."""
        return sum(self.push(source, size) is None for _ in range(count))


def test_a_source_alone_has_the_whole_queue_as_before() -> None:
    queue = Queue()
    assert queue.pushes("a", 10, 20) == 8
    assert queue.push("a", 10) == "send queue full: 8 packages unread"
    queue = Queue()
    assert queue.pushes("a", 300, 5) == 3
    assert queue.push("a", 300) == "send queue full: over 1000 bytes unread"
    assert queue.push("a", 1) is None  # (what still fits its bytes)


def test_a_source_that_filled_the_queue_is_refused_and_the_next_source_is_not() -> None:
    # The attacker's 32 KB messages filled a slow subscriber's queue; an honest 2 KB
    # message each 50 ms found it full, and was dropped: 15 of 1,000 arrived.
    queue = Queue()
    assert queue.pushes("big", 100, 8) == 8  # alone: the whole queue (by packages)
    assert queue.push("small", 10) is None  # under its even share: taken, queue full
    assert queue.push("big", 100) is not None  # over its share: refused
    assert queue.pushes("small", 10, 10) == 3  # up to its half of the packages' bound
    assert queue.shares.held("small") == (4, 40)
    reason = queue.push("small", 10)
    assert reason == (
        "its source holds 4 packages (40 bytes) unread, an even share of the send queue"
        " among 2 sources"
    )


def test_no_share_binds_before_the_queue_is_full() -> None:
    # review54 R1: shares that bound from the first push cut two honest publishers'
    # bursts to a slow peer at half the queue, each refusal holding its stream's
    # later messages for a gap fill (p50 3.1 -> 10.5 s).
    queue = Queue()
    assert queue.pushes("a", 10, 2) == 2
    assert queue.pushes("b", 10, 1) == 1
    assert queue.pushes("a", 10, 5) == 5  # the queue's 8, not a's share of them
    assert queue.pushes("c", 10, 5) == 2  # full: c's share, 8 // 3
    assert queue.packages == 10 and len(queue.shares) == 3
    assert queue.pushes("b", 10, 5) == 1  # 2 of 8 // 3: b's share
    assert queue.push("a", 10) is not None  # 7: over its share


def test_shares_by_bytes_too() -> None:
    queue = Queue()
    assert queue.pushes("a", 400, 3) == 2  # 800 of 1000
    assert queue.push("b", 100) is None
    assert queue.push("a", 10) is None  # 910 of 1000: not full
    assert queue.push("a", 100) is not None  # full, and over 1000 // 2 bytes
    assert queue.pushes("b", 200, 10) == 2  # up to 500 bytes, its half


def test_a_sources_first_package_fits_its_share_up_to_the_ceiling() -> None:
    queue = Queue()
    assert queue.pushes("a", 1000, 1) == 1  # one package may be as large as the bound
    for n, source in enumerate("bcdefghijklmnopq"):
        refused = queue.push(source, 10)
        assert (refused is None) == (n + 1 < 8 * SHARE_CEILING)
    assert queue.packages == 8 * SHARE_CEILING
    assert queue.push("z", 10) == "send queue full: 16 packages unread"
    queue = Queue()
    assert queue.pushes("a", 1000, 1) == 1
    assert queue.push("b", 1000) is None
    assert queue.push("c", 1) == "send queue full: over 2000 bytes unread"


def test_what_the_peer_took_leaves_the_queue_in_the_order_written() -> None:
    # The attacker's source kept a 2 Mbit/s peer's buffers full for the whole run:
    # counted from when they filled, the honest source had its share once, and got
    # 230 of 1,000. Counted as what the peer hasn't taken, it has it all along.
    queue = Queue()
    assert queue.pushes("big", 100, 8) == 8
    assert queue.pushes("small", 10, 9) == 4  # its half of the packages
    assert queue.shares.taken(99) == (0, 0)  # the first push isn't all taken
    queue.take(300)  # three of big's
    assert queue.shares.held("big") == (5, 500) and queue.packages == 9
    assert queue.push("big", 100) is not None  # 5 of 8 packages: still over its half
    queue.take(840)  # the rest of big's, and small's first four
    assert len(queue.shares) == 0 and queue.packages == queue.total == 0
    assert queue.pushes("small", 10, 9) == 8  # alone again: the whole queue
    queue.take(850)
    assert queue.shares.held("small") == (7, 70)


def test_once_the_peer_read_everything_nobody_holds_any() -> None:
    shares = SourceShares()
    shares.add("a", 10, 10)
    shares.add("a", 20, 30)
    assert shares.held("a") == (2, 30) and len(shares) == 1
    shares.clear()
    assert shares.held("a") == (0, 0) and len(shares) == 0
    assert shares.taken(100) == (0, 0)  # (nothing left in order either)


def test_with_other_sources_the_queue_is_full_at_a_few_seconds_of_the_peer() -> None:
    # Each byte a source keeps queued delays the others: with shares of the whole
    # queue, the attacker's source kept 4 MB queued for a 2 Mbit/s subscriber, whose
    # honest messages (and pongs) came 20 s late.
    pace = 2 * MIN_PACE  # the peer takes 256 KiB/s
    horizon = int(pace * SHARE_HORIZON)  # 1 MiB: 512 KiB each for two sources
    limits = {"max_packages": 10_000, "max_bytes": 16 * 2**20}
    shares, written = SourceShares(), 0

    def push(source: str, peer_pace: float | None = pace) -> str | None:
        nonlocal written
        held = [shares.held(s) for s in "ab"]
        packages, total = sum(h[0] for h in held), sum(h[1] for h in held)
        refused = shares.refuses(
            source, 1024, packages=packages, total=total, pace=peer_pace, **limits
        )
        if refused is None:
            written += 1024
            shares.add(source, 1024, written)
        return refused

    assert all(push("a") is None for _ in range(4096))  # alone: the whole queue
    assert push("b") is None
    assert push("a") is not None  # full at the horizon, and over half of it
    assert all(push("b") is None for _ in range(horizon // 2 // 1024 - 1))  # b: its half
    assert push("b") == (
        f"its source holds {horizon // 2 // 1024} packages ({horizon // 2} bytes) unread,"
        " an even share of the send queue among 2 sources"
    )
    assert push("b", None) is not None  # not sampled now: the last pace known holds
    shares.taken(written)  # it read everything: a new pause
    assert push("a", 0.0) is None and push("b", 0.0) is None
    while push("a", 0.0) is None:
        pass
    # A frozen peer is taken at MIN_PACE: full at its horizon.
    assert shares.held("a")[1] + 2 * 1024 > MIN_PACE * SHARE_HORIZON
