"""
The latest warnings of one node, for ``/status.json``.

Several nodes may run in one process and share the ``trustp2p`` loggers. A node sets
:data:`current_node` when it starts, so the tasks and transports it starts carry it in
their context; a record logged there is that node's.

"""

from __future__ import annotations

__all__ = ["WarningLog", "current_node"]

import contextvars
import logging
from collections import deque
from typing import Any

current_node: contextvars.ContextVar[object] = contextvars.ContextVar("trustp2p_node")
"""The key (``Node.context_key``) of the node whose tasks run in this context (set by
``Node.start``). A key, not the node: asyncio keeps a cancelled timer, and its context,
until it falls due, and a stopped node stayed in memory for up to a minute through it
(found by a soak tester). (A weak reference would do, but the compiled ``Node`` takes
none.)"""

MAX_WARNINGS = 50


class WarningLog(logging.Handler):
    """Keeps the latest :data:`MAX_WARNINGS` WARNING-or-worse records of one node."""

    def __init__(self, key: object, size: int = MAX_WARNINGS) -> None:
        super().__init__(logging.WARNING)
        self._key = key  # the node's context_key
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        if current_node.get(None) is not self._key:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self.records.append(
            {
                "time": record.created,
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            }
        )

    def attach(self) -> None:
        """Listen to the ``trustp2p`` loggers."""
        logging.getLogger("trustp2p").addHandler(self)

    def detach(self) -> None:
        logging.getLogger("trustp2p").removeHandler(self)
