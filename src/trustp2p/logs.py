"""
Logging for the command line: text for people, or one JSON object per line for log
collectors (``--log-format json``).

The library itself only logs to module loggers (``trustp2p.*``) and adds no handler,
as websockets: an application that configures no logging sees warnings and errors on
stderr (Python's last resort), a failing handler among them (found by a new user: with
a ``NullHandler``, nothing was said). This module configures the root logger for the
``trustp2p`` command.
"""

from __future__ import annotations

__all__ = ["JsonFormatter", "count_of", "setup_logging"]

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# The attributes every LogRecord has; the others came from ``extra=`` (structured fields).
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """
    One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``peer`` (the connection's peer, when the record is about one), ``message``, then
    the record's structured fields (``extra=``), and ``exc`` with the traceback if any.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "peer": getattr(record, "peer", None),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str, log_format: str = "text") -> None:
    """Send records at ``level`` and above to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # websockets logs every connection at INFO; ours already does.
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )


def count_of(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one ("1 peer", "3 peers"), for messages."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
