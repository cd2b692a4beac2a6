"""
The fault suite: one set of checks that every write-behind store must pass, the way
the driver conformance suite (``tests/drivers/conformance.py``) runs against every
driver.

Nothing here knows a particular store: the checks receive a
:class:`~tests.storage.adapters.StoreAdapter`. ``test_<store>.py`` subclasses
:class:`StoreFaults`, provides the ``adapter`` fixture, and inherits every check as a
test method: a disk that fails and recovers (monkeypatched, and for real under a file-size
limit), a ``kill -9`` mid-write, corrupt files at open, a database that can only be
opened late, a newer schema, and a worker thread that is busy.

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.nodes import wait_for
from trustp2p.storage import DATA_DIR
from trustp2p.storage.writebehind import RETRY_MAX

from .adapters import StoreAdapter
from .sqlite_helpers import CORRUPTIONS, logged_by, query, rewrite
from .writer_process import kill_writer_mid_run, run_writer_with_a_file_size_limit

__all__ = ["HOUR", "FailingWrites", "StoreFaults", "open_fails_once"]

HOUR = 3600.0


def open_fails_once(monkeypatch: pytest.MonkeyPatch, database: type[Any]) -> None:
    """Make the first open of ``database`` fail as a locked file does; later ones work."""
    opened = database.open
    tries = 0

    def open_once_later(self: Any, *args: Any) -> Any:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise sqlite3.OperationalError("database is locked")
        return opened(self, *args)

    monkeypatch.setattr(database, "open", open_once_later)


class FailingWrites:
    """
    Make a store's writes fail with ``error`` (as a full or broken disk does) until
    :meth:`stop`. ``tries`` counts the writes tried; ``failed`` is set at the first.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Any, error: Exception) -> None:
        assert store._db is not None
        self.tries = 0
        self.failed = asyncio.Event()
        self._monkeypatch = monkeypatch
        self._db = store._db
        self._write = store._db.write
        self._error = error
        self._loop = asyncio.get_running_loop()
        monkeypatch.setattr(store._db, "write", self._fail)

    def _fail(self, batch: Any) -> None:  # on the worker thread
        self.tries += 1
        self._loop.call_soon_threadsafe(self.failed.set)
        raise self._error

    def stop(self) -> None:
        """Let the writes work again."""
        self._monkeypatch.setattr(self._db, "write", self._write)


class StoreFaults:
    """The checks. A subclass provides the ``adapter`` fixture."""

    @pytest.fixture
    def path(self, tmp_path: Path, adapter: StoreAdapter) -> Path:
        return tmp_path / DATA_DIR / adapter.file

    @staticmethod
    def logged(adapter: StoreAdapter, caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
        return logged_by(adapter.logger, caplog)

    @staticmethod
    def cant(adapter: StoreAdapter, action: str, path: Path, error: str, every: float) -> str:
        """The WARNING a store logs when it can't ``action`` (open, write) its file."""
        return (
            f"can't {action} {adapter.name} {path}: {error}; keeping {adapter.contents} in "
            f"memory and retrying in {every:g} s, then less often while it fails (every "
            f"{max(every, RETRY_MAX):g} s at most)"
        )

    # Opening and closing.

    async def test_open_checks_flush_interval(self, adapter: StoreAdapter) -> None:
        with pytest.raises(
            ValueError, match=r"^flush_interval must be a positive number of seconds, not 0$"
        ):
            await adapter.open(None, flush_interval=0)

    async def test_a_cancelled_open_closes_what_it_opened(
        self, adapter: StoreAdapter, path: Path
    ) -> None:
        task = asyncio.create_task(adapter.open(path))
        await asyncio.sleep(0)  # the worker thread is opening the database
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store = await adapter.open(path)
        await store.close()

    async def test_a_missing_directory_is_created_private(
        self, adapter: StoreAdapter, tmp_path: Path
    ) -> None:
        path = tmp_path / "app" / DATA_DIR / adapter.file
        store = await adapter.open(path)
        await store.close()
        assert path.is_file()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    async def test_the_database_is_versioned_and_in_wal_mode(
        self, adapter: StoreAdapter, path: Path
    ) -> None:
        store = await adapter.open(path)
        await adapter.change(store, 1)
        await store.close()
        assert query(path, "PRAGMA user_version") == [(len(adapter.database.migrations),)]
        assert query(path, "PRAGMA journal_mode") == [("wal",)]
        assert adapter.stored(path) == [1]

    async def test_a_store_in_memory_makes_no_files(
        self, adapter: StoreAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        store = await adapter.open(None)
        await adapter.change(store, 1)
        assert await store.flush() is True
        assert await adapter.changes(store) == [1]
        await store.close()
        assert os.listdir(tmp_path) == []

    async def test_the_hot_path_never_waits_for_the_disk(
        self, adapter: StoreAdapter, path: Path
    ) -> None:
        store = await adapter.open(path, flush_interval=HOUR)
        try:
            await adapter.prepare_hot_path(store)
            release = threading.Event()
            assert store._executor is not None
            busy = asyncio.get_running_loop().run_in_executor(store._executor, release.wait)
            flush = asyncio.create_task(store.flush())
            # The worker thread is stuck; the per-package or per-message calls answer.
            changed = await adapter.hot_path(store)
            release.set()
            await busy
            assert await flush is True
        finally:
            await store.close()
        assert adapter.stored(path) == changed

    # Writes that fail.

    def test_survives_kill_9_mid_write(self, adapter: StoreAdapter, path: Path) -> None:
        printed = kill_writer_mid_run(adapter.key, str(path), "loop")
        assert query(path, "PRAGMA integrity_check") == [("ok",)]

        async def check() -> None:
            store = await adapter.open(path)
            try:
                await adapter.check_committed(store, printed)
            finally:
                await store.close()

        asyncio.run(check())

    def test_a_full_disk_keeps_the_store_running(self, adapter: StoreAdapter, path: Path) -> None:
        stdout, stderr = run_writer_with_a_file_size_limit(
            adapter.key, str(path), "full", limit=128 * 1024
        )
        warning = self.cant(adapter, "write", path, "disk I/O error", HOUR)
        assert stderr.splitlines() == [
            f"WARNING {adapter.logger}: {warning}",
            f"INFO {adapter.logger}: {adapter.name} {path} is writable again",
        ]
        out = stdout.splitlines()
        steps = int(out[0].removeprefix("writes failed after ").removesuffix(" steps"))
        assert steps >= 1
        in_memory, stored = adapter.expected_summaries(steps)
        assert out[1:] == [f"in memory: {in_memory}", "flushed True", f"stored: {stored}"]

    async def test_failed_writes_are_kept_and_retried(
        self,
        adapter: StoreAdapter,
        path: Path,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        caplog.set_level(logging.INFO, adapter.logger)
        store = await adapter.open(path, flush_interval=HOUR)
        try:
            await adapter.change(store, 1)
            assert await store.flush() is True
            disk = FailingWrites(
                monkeypatch, store, sqlite3.OperationalError("database or disk is full")
            )
            await adapter.change(store, 2)
            await adapter.change(store, 3)
            assert await store.flush() is False
            assert await store.flush() is False
            assert await adapter.changes(store) == [1, 2, 3]
            disk.stop()
            assert await store.flush() is True
        finally:
            await store.close()
        assert self.logged(adapter, caplog) == [
            ("WARNING", self.cant(adapter, "write", path, "database or disk is full", HOUR)),
            ("INFO", f"{adapter.name} {path} is writable again"),
        ]
        assert adapter.stored(path) == [1, 2, 3]

    async def test_a_failing_write_is_tried_less_often_while_it_fails(
        self, adapter: StoreAdapter, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Found by a tester: on a full disk, every try wrote the whole backlog again
        until the error, each second: 5,000 unsaved messages kept a core 36-99 % busy."""
        store = await adapter.open(path, flush_interval=0.5)
        try:
            disk = FailingWrites(monkeypatch, store, OSError(28, "No space"))
            for n in range(6):
                await adapter.change(store, n + 1)  # (the peer store tries to write it too)
                assert await store.flush() is False
                assert store.failing
                # 0.5 s after the first failure, twice that after each next (the flush
                # task's tries count too), RETRY_MAX at most.
                expected = min(0.5 * 2 ** (store.write_failures - 1), RETRY_MAX)
                assert store.retry_interval == expected
            assert store.retry_interval == RETRY_MAX
            assert disk.tries == store.write_failures
            disk.stop()
            assert await store.flush() is True
            assert not store.failing and store.retry_interval == 0.5
        finally:
            await store.close()

    async def test_the_periodic_flush_retries(
        self,
        adapter: StoreAdapter,
        path: Path,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        caplog.set_level(logging.INFO, adapter.logger)
        store = await adapter.open(path, flush_interval=0.001)
        try:
            disk = FailingWrites(monkeypatch, store, OSError(28, "No space"))
            await adapter.change(store, 1)
            await disk.failed.wait()
            disk.stop()
            await wait_for(lambda: len(self.logged(adapter, caplog)) == 2)
        finally:
            await store.close()
        assert self.logged(adapter, caplog) == [
            ("WARNING", self.cant(adapter, "write", path, "[Errno 28] No space", 0.001)),
            ("INFO", f"{adapter.name} {path} is writable again"),
        ]
        assert adapter.stored(path) == [1]

    async def test_an_unsaved_close_says_so(
        self,
        adapter: StoreAdapter,
        path: Path,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        store = await adapter.open(path, flush_interval=HOUR)
        FailingWrites(monkeypatch, store, sqlite3.OperationalError("disk I/O error"))
        await adapter.change(store, 1)
        await adapter.change(store, 2)
        await store.close()
        unsaved = adapter.unsaved(2)
        assert self.logged(adapter, caplog) == [
            ("WARNING", self.cant(adapter, "write", path, "disk I/O error", HOUR)),
            ("WARNING", f"closed {adapter.name} {path} with {unsaved} unsaved changes"),
        ]

    # Files that can't be used.

    @pytest.mark.parametrize("kind", list(CORRUPTIONS))
    async def test_a_corrupt_database_is_moved_aside(
        self,
        kind: str,
        adapter: StoreAdapter,
        path: Path,
        clock: FakeClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        mangle, error = CORRUPTIONS[kind]
        store = await adapter.open(path, clock=clock)
        for i in range(1, 51):
            await adapter.change(store, i)
        await store.close()
        corrupt = rewrite(path, mangle)

        store = await adapter.open(path, clock=clock)
        try:
            assert await adapter.changes(store) == []
            await adapter.change(store, 7)
        finally:
            await store.close()
        assert self.logged(adapter, caplog) == [
            (
                "WARNING",
                f"{adapter.name} {path} is corrupt ({error}); moved it to "
                f"{adapter.file}.corrupt-1000 and started an empty one",
            )
        ]
        assert (path.parent / f"{adapter.file}.corrupt-1000").read_bytes() == corrupt
        assert adapter.stored(path) == [7]

    async def test_corrupt_files_of_one_second_keep_apart(
        self, adapter: StoreAdapter, path: Path, clock: FakeClock
    ) -> None:
        path.parent.mkdir()
        for content in (b"first" * 100, b"second" * 100):
            rewrite(path, lambda data: content)  # noqa: B023 - called at once
            store = await adapter.open(path, clock=clock)
            await store.close()
        assert (path.parent / f"{adapter.file}.corrupt-1000").read_bytes() == b"first" * 100
        assert (path.parent / f"{adapter.file}.corrupt-1000.1").read_bytes() == b"second" * 100

    async def test_garbage_wal_and_shm_files_are_ignored(
        self, adapter: StoreAdapter, path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = await adapter.open(path)
        await adapter.change(store, 1)
        await store.close()
        path.with_name(f"{adapter.file}-wal").write_bytes(os.urandom(10_000))
        path.with_name(f"{adapter.file}-shm").write_bytes(os.urandom(32_768))
        store = await adapter.open(path)
        try:
            assert await adapter.changes(store) == [1]
            await adapter.change(store, 2)
        finally:
            await store.close()
        assert self.logged(adapter, caplog) == []
        assert query(path, "PRAGMA integrity_check") == [("ok",)]
        assert adapter.stored(path) == [1, 2]

    async def test_a_data_directory_that_appears_late(
        self, adapter: StoreAdapter, path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, adapter.logger)
        path.parent.parent.mkdir(exist_ok=True)
        path.parent.write_text("not a directory")  # data/ is a file
        store = await adapter.open(path)
        try:
            await adapter.change(store, 1)
            assert await store.flush() is False
            path.parent.unlink()
            assert await store.flush() is True
        finally:
            await store.close()
        error = f"[Errno 17] File exists: '{path.parent}'"
        assert self.logged(adapter, caplog) == [
            ("WARNING", self.cant(adapter, "open", path, error, adapter.flush_interval)),
            ("INFO", f"{adapter.name} {path} is writable again"),
        ]
        assert adapter.stored(path) == [1]

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
    async def test_a_read_only_data_directory(
        self, adapter: StoreAdapter, path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, adapter.logger)
        path.parent.mkdir(parents=True)
        path.parent.chmod(0o500)
        try:
            store = await adapter.open(path)
            try:
                await adapter.change(store, 1)
                assert await store.flush() is False
                path.parent.chmod(0o700)
                assert await store.flush() is True
            finally:
                await store.close()
        finally:
            path.parent.chmod(0o700)
        error = "unable to open database file"
        assert self.logged(adapter, caplog) == [
            ("WARNING", self.cant(adapter, "open", path, error, adapter.flush_interval)),
            ("INFO", f"{adapter.name} {path} is writable again"),
        ]
        assert adapter.stored(path) == [1]

    async def test_a_database_opened_late_keeps_what_came_meanwhile(
        self, adapter: StoreAdapter, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = await adapter.open(path)
        await adapter.change(store, 1)
        await store.close()
        open_fails_once(monkeypatch, adapter.database)
        store = await adapter.open(path)
        try:
            await adapter.change(store, 2)
            assert await adapter.changes(store) == [2]  # the stored ones aren't known yet
            assert await store.flush() is True
            assert await adapter.changes(store) == [1, 2]
        finally:
            await store.close()
        assert adapter.stored(path) == [1, 2]

    async def test_a_newer_schema_is_left_alone(
        self, adapter: StoreAdapter, path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path.parent.mkdir()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA user_version = 99")
        store = await adapter.open(path, flush_interval=HOUR)
        await adapter.change(store, 1)
        assert await adapter.changes(store) == [1]
        await store.close()
        known = len(adapter.database.migrations)
        error = f"schema version 99 is newer than this trustp2p knows ({known})"
        unsaved = adapter.unsaved(1)
        assert self.logged(adapter, caplog) == [
            ("WARNING", self.cant(adapter, "open", path, error, HOUR)),
            ("WARNING", f"closed {adapter.name} {path} with {unsaved} unsaved changes"),
        ]
        assert query(path, "PRAGMA user_version") == [(99,)]
