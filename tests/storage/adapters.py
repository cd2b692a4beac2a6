"""
The two write-behind stores as the fault suite (:mod:`tests.storage.faults`) and the
writer subprocess (:mod:`tests.storage.writer`) see them: open one, make numbered
changes, read back which ones it holds in memory or on disk.

A *change* ``i`` (from 1) is one thing the store must keep: the URL ``ws://h<i>:1`` for
the peer store, the message ``(tpa, i)`` (delivered) for the message log.

"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from trustp2p.protocol.peers import peer_key
from trustp2p.storage import msglog, peerstore
from trustp2p.storage._msglog_records import MessageDatabase
from trustp2p.storage._peer_records import PeerDatabase
from trustp2p.storage.msglog import LoggedMessage, MessageLog
from trustp2p.storage.peerstore import PeerSource, PeerStore
from trustp2p.storage.writebehind import Database

from .sqlite_helpers import query

WRITER_ORIGIN = "tpwriter"


class StoreAdapter(abc.ABC):
    """What the fault suite needs of a store; one subclass per store."""

    key: ClassVar[str]
    """Its name for the writer subprocess."""
    name: ClassVar[str]
    """What the store calls itself in messages."""
    file: ClassVar[str]
    """Its file name in the data directory."""
    logger: ClassVar[str]
    """Its logger's name."""
    contents: ClassVar[str]
    """What its WARNING about failing writes says it keeps in memory."""
    flush_interval: ClassVar[float]
    """Its default flush interval, as the messages print it (%g)."""
    database: ClassVar[type[Database[Any, Any]]]
    """Its SQLite side, to make ``open`` fail in tests."""

    @abc.abstractmethod
    async def open(self, path: Path | None, **options: Any) -> Any:
        """Open the store with its defaults and ``options``."""

    @abc.abstractmethod
    async def change(self, store: Any, i: int) -> None:
        """Make change ``i``; it may be written at once, or by the next flush."""

    @abc.abstractmethod
    def unsaved(self, changes: int) -> int:
        """The unsaved changes a close counts after ``changes`` changes never written."""

    @abc.abstractmethod
    async def changes(self, store: Any) -> list[int]:
        """The changes the store holds in memory, in ascending order."""

    @abc.abstractmethod
    def stored(self, path: Path) -> list[int]:
        """The changes in the database file, in ascending order."""

    @abc.abstractmethod
    async def prepare_hot_path(self, store: Any) -> None:
        """Make what :meth:`hot_path` looks up, before the worker thread is stalled."""

    @abc.abstractmethod
    async def hot_path(self, store: Any) -> list[int]:
        """Make the calls a node makes per package or message, and check their answers:
        they must answer while the worker thread is busy. Return the changes made."""

    # The writer subprocess (tests/storage/writer.py).

    @abc.abstractmethod
    async def commit(self, store: Any, step: int) -> int:
        """Write step ``step`` (from 0) and commit it; return the number it printed."""

    @abc.abstractmethod
    async def check_committed(self, store: Any, printed: int) -> None:
        """Check that everything up to the last number :meth:`commit` printed is kept."""

    @abc.abstractmethod
    async def fill(self, store: Any, step: int) -> None:
        """Write step ``step`` (from 0) of filling the disk, without flushing."""

    @abc.abstractmethod
    async def change_more(self, store: Any, i: int) -> None:
        """Make a change of each kind the store keeps, numbered ``i``, without flushing."""

    @abc.abstractmethod
    async def summary(self, store: Any) -> str:
        """What the store holds, in one line."""

    @abc.abstractmethod
    def expected_summaries(self, steps: int) -> tuple[str, str]:
        """The :meth:`summary` in memory and after a reopen, once ``steps`` fill steps
        and 100 changes were made."""


def _writer_url(i: int) -> str:
    return f"ws://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:1107"


class PeerStoreAdapter(StoreAdapter):
    key = "peerstore"
    name = "peer store"
    file = peerstore.STORE_FILE
    logger = "trustp2p.storage.peerstore"
    contents = "peer stats"
    flush_interval = 5
    database = PeerDatabase

    async def open(self, path: Path | None, **options: Any) -> PeerStore:
        return await PeerStore.open(path, **options)

    async def change(self, store: PeerStore, i: int) -> None:
        await store.add_urls([f"ws://h{i}:1"], PeerSource.EXCHANGE)

    def unsaved(self, changes: int) -> int:
        return 2 * changes  # a peer and its URL each

    async def changes(self, store: PeerStore) -> list[int]:
        urls = [url for record in await store.peers() for url in record.urls]
        return sorted(int(url.removeprefix("ws://h").removesuffix(":1")) for url in urls)

    def stored(self, path: Path) -> list[int]:
        urls = [url for (url,) in query(path, "SELECT url FROM urls")]
        return sorted(int(url.removeprefix("ws://h").removesuffix(":1")) for url in urls)

    async def prepare_hot_path(self, store: PeerStore) -> None:
        await store.block(peer_id="tpa", reason="test")

    async def hot_path(self, store: PeerStore) -> list[int]:
        assert store.is_blocked(peer_id="tpa") is True
        assert store.is_blocked(peer_id="tpb") is False
        assert store.record_packages(peer_key("tpb", "10.0.0.2"), good=1) == (1, 0)
        return []

    async def commit(self, store: PeerStore, step: int) -> int:
        await store.add_urls([_writer_url(step)], PeerSource.EXCHANGE)
        await store.record_connected(
            peer_id=f"peer{step}", url=_writer_url(step), address="10.0.0.1"
        )
        return step

    async def check_committed(self, store: PeerStore, printed: int) -> None:
        assert printed >= 299  # one line per peer, from 0
        records = {r.peer_id: r for r in await store.peers()}
        for i in range(printed + 1):
            assert records[f"peer{i}"].successes == 1
            assert records[f"peer{i}"].urls == (_writer_url(i),)

    async def fill(self, store: PeerStore, step: int) -> None:
        await store.add_urls([_writer_url(step)], PeerSource.EXCHANGE)

    async def summary(self, store: PeerStore) -> str:
        records = await store.peers()
        return f"{len(records)} peers, {sum(r.good_packages for r in records)} good packages"

    def expected_summaries(self, steps: int) -> tuple[str, str]:
        line = f"{steps + 100} peers, 300 good packages"
        return line, line

    async def change_more(self, store: PeerStore, i: int) -> None:
        await store.add_urls([_writer_url(i)], PeerSource.EXCHANGE)
        await store.record_connected(peer_id=f"peer{i}", url=_writer_url(i), address=None)
        store.record_packages(peer_key(f"peer{i}", "10.0.0.1"), good=3)


def message(seq: int, origin: str = "tpa", topic: str = "chat", data: str = "") -> LoggedMessage:
    """A message as the log stores it; its payload is ``{"n": seq}`` unless given."""
    return LoggedMessage(
        topic=topic,
        origin=origin,
        seq=seq,
        timestamp=500.0 + seq,
        data=data or f'{{"n": {seq}}}',
        key=f"key-{origin}",
        signature=f"sig-{origin}-{seq}",
        id=f"id-{origin}-{seq}",
    )


class MessageLogAdapter(StoreAdapter):
    key = "msglog"
    name = "message log"
    file = msglog.LOG_FILE
    logger = "trustp2p.storage.msglog"
    contents = "messages"
    flush_interval = 1
    database = MessageDatabase

    async def open(self, path: Path | None, **options: Any) -> MessageLog:
        return await MessageLog.open(path, **options)

    async def change(self, store: MessageLog, i: int) -> None:
        store.add(message(i))
        store.mark_delivered("tpa", i)

    def unsaved(self, changes: int) -> int:
        return changes + 1  # the messages, and the delivery mark of their origin

    async def changes(self, store: MessageLog) -> list[int]:
        return [m.seq for m in store.range("tpa", 0, 2**62, limit=2**62, max_bytes=2**62)]

    def stored(self, path: Path) -> list[int]:
        return [seq for (seq,) in query(path, "SELECT seq FROM messages ORDER BY seq")]

    async def prepare_hot_path(self, store: MessageLog) -> None:
        pass

    async def hot_path(self, store: MessageLog) -> list[int]:
        assert store.add(message(1)) is True
        assert store.has("tpa", 1)
        assert store.high_water() == {"tpa": 1}
        assert store.range("tpa", 1, 1) == [message(1)]
        store.mark_delivered("tpa", 1)
        assert store.delivered("tpa") == 1
        assert store.next_seq("tpme") == 1
        return [1]

    async def commit(self, store: MessageLog, step: int) -> int:
        seq = 0
        for _ in range(10):
            seq = store.next_seq(WRITER_ORIGIN)
            store.add(message(seq, origin=WRITER_ORIGIN))
            store.mark_delivered(WRITER_ORIGIN, seq)
        assert await store.flush()
        return seq

    async def check_committed(self, store: MessageLog, printed: int) -> None:
        assert printed >= 3000  # one line per 10 messages
        assert all(store.has(WRITER_ORIGIN, seq) for seq in range(1, printed + 1))
        # Later batches may have been committed too, whole.
        high = store.high_water()[WRITER_ORIGIN]
        assert high >= printed
        assert high % 10 == 0
        assert len(store) == high
        assert store.delivered(WRITER_ORIGIN) == high
        assert store.next_seq(WRITER_ORIGIN) == high + 1

    async def fill(self, store: MessageLog, step: int) -> None:
        for _ in range(10):
            seq = store.next_seq(WRITER_ORIGIN)
            store.add(message(seq, origin=WRITER_ORIGIN, data='{"text": "' + "x" * 1000 + '"}'))

    async def summary(self, store: MessageLog) -> str:
        found = store.range(WRITER_ORIGIN, 1, 2**62, limit=2**62, max_bytes=2**62)
        return (
            f"{len(store)} messages, {len(found)} in range, high water {store.high_water()}, "
            f"delivered {store.delivered(WRITER_ORIGIN)}, next {store.next_seq(WRITER_ORIGIN)}"
        )

    def expected_summaries(self, steps: int) -> tuple[str, str]:
        n = 10 * steps + 100
        # Each summary takes a sequence number: the in-memory one's is written too.
        line = f"{n} messages, {n} in range, high water {{'{WRITER_ORIGIN}': {n}}}, delivered {n}"
        return f"{line}, next {n + 1}", f"{line}, next {n + 2}"

    async def change_more(self, store: MessageLog, i: int) -> None:
        seq = store.next_seq(WRITER_ORIGIN)
        store.add(message(seq, origin=WRITER_ORIGIN, data='{"text": "' + "x" * 1000 + '"}'))
        store.mark_delivered(WRITER_ORIGIN, seq)


ADAPTERS: dict[str, StoreAdapter] = {
    adapter.key: adapter for adapter in (PeerStoreAdapter(), MessageLogAdapter())
}
"""By :attr:`StoreAdapter.key`."""
