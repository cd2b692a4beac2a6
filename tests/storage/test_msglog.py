"""The message log: the fault suite (tests/storage/faults.py), and bookkeeping, limits
and persistence."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from tests.conftest import MS, FakeClock
from tests.nodes import wait_for
from trustp2p.storage._msglog_records import MessageDatabase, Origin
from trustp2p.storage.msglog import LOG_PATH, MARK_GRACE, LoggedMessage, MessageLog

from .adapters import MessageLogAdapter, message
from .faults import HOUR, FailingWrites, StoreFaults, open_fails_once
from .sqlite_helpers import logged_by, query

LOGGER = "trustp2p.storage.msglog"


class TestMessageLogFaults(StoreFaults):
    @pytest.fixture
    def adapter(self) -> MessageLogAdapter:
        return MessageLogAdapter()


def seqs(messages: list[LoggedMessage]) -> list[int]:
    return [m.seq for m in messages]


@pytest.fixture
async def log(clock: FakeClock) -> AsyncIterator[MessageLog]:
    log = await MessageLog.open(None, clock=clock)
    yield log
    await log.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / LOG_PATH


def stored(path: Path) -> list[tuple[str, str, int]]:
    """The stored messages, in the order they were logged."""
    return query(path, "SELECT topic, origin, seq FROM messages ORDER BY position")


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return logged_by(LOGGER, caplog)


async def test_open_checks_its_limits() -> None:
    with pytest.raises(ValueError, match=r"^max_messages must be at least 1 or None, not 0$"):
        await MessageLog.open(None, max_messages=0)
    with pytest.raises(
        ValueError, match=r"^max_age must be a positive number of seconds or None, not -1$"
    ):
        await MessageLog.open(None, max_age=-1)


# Bookkeeping (in memory).


async def test_add_and_has(log: MessageLog) -> None:
    assert len(log) == 0
    assert log.add(message(1)) is True
    assert log.add(message(2, topic="news")) is True
    assert log.add(message(1, origin="tpb")) is True
    # (origin, seq) names a message, whatever its topic or payload.
    assert log.add(message(1, topic="news", data='{"other": true}')) is False
    assert len(log) == 3
    assert log.has("tpa", 1)
    assert log.has("tpa", 2)
    assert log.has("tpb", 1)
    assert not log.has("tpa", 3)
    assert not log.has("tpc", 1)
    assert log.range("tpa", 1, 1) == [message(1)]


async def test_high_water_is_contiguous(log: MessageLog) -> None:
    assert log.high_water() == {}
    for seq in (1, 2, 3, 5, 6):
        log.add(message(seq))
    assert log.high_water() == {"tpa": 3}
    log.add(message(4))
    assert log.high_water() == {"tpa": 6}
    # An origin first heard of late starts where it was first heard of.
    for seq in (11, 10, 12):
        log.add(message(seq, origin="tpb"))
    assert log.high_water() == {"tpa": 6, "tpb": 12}
    # A message older than the first one kept, with a gap: the mark starts from it.
    log.add(message(7, origin="tpb"))
    assert log.high_water() == {"tpa": 6, "tpb": 7}
    assert log.first_seq("tpb") == 7
    for seq in (8, 9):
        log.add(message(seq, origin="tpb"))
    assert log.high_water() == {"tpa": 6, "tpb": 12}


async def test_high_water_with_many_gaps(log: MessageLog) -> None:
    for seq in [*range(1, 1000), *range(1001, 2000, 2)]:
        log.add(message(seq))
    assert log.high_water() == {"tpa": 999}
    log.add(message(1000))
    assert log.high_water() == {"tpa": 1001}


async def test_high_water_per_topic(log: MessageLog) -> None:
    for seq in (1, 2, 4):
        log.add(message(seq))
    log.add(message(3, topic="news"))
    log.add(message(1, origin="tpb", topic="news"))
    assert log.high_water() == {"tpa": 4, "tpb": 1}
    assert log.high_water("chat") == {"tpa": 2}
    assert log.high_water("news") == {"tpa": 3, "tpb": 1}
    assert log.high_water("nobody") == {}


async def test_first_seq(log: MessageLog) -> None:
    assert log.first_seq("tpa") is None
    log.add(message(5))
    log.add(message(3, topic="news"))
    log.add(message(9))
    assert log.first_seq("tpa") == 3


async def test_range(log: MessageLog) -> None:
    for seq in (7, 1, 2, 3, 4, 6, 8, 9, 10):  # no 5; 7 first
        log.add(message(seq, topic="news" if seq % 2 else "chat"))
    log.add(message(5, origin="tpb"))
    assert seqs(log.range("tpa", 3, 7)) == [3, 4, 6, 7]
    assert seqs(log.range("tpa", 0, 100)) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert seqs(log.range("tpa", 3, 7, limit=2)) == [3, 4]
    assert seqs(log.range("tpa", 9, 9)) == [9]
    assert log.range("tpa", 5, 5) == []
    assert log.range("tpa", 11, 20) == []
    assert log.range("tpa", 7, 3) == []
    assert log.range("tpa", 1, 10, limit=0) == []
    assert log.range("tpc", 1, 10) == []
    assert log.range("tpa", 6, 6) == [message(6, topic="chat")]


async def test_pick(log: MessageLog) -> None:
    for seq in (7, 1, 2, 3, 4, 6, 8, 9, 10):  # no 5
        log.add(message(seq, topic="news" if seq % 2 else "chat"))
    log.add(message(5, origin="tpb"))
    assert seqs(log.pick("tpa", [2, 5, 7, 11])) == [2, 7]
    assert seqs(log.pick("tpa", [1, 3, 5, 6, 8], limit=3)) == [1, 3, 6]
    assert log.pick("tpa", [5, 11, 2**62]) == []
    assert log.pick("tpa", []) == []
    assert log.pick("tpc", [1]) == []
    assert log.pick("tpa", [6]) == [message(6, topic="chat")]


async def test_pick_max_bytes(log: MessageLog) -> None:
    for seq in range(1, 6):
        log.add(message(seq, data="x" * 10))
    assert seqs(log.pick("tpa", [1, 3, 5], max_bytes=30)) == [1, 3, 5]
    assert seqs(log.pick("tpa", [1, 3, 5], max_bytes=29)) == [1, 3]
    assert seqs(log.pick("tpa", [4, 5], max_bytes=1)) == [4]  # the first always


async def test_range_max_bytes(log: MessageLog) -> None:
    for seq in range(1, 6):
        log.add(message(seq, data="x" * 10))
    assert seqs(log.range("tpa", 1, 5, max_bytes=30)) == [1, 2, 3]
    assert seqs(log.range("tpa", 1, 5, max_bytes=29)) == [1, 2]
    # The first message comes even if it alone is bigger: a range always moves on.
    assert seqs(log.range("tpa", 2, 5, max_bytes=1)) == [2]


async def test_max_messages_drops_the_oldest_received_or_the_largest_origins(
    clock: FakeClock,
) -> None:
    log = await MessageLog.open(None, clock=clock, max_messages=4)
    try:
        for seq in (1, 3, 2):
            log.add(message(seq))
        log.add(message(1, origin="tpb"))
        log.add(message(1, origin="tpc", topic="news"))
        log.add(message(2, origin="tpb"))  # drops 1, the oldest: tpa has more than 4 / 2
        assert seqs(log.range("tpa", 1, 10)) == [2, 3]
        assert log.high_water() == {"tpa": 3, "tpb": 2, "tpc": 1}
        log.add(message(1, origin="tpd"))  # drops 3, received before 2
        assert seqs(log.range("tpa", 1, 10)) == [2]
        assert log.high_water("chat") == {"tpa": 2, "tpb": 2, "tpd": 1}
        # The oldest now is tpa's 2, within its share (1 of 4 / 4): tpb, with the most,
        # loses its lowest number.
        log.add(message(1, origin="tpe"))
        assert seqs(log.range("tpa", 1, 10)) == [2]
        assert seqs(log.range("tpb", 1, 10)) == [2]
        assert log.first_seq("tpb") == 2
        assert not log.has("tpa", 1)
        assert len(log) == 5  # the limit is per topic
        # A dropped message can come back; the delivery marks tell it was seen.
        assert log.add(message(1)) is True
        assert seqs(log.range("tpa", 1, 10)) == [1]  # tpa's 2 was the oldest, over 4 / 4
    finally:
        await log.close()


async def test_a_flood_can_not_push_other_origins_out_of_their_share(clock: FakeClock) -> None:
    # Found by an attacker: one peer's messages from 200 new origins, 27,811 in 15 s,
    # pushed every older message out of the topic's log (10,000) in 6 s, so that none
    # could be caught up. An origin within its share of the topic now keeps its messages.
    log = await MessageLog.open(None, clock=clock, max_messages=100)
    try:
        for seq in range(1, 51):
            log.add(message(seq, origin="tphonest"))
        for seq in range(1, 10_001):  # one origin: it pushes out only its own
            log.add(message(seq, origin="tpflood"))
        assert seqs(log.range("tphonest", 1, 100)) == list(range(1, 51))
        assert seqs(log.range("tpflood", 1, 10_000)) == list(range(9951, 10_001))
        for seq in range(1, 5001):  # four new origins: the honest one keeps its share
            for origin in ("tpf1", "tpf2", "tpf3", "tpf4"):
                log.add(message(seq, origin=origin))
        assert seqs(log.range("tphonest", 1, 100)) == list(range(35, 51))  # 16 of 100 / 6
        assert len(log) == 100
    finally:
        await log.close()


async def test_a_single_origin_drops_its_oldest_received(clock: FakeClock) -> None:
    # Past its share whatever it sends: the oldest received goes, not the lowest number.
    log = await MessageLog.open(None, clock=clock, max_messages=3)
    try:
        for seq in (5, 3, 4, 1):
            log.add(message(seq))
        assert seqs(log.range("tpa", 1, 10)) == [1, 3, 4]
    finally:
        await log.close()


async def test_max_messages_in_a_long_run(clock: FakeClock) -> None:
    log = await MessageLog.open(None, clock=clock, max_messages=100)
    try:
        for seq in range(1, 5001):
            log.add(message(seq))
            log.add(message(seq, origin="tpb", topic="news"))
        assert len(log) == 200
        assert log.high_water() == {"tpa": 5000, "tpb": 5000}
        assert log.first_seq("tpa") == 4901
        assert seqs(log.range("tpa", 1, 5000, limit=1000)) == list(range(4901, 5001))
    finally:
        await log.close()


async def test_max_age_counts_from_when_a_message_was_received(clock: FakeClock) -> None:
    log = await MessageLog.open(None, clock=clock, max_age=100)
    try:
        log.add(message(1))
        clock.advance(60)  # 1060
        log.add(message(2))
        log.add(message(1, origin="tpb", topic="news"))
        clock.advance(50)  # 1110: message 1 is 110 s old; adding to its topic drops it
        ancient = LoggedMessage("chat", "tpa", 3, 0.0, "{}", "k", "s", "i")
        log.add(ancient)  # the origin's timestamp doesn't count
        assert seqs(log.range("tpa", 1, 10)) == [2, 3]
        assert log.has("tpb", 1)
        clock.advance(60)  # 1170: the flush drops what was received before 1070
        assert await log.flush() is True
        assert log.range("tpa", 1, 10) == [ancient]
        assert log.high_water() == {"tpa": 3}
        assert log.high_water("news") == {}
        assert len(log) == 1
        clock.advance(40)  # 1210: 3 is exactly 100 s old, and kept
        assert await log.flush() is True
        assert len(log) == 1
        clock.advance(1)
        assert await log.flush() is True
        assert len(log) == 0
        assert log.high_water() == {}
        assert log.first_seq("tpa") is None
    finally:
        await log.close()


async def test_no_limits(clock: FakeClock) -> None:
    log = await MessageLog.open(None, clock=clock, max_messages=None, max_age=None)
    try:
        for seq in range(1, 20_001):
            log.add(message(seq))
        clock.advance(10 * 365 * 86_400)
        assert await log.flush() is True
        assert len(log) == 20_000
    finally:
        await log.close()


async def test_delivered(log: MessageLog) -> None:
    assert log.delivered("tpa") == 0
    log.mark_delivered("tpa", 5)
    assert log.delivered("tpa") == 5
    log.mark_delivered("tpa", 3)  # never goes down
    assert log.delivered("tpa") == 5
    log.mark_delivered("tpa", 6)
    assert log.delivered("tpa") == 6
    assert log.delivered("tpb") == 0


async def test_idle_delivery_marks_are_kept_while_their_number_is_bounded(
    clock: FakeClock,
) -> None:
    """Found by a tester: once an origin quiet for max_age lost its mark, its next
    message waited gap_timeout behind a phantom gap, and was said to follow skipped
    messages, every one of which had been delivered."""
    log = await MessageLog.open(None, clock=clock, max_age=100)  # 10 x 10,000 marks
    try:
        log.mark_delivered("tpa", 5)
        clock.advance(10 * 100)
        assert await log.flush() is True
        assert log.delivered("tpa") == 5
        assert log.next_seq("tpa") == 6
    finally:
        await log.close()


async def test_idle_delivery_marks_are_forgotten_by_age_when_unbounded(
    clock: FakeClock,
) -> None:
    log = await MessageLog.open(None, clock=clock, max_age=100, max_messages=None)
    try:
        log.mark_delivered("tpa", 5)
        log.mark_delivered("tpb", 7)
        clock.advance(50)
        log.add(message(8, origin="tpb"))
        log.mark_delivered("tpc", 1)
        clock.advance(51)  # tpa's and tpb's marks are 101 s old; tpb has a message kept
        assert await log.flush() is True
        assert [log.delivered(p) for p in ("tpa", "tpb", "tpc")] == [0, 7, 1]
        clock.advance(50)  # tpb's message is 101 s old: it goes, and so does the mark
        assert await log.flush() is True
        assert [log.delivered(p) for p in ("tpa", "tpb", "tpc")] == [0, 0, 0]
    finally:
        await log.close()


async def test_idle_delivery_marks_are_bounded(clock: FakeClock) -> None:
    # At most 10 * max_messages marks of origins with no message kept; past it, down to
    # 9 * max_messages (found in review: one over the bound at every new origin made
    # every flush scan and sort them all).
    log = await MessageLog.open(None, clock=clock, max_messages=1)
    try:
        for i in range(12):
            log.mark_delivered(f"tp{i}", 1)
            clock.advance(1)
        log.add(message(1, origin="tp0"))  # tp0 isn't idle
        assert await log.flush() is True  # all moved within MARK_GRACE: none forgotten
        assert [log.delivered(f"tp{i}") for i in range(12)] == [1] * 12
        clock.advance(MARK_GRACE - 10)  # tp1 moved over MARK_GRACE ago, tp2 just that
        assert await log.flush() is True
        assert [log.delivered(f"tp{i}") for i in range(12)] == [1, 0, 1, *[1] * 9]
        clock.advance(MARK_GRACE)
        assert await log.flush() is True  # within the bound now
        assert [log.delivered(f"tp{i}") for i in range(12)] == [1, 0, 1, *[1] * 9]
    finally:
        await log.close()


async def test_marks_of_one_message_origins_are_forgotten_before_those_with_a_history(
    clock: FakeClock,
) -> None:
    """Found by an attacker: a flood of throwaway origins (one message each) pushed the
    marks of publishers with a history out too, the least recently moved first; their
    messages were then held to the marks forgotten, and dropped if their clock lagged.
    Past the bound, the marks that moved the fewest times go first, the least recently
    moved of them first. And by the next attacker: ranked "more than one", a flood of
    two-message origins did it all the same (a mark's seq, which its origin picks, would
    be no better: one message of seq 1000 is one move)."""
    log = await MessageLog.open(None, clock=clock, max_messages=1)  # 10 idle marks
    try:
        for seq in range(1, 8):
            log.mark_delivered("honest", seq)  # seven messages, the least recently moved
        log.mark_delivered("leaper", 1000)  # one message, a high seq
        clock.advance(1)
        for i in range(12):  # a flood of two-message origins
            log.mark_delivered(f"tp{i}", 1)
            log.mark_delivered(f"tp{i}", 2)
            clock.advance(1)
        clock.advance(MARK_GRACE)  # (marks that moved within it are kept)
        assert await log.flush() is True
        assert log.delivered("honest") == 7
        assert log.delivered("leaper") == 0
        assert [log.delivered(f"tp{i}") for i in range(12)] == [0] * 4 + [2] * 8
        assert log.forgotten_before == 1004.0  # tp3's, forgotten last
    finally:
        await log.close()


async def test_a_mark_read_back_keeps_how_often_it_moved(clock: FakeClock, path: Path) -> None:
    # Found in review: counted as its seq (which its origin picks) once read back, one-
    # message origins of seq 10**9, young when the node stopped, outranked every
    # publisher after the restart. How often a mark moved is written down.
    log = await MessageLog.open(path, clock=clock, max_messages=1)  # 10 idle marks
    for seq in range(1, 8):
        log.mark_delivered("honest", seq)  # seven messages, the least recently moved
    clock.advance(1)
    for i in range(12):
        log.mark_delivered(f"leaper{i}", 10**9)
        clock.advance(1)
    await log.close()
    assert sorted(query(path, "SELECT moves FROM delivered")) == [(1,)] * 12 + [(7,)]
    log = await MessageLog.open(path, clock=clock, max_messages=1)
    try:
        clock.advance(MARK_GRACE + 1)
        log.mark_delivered("someone", 1)  # anything that makes the log prune
        assert await log.flush() is True
        assert log.delivered("honest") == 7
        assert sum(log.delivered(f"leaper{i}") > 0 for i in range(12)) == 7
    finally:
        await log.close()


async def test_marks_of_a_first_schema_log_read_back_as_moved_once(
    clock: FakeClock, path: Path
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in MessageDatabase.migrations[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO delivered (origin, seq, marked) VALUES ('old', 5, 1.0)")
        conn.execute("PRAGMA user_version = 1")
    log = await MessageLog.open(path, clock=clock)
    try:
        assert log.delivered("old") == 5
    finally:
        await log.close()
    assert query(path, "PRAGMA user_version") == [(len(MessageDatabase.migrations),)]
    assert query(path, "SELECT origin, seq, moves FROM delivered") == [("old", 5, 1)]


async def test_marks_forgotten_for_their_number_leave_a_floor(clock: FakeClock, path: Path) -> None:
    """Found by an attacker: 125,000 one-message origins pushed an honest origin's mark
    out, and its old messages, replayed, were delivered again. The log keeps when the
    forgotten marks had last moved (across a restart): a message of an origin without
    a mark, older than that, may be one it delivered."""
    log = await MessageLog.open(path, clock=clock, max_messages=1)
    try:
        assert log.forgotten_before == 0.0
        for i in range(12):  # tp0 at 1000 s, tp1 at 1001 s...
            log.mark_delivered(f"tp{i}", 1)
            clock.advance(1)
        clock.advance(MARK_GRACE)  # (marks that moved within it are kept)
        assert await log.flush() is True
        assert [log.delivered(f"tp{i}") for i in range(4)] == [0, 0, 0, 1]
        assert log.forgotten_before == 1002.0  # tp0's to tp2's, forgotten
        log.mark_delivered("tp12", 1)  # within the bound: nothing more forgotten
        clock.advance(1)
        assert await log.flush() is True
        assert log.forgotten_before == 1002.0
    finally:
        await log.close()
    again = await MessageLog.open(path, clock=clock, max_messages=1)
    try:
        assert again.forgotten_before == 1002.0
        assert again.next_seq("tp3") == 2  # (the counters are as they were)
    finally:
        await again.close()


async def test_idle_marks_are_looked_at_once_a_second_at_most(clock: FakeClock) -> None:
    # A flush follows every message delivered; scanning every origin's mark each time
    # made a flood of messages from fresh origins cost the square of its size (found by
    # an attacker's test: a core busy for minutes after 50,000 messages).
    log = await MessageLog.open(None, clock=clock, max_age=100, max_messages=None)
    try:
        log.mark_delivered("tpa", 5)
        clock.advance(99.8)
        assert await log.flush() is True  # a scan: tpa's mark is young enough
        clock.advance(0.5)  # now past max_age, half a second after the scan
        assert await log.flush() is True
        assert log.delivered("tpa") == 5  # not looked at yet
        clock.advance(0.5)
        assert await log.flush() is True
        assert log.delivered("tpa") == 0
    finally:
        await log.close()


async def test_next_seq(log: MessageLog) -> None:
    assert [log.next_seq("tpme") for _ in range(3)] == [1, 2, 3]
    assert log.next_seq("tpother") == 1
    # A message of ours that came back, or a delivery mark, shows a number was used.
    log.add(message(10, origin="tpme"))
    assert log.next_seq("tpme") == 11
    log.mark_delivered("tpme", 20)
    assert log.next_seq("tpme") == 21
    assert log.next_seq("tpme") == 22


def model_high(present: list[int]) -> int:
    first = present[0]
    high = first
    while high + 1 in present:
        high += 1
    return high


@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.sampled_from(["chat", "news"]), st.integers(1, 30)),
        max_size=200,
    ),
    st.integers(1, 12),
)
def test_the_indexes_match_a_plain_list(adds: list[tuple[str, str, int]], limit: int) -> None:
    """Compare the log with a list of what it should keep, after each add."""
    log = MessageLog(
        None, clock=lambda: 0.0, flush_interval=1, max_messages=limit, max_age=10, max_bytes=None
    )
    kept: list[LoggedMessage] = []  # in the order logged
    for origin, topic, seq in adds:
        m = message(seq, origin=origin, topic=topic)
        new = not any((k.origin, k.seq) == (origin, seq) for k in kept)
        assert log.add(m) is new
        if new:
            kept.append(m)
            in_topic = [k for k in kept if k.topic == topic]
            if len(in_topic) > limit:
                kept.remove(_dropped(log, in_topic, limit))
        assert len(log) == len(kept)
        _check_high_water(log, kept, topic)  # (a topic's marks are kept up once asked)
    for origin in "abcd":
        mine = sorted(k.seq for k in kept if k.origin == origin)
        assert log.first_seq(origin) == (mine[0] if mine else None)
        assert seqs(log.range(origin, 5, 20, limit=7)) == [s for s in mine if 5 <= s <= 20][:7]
        assert [log.has(origin, s) for s in range(32)] == [s in mine for s in range(32)]
    for only in ("chat", "news", None):
        _check_high_water(log, kept, only)


def _check_high_water(log: MessageLog, kept: list[LoggedMessage], only: str | None) -> None:
    expected = {}
    for origin in "abcd":
        present = sorted(k.seq for k in kept if k.origin == origin and only in (None, k.topic))
        if present:
            expected[origin] = model_high(present)
    assert log.high_water(only) == expected


def _dropped(log: MessageLog, in_topic: list[LoggedMessage], limit: int) -> LoggedMessage:
    """The message the log dropped from a full topic (``in_topic``, in the order logged):
    the oldest if its origin has more than its share, else the lowest-numbered of an
    origin with the most (which one of those is the log's choice)."""
    counts = collections.Counter(k.origin for k in in_topic)
    oldest = in_topic[0]
    if counts[oldest.origin] * len(counts) > limit:
        allowed = [oldest]
    else:
        most = max(counts.values())
        allowed = [
            min((k for k in in_topic if k.origin == o), key=lambda k: k.seq)
            for o, n in counts.items()
            if n == most
        ]
    gone = [k for k in allowed if not log.has(k.origin, k.seq)]
    assert len(gone) == 1
    return gone[0]


def test_an_origin_keeps_its_entries_in_seq_order_and_lets_go_of_the_removed() -> None:
    # One list per origin (no dict by seq beside it): lookups bisect it.
    origin = Origin()
    entries = {seq: (message(seq), 0.0, seq) for seq in range(1, 201)}
    for seq in [5, 3, 4, 1, 2, *range(6, 201)]:
        assert origin.get(seq) is None
        origin.add(entries[seq])
    assert [entry[0].seq for entry in origin.values()] == list(range(1, 201))
    assert origin.get(7) is entries[7]
    assert origin.get(0) is None and origin.get(201) is None
    for seq in range(1, 101):  # the oldest first, as a log drops them
        origin.remove(seq)
        assert all(entry is not entries[seq] for entry in origin.values())  # let go
    origin.remove(150)  # from the middle
    assert len(origin) == 99
    assert (origin.first(), origin.last(), origin.high()) == (101, 200, 149)
    assert origin.get(150) is None and origin.get(151) is entries[151]
    assert origin.values()[origin.index(150)] is entries[151]


async def test_a_closed_log(clock: FakeClock, path: Path) -> None:
    log = await MessageLog.open(path, clock=clock)
    log.add(message(1))
    await log.close()
    await log.close()
    # The per-message calls don't raise during a shutdown; nothing is written any more.
    assert log.add(message(2)) is True
    assert log.has("tpa", 2)
    assert log.next_seq("tpme") == 1
    log.mark_delivered("tpa", 2)
    assert await log.flush() is True
    assert stored(path) == [("chat", "tpa", 1)]


# Persistence.


async def test_a_lower_limit_at_a_restart_keeps_each_origins_share(
    path: Path, clock: FakeClock
) -> None:
    # Found in review: the newest rows were read up to the new limit, not by the rule,
    # so the origin within its share lost all its messages.
    log = await MessageLog.open(path, clock=clock, max_messages=100)
    for seq in range(1, 31):
        log.add(message(seq, origin="tphonest"))
    for seq in range(1, 1001):
        log.add(message(seq, origin="tpflood"))
    await log.close()
    log = await MessageLog.open(path, clock=clock, max_messages=50)
    try:
        assert seqs(log.range("tphonest", 1, 100)) == list(range(6, 31))  # 50 / 2
        assert seqs(log.range("tpflood", 1, 1000)) == list(range(976, 1001))
        await log.flush()
        assert len(stored(path)) == 50  # the others are deleted
    finally:
        await log.close()


async def test_everything_survives_a_restart(path: Path, clock: FakeClock) -> None:
    log = await MessageLog.open(path, clock=clock, max_age=100)
    for seq in (1, 2, 4):
        log.add(message(seq))
    clock.advance(50)
    log.add(message(1, origin="tpb", topic="news"))
    log.add(message(3, data='{"text": "héllo \\u2603"}'))
    log.mark_delivered("tpa", 2)
    assert [log.next_seq("tpme") for _ in range(3)] == [1, 2, 3]
    await log.close()

    assert stored(path) == [
        ("chat", "tpa", 1),
        ("chat", "tpa", 2),
        ("chat", "tpa", 4),
        ("news", "tpb", 1),
        ("chat", "tpa", 3),
    ]
    clock.advance(1)
    log = await MessageLog.open(path, clock=clock, max_age=100)
    try:
        assert len(log) == 5
        assert log.range("tpa", 1, 4) == [
            message(1),
            message(2),
            message(3, data='{"text": "héllo \\u2603"}'),
            message(4),
        ]
        assert log.high_water() == {"tpa": 4, "tpb": 1}
        assert log.high_water("news") == {"tpb": 1}
        assert log.delivered("tpa") == 2
        assert log.next_seq("tpme") == 4
        # The receive times were kept: 1, 2 and 4 are dropped first.
        clock.advance(50)  # 1101
        assert await log.flush() is True
        assert seqs(log.range("tpa", 1, 4)) == [3]
        assert log.add(message(5)) is True
    finally:
        await log.close()
    assert stored(path) == [("news", "tpb", 1), ("chat", "tpa", 3), ("chat", "tpa", 5)]


async def test_messages_are_written_behind(path: Path) -> None:
    log = await MessageLog.open(path, flush_interval=HOUR)
    try:
        log.add(message(1))
        log.mark_delivered("tpa", 1)
        log.next_seq("tpme")
        assert stored(path) == []
        assert await log.flush() is True
        assert stored(path) == [("chat", "tpa", 1)]
        assert query(path, "SELECT origin, seq FROM delivered") == [("tpa", 1)]
        assert query(path, "SELECT origin, last FROM sequences") == [("tpme", 1)]
    finally:
        await log.close()


async def test_the_periodic_flush_writes(path: Path) -> None:
    log = await MessageLog.open(path, flush_interval=MS)
    try:
        log.add(message(1))
        log.next_seq("tpme")
        await wait_for(lambda: stored(path) == [("chat", "tpa", 1)])
        await wait_for(lambda: query(path, "SELECT last FROM sequences") == [(1,)])
    finally:
        await log.close()


async def test_many_waiting_messages_are_written_soon(path: Path) -> None:
    log = await MessageLog.open(path, flush_interval=HOUR)
    try:
        for seq in range(1, 1000):
            log.add(message(seq))
        await asyncio.sleep(10 * MS)
        assert stored(path) == []
        log.add(message(1000))
        await wait_for(lambda: query(path, "SELECT count(*) FROM messages") == [(1000,)])
    finally:
        await log.close()


async def test_the_disk_keeps_the_limits(path: Path, clock: FakeClock) -> None:
    log = await MessageLog.open(path, clock=clock, max_messages=5, max_age=100)
    try:
        for seq in range(1, 21):
            log.add(message(seq))
            if seq % 3 == 0:
                assert await log.flush() is True
        log.add(message(1, origin="tpb", topic="news"))
        assert await log.flush() is True
        assert stored(path) == [
            *(("chat", "tpa", seq) for seq in range(16, 21)),
            ("news", "tpb", 1),
        ]
        clock.advance(101)
        assert await log.flush() is True
        assert stored(path) == []
    finally:
        await log.close()


async def test_smaller_limits_apply_at_open(path: Path, clock: FakeClock) -> None:
    log = await MessageLog.open(path, clock=clock, max_messages=None)
    for seq in range(1, 11):
        log.add(message(seq))
    clock.advance(50)
    for seq in range(1, 4):
        log.add(message(seq, origin="tpb", topic="news"))
    await log.close()

    log = await MessageLog.open(path, clock=clock, max_messages=4)
    try:
        assert len(log) == 7
        assert log.high_water() == {"tpa": 10, "tpb": 3}
        assert log.first_seq("tpa") == 7
        assert await log.flush() is True
        assert len(stored(path)) == 7
    finally:
        await log.close()

    clock.advance(1)
    log = await MessageLog.open(path, clock=clock, max_age=50)  # chat is 51 s old
    try:
        assert log.high_water() == {"tpb": 3}
    finally:
        await log.close()
    assert stored(path) == [("news", "tpb", seq) for seq in (1, 2, 3)]


async def test_messages_dropped_while_writes_fail_are_not_written(
    path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    log = await MessageLog.open(path, clock=clock, flush_interval=HOUR, max_messages=3)
    try:
        log.add(message(1))
        log.add(message(2))
        assert await log.flush() is True
        disk = FailingWrites(monkeypatch, log, sqlite3.OperationalError("database or disk is full"))
        log.add(message(3))
        log.mark_delivered("tpa", 3)
        assert log.next_seq("tpme") == 1
        assert await log.flush() is False
        log.add(message(4))  # drops 1, which is on disk
        log.add(message(5))  # drops 2, which is on disk
        log.add(message(6))  # drops 3, which never was
        assert await log.flush() is False
        assert disk.tries == 2
        assert seqs(log.range("tpa", 1, 10)) == [4, 5, 6]
        assert log.high_water() == {"tpa": 6}
        disk.stop()
        assert await log.flush() is True
    finally:
        await log.close()
    assert logged(caplog) == [
        (
            "WARNING",
            f"can't write message log {path}: database or disk is full; "
            "keeping messages in memory and retrying in 3600 s, then less often while it "
            "fails (every 3600 s at most)",
        ),
        ("INFO", f"message log {path} is writable again"),
    ]
    assert stored(path) == [("chat", "tpa", 4), ("chat", "tpa", 5), ("chat", "tpa", 6)]
    assert query(path, "SELECT origin, seq FROM delivered") == [("tpa", 3)]
    assert query(path, "SELECT origin, last FROM sequences") == [("tpme", 1)]


async def test_malformed_rows_are_dropped(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = await MessageLog.open(path)
    log.add(message(1))
    log.add(message(2))
    await log.close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE messages SET seq = 'two' WHERE seq = 2")
        # A second copy of message 1: only the first one logged counts.
        conn.execute(
            "INSERT INTO messages SELECT 7, 'news', origin, seq, timestamp, data, key, "
            "signature, id, received, source FROM messages WHERE position = 1"
        )
    log = await MessageLog.open(path)
    try:
        assert log.range("tpa", 1, 10) == [message(1)]
        log.add(message(3))
    finally:
        await log.close()
    assert logged(caplog) == [("WARNING", "! dropped malformed message log row 2")]
    assert query(path, "SELECT position, seq FROM messages ORDER BY position") == [(1, 1), (8, 3)]


async def test_a_database_opened_late_is_merged(
    path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await MessageLog.open(path, clock=clock, max_messages=4)
    for seq in (1, 2, 3):
        log.add(message(seq))
    log.mark_delivered("tpa", 3)
    log.mark_delivered("tpb", 9)
    assert [log.next_seq("tpme") for _ in range(5)] == [1, 2, 3, 4, 5]
    await log.close()

    open_fails_once(monkeypatch, MessageLogAdapter.database)
    clock.advance(10)
    log = await MessageLog.open(path, clock=clock, max_messages=4)
    try:
        log.add(message(3))  # stored already
        log.add(message(4))
        log.add(message(5))  # the topic is full: 1 goes
        log.add(message(1, origin="tpb", topic="news"))
        log.mark_delivered("tpa", 5)
        log.mark_delivered("tpb", 1)
        assert log.next_seq("tpme") == 1  # the stored counter isn't known yet
        assert await log.flush() is True
        assert seqs(log.range("tpa", 1, 10)) == [2, 3, 4, 5]
        assert log.high_water() == {"tpa": 5, "tpb": 1}
        assert [log.delivered("tpa"), log.delivered("tpb")] == [5, 9]
        assert log.next_seq("tpme") == 6
    finally:
        await log.close()
    assert stored(path) == [
        ("chat", "tpa", 2),
        ("chat", "tpa", 3),
        ("chat", "tpa", 4),
        ("chat", "tpa", 5),
        ("news", "tpb", 1),
    ]
    assert query(path, "SELECT origin, seq FROM delivered ORDER BY 1") == [("tpa", 5), ("tpb", 9)]
    assert query(path, "SELECT origin, last FROM sequences") == [("tpme", 6)]


def test_logged_message_is_a_frozen_value() -> None:
    with pytest.raises(AttributeError):
        message(1).seq = 2  # type: ignore[misc]
    assert message(1) == message(1)
    assert not hasattr(message(1), "__dict__")


async def test_a_backlog_wakes_no_write_while_writes_fail(
    path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 unsaved messages wake the flush task at once, but not while writes fail:
    each message then tried the whole backlog again (found by a tester: a full disk
    kept a core busy); the flush task's retries, less and less often, do."""
    log = await MessageLog.open(path, clock=clock, flush_interval=HOUR)
    try:
        disk = FailingWrites(monkeypatch, log, OSError(28, "No space"))
        log.add(message(1))
        assert await log.flush() is False
        for seq in range(2, 1100):
            log.add(message(seq))
        assert not log._wake.is_set()
        assert disk.tries == 1
        disk.stop()
        for seq in range(1100, 1200):
            log.add(message(seq))  # writable: the flush task's next try still comes
        assert await log.flush() is True
        assert len(stored(path)) == 1199
    finally:
        await log.close()
