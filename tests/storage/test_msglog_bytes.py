"""The message log's payload bound (``max_bytes``): it is held in memory, so a
publisher of big messages must not grow it without end."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import FakeClock
from trustp2p.storage.msglog import LOG_PATH, LoggedMessage, MessageLog

from .adapters import message
from .sqlite_helpers import query


def big(seq: int, size: int, origin: str = "tpa", topic: str = "chat") -> LoggedMessage:
    """A message whose payload is ``size`` characters of JSON text."""
    return message(seq, origin=origin, topic=topic, data='"' + "x" * (size - 2) + '"')


def payload(log: MessageLog, origins: list[str]) -> int:
    """The payload ``log`` keeps of ``origins``, read through its public methods."""
    kept = (log.range(origin, 1, 10**9, limit=10**9, max_bytes=10**12) for origin in origins)
    return sum(len(m.data) for messages in kept for m in messages)


async def test_open_checks_max_bytes() -> None:
    with pytest.raises(ValueError, match=r"^max_bytes must be at least 1 or None, not 0$"):
        await MessageLog.open(None, max_bytes=0)


async def test_the_payload_kept_is_bounded_in_all_topics(clock: FakeClock) -> None:
    # Found by an attacker: 10,000 messages of 250 KB from one client took a subscribed
    # node from 50 MB to 2.72 GB, for good (the log only counted messages).
    log = await MessageLog.open(None, clock=clock, max_bytes=10_000)
    try:
        for seq in range(1, 11):
            log.add(message(seq, origin="tpnews", topic="news"))
        for seq in range(1, 101):
            assert log.add(big(seq, 1000, origin="tpflood"))
            assert payload(log, ["tpnews", "tpflood"]) <= 10_000
        # The heaviest topic gave way: the flood keeps its newest, the news all of it.
        assert [m.seq for m in log.range("tpflood", 1, 100)] == list(range(92, 101))
        assert [m.seq for m in log.range("tpnews", 1, 100)] == list(range(1, 11))
    finally:
        await log.close()


async def test_a_heavy_origin_can_not_push_an_origin_within_its_share_out(
    clock: FakeClock,
) -> None:
    log = await MessageLog.open(None, clock=clock, max_bytes=10_000)
    try:
        for seq in range(1, 51):  # older, and light: 50 payloads of 8 or 9 characters
            log.add(message(seq, origin="tphonest"))
        for seq in range(1, 1001):
            log.add(big(seq, 1000, origin="tpheavy"))
        assert [m.seq for m in log.range("tphonest", 1, 100)] == list(range(1, 51))
        assert len(log.range("tpheavy", 1, 1000)) == 9
    finally:
        await log.close()


async def test_a_message_bigger_than_the_bound_is_kept_by_none(clock: FakeClock) -> None:
    log = await MessageLog.open(None, clock=clock, max_bytes=1000)
    try:
        log.add(message(1))
        assert log.add(big(2, 5000))  # new (not a duplicate), and dropped at once
        assert not log.has("tpa", 2) and len(log) == 0
        assert log.add(message(3))  # the topic goes on
        assert [m.seq for m in log.range("tpa", 1, 10)] == [3]
    finally:
        await log.close()


async def test_a_restart_reads_no_more_than_the_payload_bound_allows(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / LOG_PATH
    log = await MessageLog.open(path, clock=clock, max_bytes=None)
    for seq in range(1, 1001):
        log.add(big(seq, 1000))
    await log.close()
    log = await MessageLog.open(path, clock=clock, max_bytes=10_000)
    try:
        assert [m.seq for m in log.range("tpa", 1, 1000)] == list(range(991, 1001))
        assert await log.flush() is True
        assert len(query(path, "SELECT position FROM messages")) == 10  # the rest deleted
    finally:
        await log.close()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["chat", "news"]),
            st.sampled_from(["tpa", "tpb", "tpc", "tpd"]),
            st.integers(2, 400),
        ),
        max_size=120,
    ),
    st.integers(1, 2000),
)
def test_the_payload_bound_matches_a_plain_list(
    adds: list[tuple[str, str, int]], max_bytes: int
) -> None:
    """Compare the log with a list of what it should keep, after each add: past
    ``max_bytes``, the heaviest topic's oldest if its origin is over its share of the
    topic's payload, else the lowest-numbered of its heaviest origin."""
    log = MessageLog(
        None,
        clock=lambda: 0.0,
        flush_interval=1,
        max_messages=None,
        max_age=10,
        max_bytes=max_bytes,
    )
    kept: list[LoggedMessage] = []  # in the order logged
    topics: list[str] = []  # in the order first logged
    numbers: dict[str, int] = {}
    for topic, origin, size in adds:
        numbers[origin] = seq = numbers.get(origin, 0) + 1
        m = big(seq, size, origin=origin, topic=topic)
        assert log.add(m)
        kept.append(m)
        topics += [topic] if topic not in topics else []
        while sum(len(k.data) for k in kept) > max_bytes:
            weight = {t: sum(len(k.data) for k in kept if k.topic == t) for t in topics}
            heaviest = max(topics, key=weight.__getitem__)
            in_topic = [k for k in kept if k.topic == heaviest]
            by_origin: dict[str, int] = {}
            for k in in_topic:
                by_origin[k.origin] = by_origin.get(k.origin, 0) + len(k.data)
            oldest = in_topic[0]
            if by_origin[oldest.origin] * len(by_origin) > weight[heaviest]:
                kept.remove(oldest)
            else:
                most = max(by_origin.values())
                origin_most = min(o for o, w in by_origin.items() if w == most)
                kept.remove(min((k for k in in_topic if k.origin == origin_most), key=seq_of))
        assert len(log) == len(kept)
        for origin in numbers:
            mine = [k.seq for k in kept if k.origin == origin]
            assert [k.seq for k in log.range(origin, 1, 10**9, limit=10**9)] == sorted(mine)


def seq_of(m: LoggedMessage) -> int:
    return m.seq


async def test_rows_left_out_at_open_take_none_of_the_payload_read(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Found at the before-stop review: rows past a topic's count were counted against
    # the payload read at open, and left other topics' rows unread.
    path = tmp_path / LOG_PATH
    log = await MessageLog.open(path, clock=clock, max_messages=None, max_bytes=None)
    for seq in range(1, 6):
        log.add(message(seq, origin="tpnews", topic="news"))
    for seq in range(1, 101):
        log.add(big(seq, 1000))
    await log.close()
    # Read: the newest 40 of chat (4 x max_messages), 40,000 of the 80,000 characters
    # allowed (4 x max_bytes); its 60 older rows are left out by count, and news fits.
    log = await MessageLog.open(path, clock=clock, max_messages=10, max_bytes=20_000)
    try:
        assert [m.seq for m in log.range("tpnews", 1, 10)] == [1, 2, 3, 4, 5]
        assert [m.seq for m in log.range("tpa", 1, 100)] == list(range(91, 101))
    finally:
        await log.close()


async def test_the_payload_bound_counts_wide_characters_as_they_weigh(clock: FakeClock) -> None:
    """attacker37 N3: counted as characters, messages of 4-byte characters (one is
    enough: CPython then holds the whole string 4 bytes a character) kept 4 times
    ``max_bytes`` in memory and on disk."""
    log = await MessageLog.open(None, clock=clock, max_bytes=10_000)
    try:
        wide = '"' + "x" * 197 + "\U0001f600" + '"'  # 200 characters, 800 bytes held
        for seq in range(1, 101):
            log.add(message(seq, origin="tpwide", data=wide))
        kept = log.range("tpwide", 1, 100, limit=100, max_bytes=10**9)
        assert len(kept) == 12  # 10,000 // 800 (before: 50, 40,000 bytes in memory)
        assert sum(4 * len(m.data) for m in kept) <= 10_000  # as CPython holds them
    finally:
        await log.close()
