"""Helpers shared by the tests of the SQLite stores (peer store, message log)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the writer subprocess imports this module: keep it light
    import pytest


def query(path: Path, sql: str) -> list[Any]:
    """Read the database as another process would."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def logged_by(logger: str, caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(level, message) of each record ``logger`` logged."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger]


def rewrite(path: Path, mangle: Callable[[bytes], bytes]) -> bytes:
    """Replace a file's bytes with ``mangle(bytes)``; return what was written."""
    data = mangle(path.read_bytes() if path.exists() else b"")
    path.write_bytes(data)
    return data


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "random bytes": (lambda data: os.urandom(8192), "file is not a database"),
    "garbled header": (lambda data: b"garbage garbage!" + data[16:], "file is not a database"),
    "truncated": (lambda data: data[:100], "database disk image is malformed"),
}
"""Ways to break a database file, and the error SQLite reports for each."""
