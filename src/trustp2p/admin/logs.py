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
import weakref
from collections import deque
from typing import Any

current_node: contextvars.ContextVar[weakref.ref[Any]] = contextvars.ContextVar("trustp2p_node")
"""A weak reference to the node whose tasks run in this context (set by ``Node.start``).
Weak: asyncio keeps a cancelled timer, and its context, until it falls due, and a
stopped node stayed in memory for up to a minute through it (found by a soak tester)."""

MAX_WARNINGS = 50


class WarningLog(logging.Handler):
    """Keeps the latest :data:`MAX_WARNINGS` WARNING-or-worse records of one node."""

    def __init__(self, node: object, size: int = MAX_WARNINGS) -> None:
        super().__init__(logging.WARNING)
        self._node = node
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        ref = current_node.get(None)
        if ref is None or ref() is not self._node:
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
