"""
Write-behind SQLite storage, shared by the peer store (:mod:`trustp2p.storage.peerstore`)
and the message log (:mod:`trustp2p.storage.msglog`).

Both keep their state in memory and write it behind to an SQLite database in WAL mode
with ``synchronous=NORMAL``, on one worker thread, and neither raises because of the
disk: their module docstrings say what a user sees. This module holds the machinery:

- :class:`Database`, the worker-thread side: opening with a quick check, moving a
  corrupt file aside (with its ``-wal`` and ``-shm`` files), upgrading the schema by
  ``PRAGMA user_version``, and writing a batch in one transaction;
- :class:`WriteBehind`, the event-loop side: the single-thread executor, the periodic
  flush, a database that can only be opened later, and the WARNING and INFO logged when
  writes start failing and work again.

Each subclass names itself (``name``, e.g. ``"peer store"``) and logs to its own
module's logger, so that its messages read as if this module weren't there.

"""

from __future__ import annotations

__all__ = ["BUSY_TIMEOUT", "RETRY_MAX", "Database", "WriteBehind"]

import abc
import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from ..tasks import TaskOwner, quiet_signals
from .memory import MemoryShelf

_T = TypeVar("_T")
_Batch = TypeVar("_Batch")  # a batch of changes, taken on the loop, written on the worker
_Loaded = TypeVar("_Loaded")  # what Database.open() read

# Errors that mean "the disk or the database file let us down", as opposed to bugs.
# sqlite3.DatabaseError covers OperationalError ("database or disk is full", "disk I/O
# error", "unable to open database file") and corruption; OSError covers mkdir and rename.
_STORAGE_ERRORS = (sqlite3.DatabaseError, OSError)

BUSY_TIMEOUT = 5.0
"""Seconds a write waits for another connection's lock on the file (another process
opened the same database) before it fails, and is retried at the next flush."""

RETRY_MAX = 5.0
"""Seconds between two tries of a store whose writes keep failing, at most (or
``flush_interval``, if longer): the first retry comes after ``flush_interval``, each
next one twice as late. Found by a tester: on a full disk, every try wrote the whole
backlog again until the error, at each message delivered (the cause, mended apart) and
each second; 5,000 unsaved messages kept an idle node's core 36-99 % busy. Not longer:
at 60 s (review67 F2), the backlog waited 52 s after the disk was writable again,
without durable delivery meanwhile (a kill -9 then handled 772 messages twice)."""


class _CorruptError(sqlite3.DatabaseError):
    """The integrity check found a problem."""


class _SchemaError(sqlite3.DatabaseError):
    """The database was made by a newer trustp2p."""


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, _CorruptError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the body in one write transaction: committed, or rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (after an I/O error it does).
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, migrations: tuple[tuple[str, ...], ...]) -> None:
    """Bring the schema to the latest version, one migration per transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(migrations):
        raise _SchemaError(
            f"schema version {version} is newer than this trustp2p knows ({len(migrations)})"
        )
    for number in range(version, len(migrations)):
        with _transaction(conn):
            for statement in migrations[number]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


def _move_aside(path: Path, now: float) -> Path:
    """Rename the database (and its WAL and shared-memory files) out of the way."""
    stem = f"{path.name}.corrupt-{int(now)}"
    target = path.with_name(stem)
    for n in itertools.count(1):
        if not target.exists():
            break
        target = path.with_name(f"{stem}.{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target


class Database(abc.ABC, Generic[_Batch, _Loaded]):
    """
    One SQLite file. Its methods run on the owner's worker thread only.

    A subclass sets the class attributes and reads and writes its tables in
    :meth:`_read` and :meth:`_write`.
    """

    name: ClassVar[str]
    """What the owner is called in messages, e.g. ``"peer store"``."""
    logger: ClassVar[logging.Logger]
    """Where the WARNING about a corrupt file goes."""
    migrations: ClassVar[tuple[tuple[str, ...], ...]]
    """The schema: migration N (from 1) is ``migrations[N - 1]``, run in one transaction."""
    pragmas: ClassVar[tuple[str, ...]] = ()
    """Statements run at each open, after the WAL mode is set and before the migrations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self, now: float) -> _Loaded:
        """
        Open (creating, migrating or replacing a corrupt file) and read the database.

        Args:
            now: Wall-clock time in seconds: it names a corrupt file moved aside, and
                :meth:`_read` gets it.

        Raises:
            sqlite3.DatabaseError: If the file can't be opened, or was made by a newer
                trustp2p.
            OSError: If its directory can't be made, or a corrupt file moved.

        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            return self._open(now)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            moved = _move_aside(self.path, now)
            self.logger.warning(
                "%s %s is corrupt (%s); moved it to %s and started an empty one",
                self.name,
                self.path,
                exc,
                moved.name,
            )
            return self._open(now)

    def _open(self, now: float) -> _Loaded:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                raise _CorruptError(f"integrity check: {rows[0][0] if rows else 'no answer'}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for pragma in self.pragmas:
                conn.execute(pragma)
            _migrate(conn, self.migrations)
            loaded = self._read(conn, now)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return loaded

    def write(self, batch: _Batch) -> None:
        """Write one batch in one transaction; on error nothing of it is written."""
        conn = self._conn
        if conn is None:  # pragma: no cover - the owner opens before it writes
            raise sqlite3.OperationalError(f"{self.name} is not open")
        with _transaction(conn):
            self._write(conn, batch)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @abc.abstractmethod
    def _read(self, conn: sqlite3.Connection, now: float) -> _Loaded:
        """Read what the owner loads at open, from the latest schema."""

    @abc.abstractmethod
    def _write(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        """Write ``batch``; the caller commits, or rolls back if this raises."""


def _settle(waiting: list[asyncio.Future[bool]], written: bool) -> None:
    for future in waiting:
        if not future.done():  # (cancelled)
            future.set_result(written)


class WriteBehind(abc.ABC, Generic[_Batch, _Loaded]):
    """
    State kept in memory and written behind to a :class:`Database` by one worker thread.

    A subclass records what changed, hands it over as a batch (:meth:`_take_batch`),
    takes it back if the write fails (:meth:`_restore`), and takes in what the database
    holds (:meth:`_absorb`). Its ``open()`` calls :meth:`_start`. All of it runs on the
    event loop thread that opened it.
    """

    _name: ClassVar[str]
    """What it is called in messages, e.g. ``"peer store"``."""
    _logger: ClassVar[logging.Logger]
    _contents: ClassVar[str]
    """What the WARNING about failing writes says is kept in memory, e.g. ``"messages"``."""
    _thread_name: ClassVar[str]
    """The worker thread's name prefix."""

    def __init__(
        self,
        db: Database[_Batch, _Loaded] | None,
        *,
        clock: Callable[[], float],
        flush_interval: float,
        shelf: MemoryShelf | None = None,
    ) -> None:
        self._clock = clock
        self._shelf = shelf if db is None else None
        self._flush_interval = flush_interval
        self._db = db
        self._executor: ThreadPoolExecutor | None = None
        self._db_open = False
        self._failing = False
        self._retry = flush_interval  # after a failure (RETRY_MAX)
        self._lock = asyncio.Lock()
        self.write_failures = 0
        """Times opening or writing the database failed (each retry counts)."""
        self._wake = asyncio.Event()
        self._waiting: list[asyncio.Future[bool]] = []  # for the next write: written()
        self._tasks: TaskOwner | None = None
        self._closed = False

    @staticmethod
    def _check_flush_interval(flush_interval: float) -> None:
        """For ``open()``, before it makes anything: raise ValueError if out of range."""
        if not (flush_interval > 0 and math.isfinite(flush_interval)):
            raise ValueError(
                f"flush_interval must be a positive number of seconds, not {flush_interval}"
            )

    async def _start(self) -> None:
        """Start the worker thread, open the database (or take back what the shelf
        kept), then the periodic flushes."""
        if self._shelf is not None:
            kept = self._shelf.take(self._name)
            if kept is not None:
                self._absorb(kept)
        if self._db is not None:
            executor = self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=self._thread_name, initializer=quiet_signals
            )
            try:
                async with self._lock:
                    await self._open_database()
            except BaseException:  # cancelled: let the worker finish opening, then close
                executor.submit(self._db.close)
                executor.shutdown(wait=False)
                raise
        self._tasks = TaskOwner(self._logger, owner=self._name)
        self._tasks.spawn(self._flush_loop(), f"{self._name} flush")

    async def close(self) -> None:
        """Stop flushing, write what is left, then close the database and the worker."""
        if self._closed:
            return
        self._closed = True
        if self._tasks is not None:
            await self._tasks.aclose()
        if self._shelf is not None:
            self._prune()
            self._shelf.put(self._name, self._snapshot())
        db, executor = self._db, self._executor
        if db is None or executor is None:
            return
        try:
            if not await self.flush():
                self._logger.warning(
                    "closed %s %s with %d unsaved changes", self._name, db.path, self._unsaved()
                )
        finally:
            self._db = None
            self._settle_waiting(False)  # (a written() after the last flush took its own)
            try:
                await asyncio.get_running_loop().run_in_executor(executor, db.close)
            finally:
                executor.shutdown(wait=True)

    async def flush(self) -> bool:
        """Prune, then write every change now; False if the write failed (it is retried)."""
        if self._db is None:
            self._prune()
            self._discard_changes()
            self._settle_waiting(True)
            return True
        async with self._lock:
            # Those waiting in written() want what changed until now: this batch has it.
            waiting, self._waiting = self._waiting, []
            written = False
            try:
                written = await self._flush_locked()
            finally:
                _settle(waiting, written)
            return written

    async def written(self) -> bool:
        """
        Wait until every change made so far is written, and say whether it was.

        Callers that wait meanwhile share one write (the flush task's next, started at
        once): a group commit. Cancelling the wait doesn't cancel the write.

        Returns:
            True once written, or at once without a database (in memory only: nothing
            to wait for); False if the write failed, or at once while writes fail (the
            WARNING said so; the periodic flush retries).

        """
        if self._db is None:
            return True
        if self._failing:
            return False
        if self._closed:  # no flush task any more
            return await self.flush()
        if not self._waiting:
            self._wake.set()
        waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiting)  # (its own: cancelling it cancels no one else's)
        return await waiting

    def _settle_waiting(self, written: bool) -> None:
        waiting, self._waiting = self._waiting, []
        _settle(waiting, written)

    async def _flush_locked(self) -> bool:
        assert self._db is not None
        if not self._db_open and not await self._open_database():
            return False
        self._prune()
        batch = self._take_batch()
        if batch is not None:
            try:
                await self._run(self._db.write, batch)
            except _STORAGE_ERRORS as exc:
                self._restore(batch)
                self._storage_failed("write", exc)
                return False
            except BaseException:
                # Cancelled (or a bug): it may not be written; write it again.
                self._restore(batch)
                raise
        if self._failing:
            self._failing = False
            self._retry = self._flush_interval
            self._logger.info("%s %s is writable again", self._name, self._db.path)
        return True

    @property
    def failing(self) -> bool:
        """Whether the last write (or open) failed: the changes wait in memory."""
        return self._failing

    @property
    def retry_interval(self) -> float:
        """Seconds until the flush task tries a failing write again (:data:`RETRY_MAX`)."""
        return self._retry

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        # In the caller's context, as asyncio.to_thread does: what the store logs there
        # is its node's (the status page's warnings; tester32 F1: "store is corrupt,
        # moved aside" never reached it).
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await loop.run_in_executor(self._executor, call)

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retry if self._failing else self._flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                self._logger.error("! %s flush failed", self._name, exc_info=True)

    async def _open_database(self) -> bool:
        """Open the database and absorb its contents; the caller holds the lock."""
        assert self._db is not None
        try:
            loaded = await self._run(self._db.open, self._clock())
        except _STORAGE_ERRORS as exc:
            self._storage_failed("open", exc)
            return False
        self._db_open = True
        self._absorb(loaded)
        return True

    def _storage_failed(self, action: str, exc: BaseException) -> None:
        assert self._db is not None
        self.write_failures += 1
        if self._failing:
            self._retry = min(2 * self._retry, max(RETRY_MAX, self._flush_interval))
            self._logger.debug(
                "! can't %s %s %s: %s; retrying in %g s",
                action, self._name, self._db.path, exc, self._retry,
            )  # fmt: skip
            return
        self._failing = True
        self._logger.warning(
            "can't %s %s %s: %s; keeping %s in memory and retrying in %g s, then less"
            " often while it fails (every %g s at most)",
            action,
            self._name,
            self._db.path,
            exc,
            self._contents,
            self._flush_interval,
            max(RETRY_MAX, self._flush_interval),
        )

    @abc.abstractmethod
    def _prune(self) -> None:
        """Drop what expired, before each flush."""

    @abc.abstractmethod
    def _discard_changes(self) -> None:
        """Forget what changed: there is no database to write it to."""

    @abc.abstractmethod
    def _take_batch(self) -> _Batch | None:
        """What changed since the last batch (None: nothing), and start afresh."""

    @abc.abstractmethod
    def _restore(self, batch: _Batch) -> None:
        """Take back a batch that may not be written, to write it again."""

    @abc.abstractmethod
    def _absorb(self, loaded: _Loaded) -> None:
        """Take in what the database holds, merging it with what memory learned meanwhile."""

    @abc.abstractmethod
    def _snapshot(self) -> _Loaded:
        """Everything kept, as the database would hand it back at open (for a shelf)."""

    @abc.abstractmethod
    def _unsaved(self) -> int:
        """How many changes wait to be written."""
